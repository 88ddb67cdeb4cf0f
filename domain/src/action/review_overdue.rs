//! Given/when/then for the escalation of an overdue break-glass review: never before it is due,
//! once, never once reviewed; the escalation role may review it afterwards.

use serde_json::{Value, json};

use super::tests::{Story, at, context, principal};
use super::*;
use crate::{Comment, Role};

fn requirements() -> Value {
    json!({
        "escalation_role": "cfo",
        "stages": [{ "rules": [{ "type": "role", "role": "approver", "min_approvals": 2 }] }],
    })
}

fn break_glass(seconds: i64, window: i64) -> ActionCommand {
    ActionCommand::BreakGlassApprove(BreakGlassApprove {
        context: context(&principal("bea", &["break_glass"]), seconds),
        justification: Comment::parse("prod is down").unwrap_or_else(|e| panic!("{e}")),
        review_due: at(seconds + window),
    })
}

fn escalate(seconds: i64) -> ActionCommand {
    ActionCommand::EscalateBreakGlassReview(EscalateBreakGlassReview {
        context: context(&principal("executor:test", &[]), seconds),
    })
}

fn review(by: &Principal, seconds: i64) -> ActionCommand {
    ActionCommand::ReviewBreakGlass(ReviewBreakGlass {
        context: context(by, seconds),
        verdict: ReviewVerdict::Upheld,
        comment: None,
    })
}

fn code(result: Result<Vec<&'static str>, ActionError>) -> Result<Vec<&'static str>, &'static str> {
    result.map_err(|e| e.code())
}

#[test]
fn an_overdue_review_escalates_once_to_the_escalation_role() {
    let mut story = Story::submitted(requirements());
    assert_eq!(
        code(story.run(escalate(5))),
        Err("invalid_state"),
        "nothing to escalate before the glass is broken"
    );
    assert!(story.run(break_glass(10, 60)).is_ok());
    assert_eq!(code(story.run(escalate(69))), Err("deadline_not_reached"));
    assert_eq!(story.run(escalate(70)), Ok(vec!["BreakGlassReviewOverdue"]));
    let state = story.action.state().unwrap_or_else(|| unreachable!());
    let glass = state.break_glass.as_ref().unwrap_or_else(|| unreachable!());
    let overdue = glass.overdue.as_ref().unwrap_or_else(|| unreachable!());
    assert_eq!(overdue.at, at(70));
    assert_eq!(
        overdue.escalation_role.as_ref().map(Role::as_str),
        Some("cfo")
    );
    assert_eq!(glass.escalation_due(), None);
    assert_eq!(code(story.run(escalate(71))), Err("invalid_state"), "once");
    // The escalation role may review now (it could not vote in any stage).
    assert_eq!(
        story.run(review(&principal("carl", &["cfo"]), 80)),
        Ok(vec!["BreakGlassReviewed"])
    );
    assert_eq!(Action::from_events(&story.events), story.action);
}

#[test]
fn a_reviewed_break_glass_approval_never_escalates() {
    let mut story = Story::submitted(requirements());
    assert!(story.run(break_glass(10, 60)).is_ok());
    assert_eq!(
        code(story.run(review(&principal("carl", &["cfo"]), 20))),
        Err("not_permitted"),
        "the escalation role reviews only once escalated"
    );
    assert!(
        story
            .run(review(&principal("amy", &["approver"]), 20))
            .is_ok()
    );
    let state = story.action.state().unwrap_or_else(|| unreachable!());
    assert_eq!(
        state
            .break_glass
            .as_ref()
            .and_then(BreakGlass::escalation_due),
        None
    );
    assert_eq!(code(story.run(escalate(1000))), Err("invalid_state"));
}
