//! `countersign tour`: approvals played in memory through the domain, printed as a timeline.
//! Every decision shown is made by the same code the service runs.

use std::io::Write;

use anyhow::{Context, anyhow};
use chrono::{DateTime, Duration, Utc};
use countersign_domain::action::{
    Action, ActionCommand, ActionEvent, CastVote, CommandContext, ExpireAction,
    RecordExecutionSuccess, RequestExecution, StartExecution, SubmitAction,
};
use countersign_domain::policy::{Policy, Requirements, resolve};
use countersign_domain::quorum::Vote;
use countersign_domain::risk::assess;
use countersign_domain::submission::Submission;
use countersign_domain::{ActionId, Comment, Principal, Role, TenantId, TenantMode, UserId};
use serde_json::{Value, json};

const POLICIES: &str = include_str!("../../docs/examples/policies.json");

struct Demo {
    tenant: TenantId,
    policies: Vec<Policy>,
    start: DateTime<Utc>,
    json: bool,
    out: std::io::Stdout,
}

struct Played {
    action: Action,
}

fn principal(id: &str, roles: &[&str]) -> anyhow::Result<Principal> {
    let roles = roles
        .iter()
        .map(|r| Role::parse(*r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Principal::new(UserId::parse(id)?, roles))
}

impl Demo {
    fn context(&self, by: &Principal, minutes: i64) -> CommandContext {
        CommandContext {
            tenant: self.tenant.clone(),
            by: by.clone(),
            at: self.start + Duration::minutes(minutes),
            correlation_id: None,
        }
    }

    fn title(&mut self, title: &str) -> anyhow::Result<()> {
        if !self.json {
            writeln!(self.out, "\n== {title}")?;
        }
        Ok(())
    }

    fn record(&mut self, played: &mut Played, command: ActionCommand) -> anyhow::Result<()> {
        let events = played
            .action
            .decide(command)
            .map_err(|err| anyhow!("{} ({})", err, err.code()))?;
        for event in events {
            self.print(&event)?;
            played.action.apply(event);
        }
        Ok(())
    }

    fn submit(
        &mut self,
        number: u128,
        requester: &Principal,
        submission: Value,
        mode: TenantMode,
    ) -> anyhow::Result<Played> {
        let submission: Submission =
            serde_json::from_value(submission).context("demo submission")?;
        let risk = assess(&submission);
        let policy = resolve(
            &self.policies,
            &submission.facts(&requester.id, &risk),
            &Requirements::builtin_default(),
        );
        let mut played = Played {
            action: Action::default(),
        };
        let command = ActionCommand::SubmitAction(Box::new(SubmitAction {
            context: self.context(requester, 0),
            action_id: ActionId::from_uuid(uuid::Uuid::from_u128(number)),
            submission,
            mode,
            policy,
            idempotency_key: None,
            rollback_of: None,
        }));
        self.record(&mut played, command)?;
        Ok(played)
    }

    fn vote(
        &mut self,
        played: &mut Played,
        voter: &Principal,
        vote: Vote,
        minutes: i64,
        comment: &str,
    ) -> anyhow::Result<()> {
        let command = ActionCommand::CastVote(CastVote {
            context: self.context(voter, minutes),
            vote,
            comment: Some(Comment::parse(comment)?),
        });
        self.record(played, command)
    }

    fn execute(&mut self, played: &mut Played, minutes: i64, result: Value) -> anyhow::Result<()> {
        let executor = principal("executor:demo", &[])?;
        self.record(
            played,
            ActionCommand::StartExecution(StartExecution {
                context: self.context(&executor, minutes),
                lease_seconds: 60,
                mode: TenantMode::RequireApproval,
            }),
        )?;
        self.record(
            played,
            ActionCommand::RecordExecutionSuccess(RecordExecutionSuccess {
                context: self.context(&executor, minutes),
                attempt: 1,
                result,
                undo_payload: None,
                duration_ms: 180,
            }),
        )
    }

    fn print(&mut self, event: &ActionEvent) -> anyhow::Result<()> {
        if self.json {
            writeln!(self.out, "{}", serde_json::to_string(event)?)?;
            return Ok(());
        }
        let context = event.context();
        let detail = match event {
            ActionEvent::ActionSubmitted(e) => format!(
                "{} \"{}\" · risk {} ({}) · policy {}",
                e.action_type,
                e.submission.summary,
                e.risk.score.value(),
                e.risk.level,
                e.policy.name
            ),
            ActionEvent::VoteCast(e) => format!(
                "{:?} in stage {}{}",
                e.vote,
                e.stage + 1,
                e.comment
                    .as_ref()
                    .map(|c| format!(": \"{c}\""))
                    .unwrap_or_default()
            ),
            ActionEvent::StageApproved(e) => format!(
                "stage {} approved ({} for, {} against, {} abstaining)",
                e.stage + 1,
                e.tally.approvals,
                e.tally.rejections,
                e.tally.abstentions
            ),
            ActionEvent::ActionApproved(e) => format!("approved ({:?})", e.reason),
            ActionEvent::ActionRejected(e) => format!("rejected ({:?})", e.reason),
            ActionEvent::ActionEscalated(e) => format!(
                "escalated to {} · new deadline {}",
                e.escalation_role,
                e.expires_at.format("%H:%M")
            ),
            ActionEvent::ActionExpired(_) => "expired".to_owned(),
            ActionEvent::ActionCancelled(_) => "cancelled".to_owned(),
            ActionEvent::ExecutionRequested(_) => "execution requested".to_owned(),
            ActionEvent::ExecutionStarted(e) => {
                format!(
                    "attempt {} · key {}…",
                    e.attempt,
                    &e.execution_key.as_str()[..12]
                )
            }
            ActionEvent::ExecutionSucceeded(e) => {
                format!("succeeded in {} ms: {}", e.duration_ms, e.result)
            }
            ActionEvent::ExecutionFailed(e) => format!("failed: {}", e.error),
            ActionEvent::ExecutionSkipped(e) => format!("skipped ({:?})", e.reason),
            ActionEvent::ExecutionResumed(e) => format!("resumed (tenant mode {:?})", e.mode),
            ActionEvent::RollbackRequested(e) => format!("rolled back by {}", e.rollback_action_id),
            ActionEvent::StageSkipped(e) => {
                format!("stage {} skipped ({:?})", e.stage + 1, e.reason)
            }
            ActionEvent::BreakGlassApproved(e) => format!("break-glass: {}", e.justification),
            ActionEvent::BreakGlassReviewed(e) => format!("break-glass reviewed ({:?})", e.verdict),
            ActionEvent::BreakGlassReviewOverdue(e) => {
                format!("break-glass review overdue since {}", e.review_due)
            }
        };
        writeln!(
            self.out,
            "{}  {:<18} {:<19} {}",
            context.at.format("%m-%d %H:%M"),
            context.actor,
            event.event_type(),
            detail
        )?;
        Ok(())
    }
}

pub fn run(json: bool) -> anyhow::Result<()> {
    let mut demo = Demo {
        tenant: TenantId::parse("demo")?,
        policies: serde_json::from_str(POLICIES).context("docs/examples/policies.json")?,
        start: DateTime::parse_from_rfc3339("2026-11-02T09:00:00Z")?.with_timezone(&Utc),
        json,
        out: std::io::stdout(),
    };
    let ops_bot = principal("ops-bot", &["requester"])?;
    let fay = principal("fay", &["finance_ops"])?;
    let fox = principal("fox", &["finance_ops"])?;
    let carla = principal("carla", &["cfo"])?;

    demo.title("High value payout: two finance_ops approvals at a 60% ratio")?;
    let mut payout = demo.submit(
        1,
        &ops_bot,
        json!({
            "module": "payouts", "capability": "pause",
            "payload": { "merchant": "m-42", "amount": 1_000_000, "currency": "XOF" },
            "summary": "Pause payout of 1,000,000 XOF to merchant m-42",
            "flags": ["financial"], "source": "automated-agent", "risk_tag": "high",
        }),
        TenantMode::RequireApproval,
    )?;
    demo.vote(
        &mut payout,
        &fay,
        Vote::Approve,
        12,
        "matches the fraud ticket",
    )?;
    demo.vote(
        &mut payout,
        &fox,
        Vote::Approve,
        20,
        "confirmed with the merchant",
    )?;
    let requester = demo.context(&ops_bot, 21);
    demo.record(
        &mut payout,
        ActionCommand::RequestExecution(RequestExecution {
            context: requester,
            mode: TenantMode::RequireApproval,
        }),
    )?;
    demo.execute(&mut payout, 22, json!({ "paused": true }))?;

    demo.title("Merchant freeze: a risk analyst, then half of compliance, auto-executed")?;
    let mut freeze = demo.submit(
        2,
        &ops_bot,
        json!({
            "module": "merchants", "capability": "freeze",
            "payload": { "merchant": "m-77" }, "summary": "Freeze merchant m-77 pending review",
            "impact": "blocks all payouts of one merchant", "source": "board",
        }),
        TenantMode::RequireApproval,
    )?;
    demo.vote(
        &mut freeze,
        &principal("raj", &["risk_ops"])?,
        Vote::Approve,
        5,
        "chargeback spike",
    )?;
    demo.vote(
        &mut freeze,
        &principal("compliance-amara", &[])?,
        Vote::Approve,
        30,
        "agreed",
    )?;
    demo.vote(
        &mut freeze,
        &principal("compliance-boris", &[])?,
        Vote::Abstain,
        35,
        "conflict of interest",
    )?;
    demo.execute(&mut freeze, 36, json!({ "frozen": true }))?;

    demo.title("Low risk action in auto mode: approved at submission")?;
    let mut tag = demo.submit(
        3,
        &ops_bot,
        json!({
            "module": "crm", "capability": "tag-contact",
            "payload": { "contact": 7, "tag": "vip" }, "summary": "Tag contact 7 as VIP", "source": "board",
        }),
        TenantMode::Auto,
    )?;
    demo.execute(&mut tag, 1, json!({ "tagged": true }))?;

    demo.title("High value payout nobody answers: escalated to the CFO, then expired")?;
    let mut stale = demo.submit(
        4,
        &ops_bot,
        json!({
            "module": "payouts", "capability": "pause",
            "payload": { "merchant": "m-91", "amount": 2_500_000, "currency": "XOF" },
            "summary": "Pause payout of 2,500,000 XOF to merchant m-91", "source": "automated-agent",
        }),
        TenantMode::RequireApproval,
    )?;
    let deadlines = principal("system:deadlines", &[])?;
    let first = demo.context(&deadlines, 60);
    demo.record(
        &mut stale,
        ActionCommand::ExpireAction(ExpireAction { context: first }),
    )?;
    demo.vote(
        &mut stale,
        &carla,
        Vote::Abstain,
        90,
        "need the merchant file first",
    )?;
    let second = demo.context(&deadlines, 120);
    demo.record(
        &mut stale,
        ActionCommand::ExpireAction(ExpireAction { context: second }),
    )?;
    Ok(())
}
