//! The JSON Schemas of the domain's stored and exchanged shapes. `countersign schemas` writes
//! them to `schemas/`; a test fails when the checked-in files drift from these.

use schemars::{JsonSchema, Schema, schema_for};

use crate::action::{ActionCommand, ActionEvent, ActionState};
use crate::policy::{Policy, Requirements};
use crate::risk::RiskAssessment;
use crate::submission::Submission;
use crate::tenant::{
    ApiKeyCommand, ApiKeyEvent, PolicyCommand, PolicyEvent, Settings, SettingsCommand,
    SettingsEvent,
};

pub fn named<T: JsonSchema>(file: &'static str) -> (&'static str, Schema) {
    (file, schema_for!(T))
}

/// Every schema with the file name it is written to.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        named::<ActionCommand>("action-command.json"),
        named::<ActionEvent>("action-event.json"),
        named::<ActionState>("action-state.json"),
        named::<Policy>("policy.json"),
        named::<Requirements>("requirements.json"),
        named::<RiskAssessment>("risk-assessment.json"),
        named::<Submission>("submission.json"),
        named::<PolicyCommand>("policy-command.json"),
        named::<PolicyEvent>("policy-event.json"),
        named::<SettingsCommand>("settings-command.json"),
        named::<SettingsEvent>("settings-event.json"),
        named::<Settings>("settings.json"),
        named::<ApiKeyCommand>("api-key-command.json"),
        named::<ApiKeyEvent>("api-key-event.json"),
        named::<crate::members::MemberCommand>("member-command.json"),
        named::<crate::members::MemberEvent>("member-event.json"),
        named::<crate::workflow::WorkflowCommand>("workflow-command.json"),
        named::<crate::workflow::WorkflowEvent>("workflow-event.json"),
        named::<crate::workflow::IntakeEventEvent>("intake-event.json"),
        named::<crate::workflow::RunEvent>("workflow-run-event.json"),
        named::<crate::workflow::CloudEvent>("cloud-event.json"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_has_a_title_and_a_distinct_file() {
        let schemas = all();
        let files: std::collections::BTreeSet<_> = schemas.iter().map(|(file, _)| *file).collect();
        assert_eq!(files.len(), schemas.len());
        for (file, schema) in &schemas {
            assert!(schema.get("title").is_some(), "{file} has no title");
        }
    }

    #[test]
    fn the_event_schema_lists_every_event_type() {
        let (_, schema) = named::<ActionEvent>("x");
        let text = serde_json::to_string(&schema).expect("schema serializes");
        for event_type in [
            "ActionSubmitted",
            "VoteCast",
            "StageApproved",
            "ActionApproved",
            "ActionRejected",
            "ActionEscalated",
            "ActionExpired",
            "ActionCancelled",
            "ExecutionRequested",
            "ExecutionStarted",
            "ExecutionSucceeded",
            "ExecutionFailed",
            "ExecutionSkipped",
            "RollbackRequested",
            "ExecutionResumed",
        ] {
            assert!(text.contains(event_type), "{event_type} missing");
        }
    }
}
