//! The approval core of countersign: given an action's history and a command, which events
//! happen. Everything here is pure — no IO, no clock, no randomness, no async runtime. Time,
//! identities, the caller's roles, the tenant's mode and the policy in force arrive inside the
//! command and are recorded in the events, so folding the events always reproduces the same
//! decisions.
//!
//! - [`risk`] scores a submission (the table in `docs/approvals.md`).
//! - [`criteria`] and [`policy`] decide which policy governs a submission and what it requires.
//! - [`quorum`] counts the votes of one stage.
//! - [`action`] is the `Action` aggregate: commands, events, decide and apply.
//! - [`canonical`] gives the canonical JSON and the execution key.
//! - [`tenant`] holds a tenant's policies, settings and API keys as aggregates.

/// Implements `cqrs_es::Aggregate` for an aggregate that decides with
/// `fn decide(&self, Command) -> Result<Vec<Event>, Error>` and folds with `fn apply(&mut self, Event)`:
/// every tenant-scoped aggregate (policies, settings, API keys, members, delegations, workflows).
/// The type name is what the store keeps: never rename it.
macro_rules! decided_aggregate {
    ($aggregate:ty, $type:literal, $command:ty, $event:ty, $error:ty) => {
        impl cqrs_es::Aggregate for $aggregate {
            /// Stored aggregate type: never rename.
            const TYPE: &'static str = $type;
            type Command = $command;
            type Event = $event;
            type Error = $error;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _services: &Self::Services,
                sink: &cqrs_es::event_sink::EventSink<Self>,
            ) -> Result<(), Self::Error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                Self::apply(self, event);
            }
        }
    };
}

pub mod action;
pub mod address;
pub mod canonical;
pub mod criteria;
pub mod delegation;
pub mod document;
mod ids;
pub mod members;
pub mod policy;
pub mod quorum;
pub mod risk;
pub mod schema;
pub mod signing;
pub mod submission;
pub mod tenant;
mod text;
pub mod workflow;

pub use ids::{
    ActionId, ActionType, CapabilityName, Connector, CorrelationId, IdempotencyKey, ModuleSlug,
    PolicyId, Role, TenantId, Timestamp, UserId,
};
pub use text::{
    Comment, Flag, NonEmpty, Source, Summary, Text, UserSet, check_name, check_visible,
};

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A value that could not be parsed: which field (a dotted path) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

impl ParseError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, so nested errors name their full location.
    #[must_use]
    pub fn within(mut self, parent: &str) -> Self {
        self.field = if self.field.is_empty() {
            parent.to_owned()
        } else if self.field.starts_with('[') {
            format!("{parent}{}", self.field)
        } else {
            format!("{parent}.{}", self.field)
        };
        self
    }
}

/// Who is acting, with the roles the credential grants. Recorded in every event it causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    pub id: UserId,
    #[serde(default)]
    pub roles: BTreeSet<Role>,
}

impl Principal {
    pub fn new(id: UserId, roles: impl IntoIterator<Item = Role>) -> Self {
        Self {
            id,
            roles: roles.into_iter().collect(),
        }
    }

    pub fn has_role(&self, role: &Role) -> bool {
        self.roles.contains(role)
    }

    /// Owners and admins administer a tenant.
    pub fn is_admin(&self) -> bool {
        self.has_role(&Role::admin()) || self.has_role(&Role::owner())
    }
}

/// A tenant's execution mode, recorded in each submission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TenantMode {
    /// Nothing ever executes: approved actions record a skipped execution.
    Safe,
    /// Every action waits for its policy's votes.
    #[default]
    RequireApproval,
    /// Actions whose policy has `auto_approve` are approved at submission.
    Auto,
}
