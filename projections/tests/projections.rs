//! Projections against real stores: each test runs on a fresh PostgreSQL database and a fresh
//! SQLite file.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use countersign_domain::action::ActionStatus;
use countersign_domain::quorum::Vote;
use countersign_domain::risk::RiskLevel;
use countersign_domain::{ActionId, TenantMode};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use countersign_projections::replay::{Until, replay};
use countersign_projections::{
    GenerationState, InboxFilter, InboxSort, Projection, QueryError, Runner, Supervisor,
};
use serde_json::json;
use support::*;

/// A small, varied tenant: every status, two risk levels, votes with comments, an escalation.
struct Scene {
    pending_high: ActionId,
    pending_low: ActionId,
    finance_only: ActionId,
    approved_executed: ActionId,
    rejected: ActionId,
    escalated: ActionId,
    other_tenant: ActionId,
}

async fn scene(world: &mut World) -> Scene {
    let acme = tenant("acme");
    let rita = principal("rita", &["requester"]);
    let sam = principal("sam", &["requester"]);
    let ana = principal("ana", &["approver"]);
    let olga = principal("olga", &["owner"]);

    let pending_high = world
        .submit(
            &acme,
            &rita,
            0,
            submission(
                "billing",
                "delete-invoices",
                "Delete 40 invoices",
                json!({ "impact": "mass deletion", "risk_tag": "high" }),
            ),
            any_of(2),
        )
        .await;
    world
        .vote(
            &acme,
            pending_high,
            &ana,
            Vote::Approve,
            5,
            Some("checked the list"),
        )
        .await;
    let pending_low = world
        .submit(
            &acme,
            &sam,
            10,
            submission("crm", "tag-contact", "Tag contact 7", json!({})),
            any_of(1),
        )
        .await;
    let finance_only = world
        .submit(&acme, &rita, 20, submission("payouts", "pause", "Pause payout", json!({})), json!({ "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }] }))
        .await;
    let approved_executed = world
        .submit(&acme, &sam, 30, submission("email", "send", "Send weekly update", json!({ "connectors": ["gmail", "hubspot"] })), json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }], "auto_execute": true }))
        .await;
    world
        .vote(&acme, approved_executed, &olga, Vote::Approve, 31, None)
        .await;
    world
        .run(approved_executed, World::start_command(&acme, 32))
        .await;
    world
        .run(
            approved_executed,
            World::failure_command(&acme, 1, true, 33),
        )
        .await;
    world
        .run(approved_executed, World::start_command(&acme, 34))
        .await;
    world
        .run(approved_executed, World::success_command(&acme, 2, 35))
        .await;
    let rejected = world
        .submit(
            &acme,
            &rita,
            40,
            submission("crm", "delete-leads", "Delete stale leads", json!({})),
            any_of(1),
        )
        .await;
    world
        .vote(
            &acme,
            rejected,
            &olga,
            Vote::Reject,
            41,
            Some("still in a campaign"),
        )
        .await;
    let escalated = world
        .submit(&acme, &rita, 50, submission("payouts", "pause", "Pause payout 2", json!({})), json!({
            "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }],
            "timeout_seconds": 600, "escalation_role": "cfo"
        }))
        .await;
    world.run(escalated, World::expire_command(&acme, 61)).await;
    let other_tenant = world
        .submit(
            &tenant("globex"),
            &principal("gus", &["requester"]),
            0,
            submission("crm", "tag-contact", "Globex tag", json!({})),
            any_of(1),
        )
        .await;
    Scene {
        pending_high,
        pending_low,
        finance_only,
        approved_executed,
        rejected,
        escalated,
        other_tenant,
    }
}

fn ids(page: &countersign_projections::InboxPage) -> Vec<String> {
    page.items.iter().map(|item| item.id.clone()).collect()
}

fn open_statuses() -> Vec<ActionStatus> {
    vec![ActionStatus::Pending, ActionStatus::Escalated]
}

on_both_stores!(the_inbox_filters_sorts_and_pages);
async fn the_inbox_filters_sorts_and_pages(kind: &str) {
    let mut world = World::new(kind).await;
    let scene = scene(&mut world).await;
    world.project().await;
    let acme = tenant("acme");
    let inbox = |filter: InboxFilter| {
        let projections = world.projections.clone();
        let acme = acme.clone();
        async move {
            projections
                .inbox(
                    &acme,
                    &InboxFilter {
                        limit: 50,
                        ..filter
                    },
                )
                .await
                .expect("inbox")
        }
    };

    // Open actions, newest first; the other tenant's never appear.
    let open = inbox(InboxFilter {
        statuses: open_statuses(),
        ..InboxFilter::default()
    })
    .await;
    let expected: Vec<String> = [
        scene.escalated,
        scene.finance_only,
        scene.pending_low,
        scene.pending_high,
    ]
    .iter()
    .map(ToString::to_string)
    .collect();
    assert_eq!(ids(&open), expected);
    assert!(!ids(&open).contains(&scene.other_tenant.to_string()));
    assert_eq!(open.items[0].status, ActionStatus::Escalated);
    assert_eq!(open.items[0].escalations, 1);

    let everything = inbox(InboxFilter::default()).await;
    assert_eq!(everything.items.len(), 6);

    let high = inbox(InboxFilter {
        risk_levels: vec![RiskLevel::High],
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(ids(&high), [scene.pending_high.to_string()]);
    let scored = inbox(InboxFilter {
        min_score: Some(1),
        max_score: Some(10),
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(
        ids(&scored),
        [scene.approved_executed.to_string()],
        "email with two connectors scores 5"
    );
    let crm = inbox(InboxFilter {
        module: Some("crm".into()),
        capability: Some("delete-leads".into()),
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(ids(&crm), [scene.rejected.to_string()]);
    let by_sam = inbox(InboxFilter {
        requested_by: Some("sam".into()),
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(
        ids(&by_sam),
        [
            scene.approved_executed.to_string(),
            scene.pending_low.to_string()
        ]
    );
    let window = inbox(InboxFilter {
        created_from: Some(at(10)),
        created_before: Some(at(31)),
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(
        ids(&window),
        [
            scene.approved_executed.to_string(),
            scene.finance_only.to_string(),
            scene.pending_low.to_string()
        ]
    );
    let rejected = inbox(InboxFilter {
        statuses: vec![ActionStatus::Rejected],
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(ids(&rejected), [scene.rejected.to_string()]);

    // Sorts.
    let by_risk = inbox(InboxFilter {
        statuses: open_statuses(),
        sort: InboxSort::Risk,
        ..InboxFilter::default()
    })
    .await;
    assert_eq!(by_risk.items[0].id, scene.pending_high.to_string());
    assert!(
        by_risk
            .items
            .windows(2)
            .all(|w| w[0].risk_score >= w[1].risk_score)
    );
    let by_deadline = inbox(InboxFilter {
        statuses: open_statuses(),
        sort: InboxSort::Deadline,
        ..InboxFilter::default()
    })
    .await;
    assert!(
        by_deadline
            .items
            .windows(2)
            .all(|w| w[0].expires_at <= w[1].expires_at)
    );

    // Keyset pages of one: every item once, in order.
    for sort in [InboxSort::Created, InboxSort::Risk, InboxSort::Deadline] {
        let full = inbox(InboxFilter {
            sort,
            ..InboxFilter::default()
        })
        .await;
        let mut paged = Vec::new();
        let mut cursor = None;
        loop {
            let page = world
                .projections
                .inbox(
                    &acme,
                    &InboxFilter {
                        sort,
                        cursor: cursor.clone(),
                        limit: 1,
                        ..InboxFilter::default()
                    },
                )
                .await
                .expect("page");
            paged.extend(ids(&page));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(paged, ids(&full), "{sort:?}");
    }
    let bad = world
        .projections
        .inbox(
            &acme,
            &InboxFilter {
                cursor: Some("not-a-cursor".into()),
                ..InboxFilter::default()
            },
        )
        .await;
    assert!(matches!(bad, Err(QueryError::InvalidCursor)));
}

on_both_stores!(eligible_for_me_means_may_vote_now_and_has_not_yet);
async fn eligible_for_me_means_may_vote_now_and_has_not_yet(kind: &str) {
    let mut world = World::new(kind).await;
    let scene = scene(&mut world).await;
    world.project().await;
    let acme = tenant("acme");
    let eligible = |who| {
        let projections = world.projections.clone();
        let acme = acme.clone();
        async move {
            let page = projections
                .inbox(
                    &acme,
                    &InboxFilter {
                        statuses: open_statuses(),
                        eligible: Some(who),
                        limit: 50,
                        ..InboxFilter::default()
                    },
                )
                .await
                .expect("inbox");
            ids(&page).into_iter().collect::<BTreeSet<_>>()
        }
    };
    let set = |ids: &[ActionId]| ids.iter().map(ToString::to_string).collect::<BTreeSet<_>>();
    // ana (approver) already voted on pending_high; finance_only needs finance_ops.
    assert_eq!(
        eligible(principal("ana", &["approver"])).await,
        set(&[scene.pending_low])
    );
    assert_eq!(
        eligible(principal("bo", &["approver"])).await,
        set(&[scene.pending_high, scene.pending_low])
    );
    assert_eq!(
        eligible(principal("fay", &["finance_ops"])).await,
        set(&[scene.finance_only, scene.escalated])
    );
    // After the escalation, cfo holders may vote on the escalated action.
    assert_eq!(
        eligible(principal("carla", &["cfo"])).await,
        set(&[scene.escalated])
    );
    // The requester may not vote on their own action.
    assert_eq!(
        eligible(principal("rita", &["approver", "requester"])).await,
        set(&[scene.pending_low])
    );
    assert!(eligible(principal("aud", &["auditor"])).await.is_empty());

    // Asked for given ids (every action of the scene, closed ones and another tenant's among
    // them), the one-read check agrees with the eligible view.
    let every = set(&[
        scene.pending_high,
        scene.pending_low,
        scene.finance_only,
        scene.approved_executed,
        scene.rejected,
        scene.escalated,
        scene.other_tenant,
    ])
    .into_iter()
    .collect::<Vec<_>>();
    for who in [
        principal("ana", &["approver"]),
        principal("bo", &["approver"]),
        principal("fay", &["finance_ops"]),
        principal("carla", &["cfo"]),
        principal("rita", &["approver", "requester"]),
        principal("aud", &["auditor"]),
    ] {
        let among = world
            .projections
            .votable_among(&acme, &who, &every)
            .await
            .expect("votable");
        assert_eq!(among, eligible(who.clone()).await, "{}", who.id);
    }
    assert!(
        world
            .projections
            .votable_among(&acme, &principal("bo", &["approver"]), &[])
            .await
            .expect("votable")
            .is_empty()
    );

    // Each open item carries its stage count and its current stage's rules, one per counted
    // rule of its vote summary.
    let open = world
        .projections
        .inbox(
            &acme,
            &InboxFilter {
                statuses: open_statuses(),
                limit: 50,
                ..InboxFilter::default()
            },
        )
        .await
        .expect("inbox");
    for item in &open.items {
        let rules = item.stage_rules.as_ref().expect("stage rules");
        assert!(rules.stages > item.stage, "{}", item.id);
        let summary = item.vote_summary.as_ref().expect("vote summary");
        assert_eq!(rules.rules.len(), summary.rules.len(), "{}", item.id);
    }
}

on_both_stores!(detail_audit_stats_and_history_read_back_the_scene);
async fn detail_audit_stats_and_history_read_back_the_scene(kind: &str) {
    let mut world = World::new(kind).await;
    let scene = scene(&mut world).await;
    world.project().await;
    let acme = tenant("acme");
    let projections = &world.projections;

    let detail = projections
        .action(&acme, &scene.pending_high)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(detail.status, ActionStatus::Pending);
    assert_eq!(detail.risk.level, RiskLevel::High);
    assert!(
        detail
            .risk
            .reasons
            .iter()
            .any(|reason| reason.code
                == countersign_domain::risk::RiskReasonCode::HighDescribedImpact)
    );
    assert_eq!(detail.stages.len(), 1);
    let stage = &detail.stages[0];
    assert_eq!(stage.state, "current");
    let rule = &stage.progress.as_ref().expect("progress").rules[0];
    assert_eq!((rule.counted, rule.needed, rule.satisfied), (1, 2, false));
    assert_eq!(stage.votes.len(), 1);
    assert_eq!(stage.votes[0].voter.as_str(), "ana");
    assert_eq!(
        stage.votes[0].ballot.comment.as_ref().map(|c| c.as_str()),
        Some("checked the list")
    );
    assert!(
        stage.votes[0]
            .ballot
            .roles
            .iter()
            .any(|role| role.as_str() == "approver")
    );

    let executed = projections
        .action(&acme, &scene.approved_executed)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(executed.status, ActionStatus::Executed);
    assert_eq!(executed.execution.history.len(), 2);
    assert_eq!(executed.execution.duration_ms, Some(250));
    assert_eq!(executed.execution.result, Some(json!({ "done": true })));

    // Another tenant's action reads like a missing one.
    assert!(
        projections
            .action(&acme, &scene.other_tenant)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        projections
            .audit(&acme, &scene.other_tenant)
            .await
            .expect("read")
            .is_empty()
    );

    let audit = projections
        .audit(&acme, &scene.approved_executed)
        .await
        .expect("audit");
    assert_eq!(
        audit
            .iter()
            .map(|entry| entry.event_type.as_str())
            .collect::<Vec<_>>(),
        [
            "ActionSubmitted",
            "VoteCast",
            "StageApproved",
            "ActionApproved",
            "ExecutionStarted",
            "ExecutionFailed",
            "ExecutionStarted",
            "ExecutionSucceeded"
        ]
    );
    assert!(
        audit
            .windows(2)
            .all(|w| w[0].position < w[1].position && w[0].sequence + 1 == w[1].sequence)
    );
    assert_eq!(audit[1].actor, "olga");
    assert_eq!(audit[1].at, at(31));
    assert_eq!(audit[1].content["vote"], "approve");

    let stats = projections.stats(&acme).await.expect("stats");
    assert_eq!(stats.submitted, 6);
    assert_eq!(stats.by_status.get("pending"), Some(&3));
    assert_eq!(stats.by_status.get("escalated"), Some(&1));
    assert_eq!(stats.by_status.get("executed"), Some(&1));
    assert_eq!(stats.by_status.get("rejected"), Some(&1));
    assert_eq!(stats.by_module.get("payouts"), Some(&2));
    assert_eq!(stats.by_risk.get("high"), Some(&1));
    assert_eq!(stats.decisions.get("approved"), Some(&1));
    assert_eq!(stats.approval_rate, Some(0.5));
    assert_eq!(stats.escalation_rate, Some(1.0 / 6.0));
    assert_eq!(stats.execution_success_rate, Some(1.0));
    assert_eq!(stats.votes_cast, 3);
    assert_eq!(
        stats
            .decision_latency_p50_seconds
            .map(|s| s > 50.0 && s <= 66.0),
        Some(true),
        "{stats:?}"
    );
    let globex = projections.stats(&tenant("globex")).await.expect("stats");
    assert_eq!(globex.submitted, 1);

    let votes = projections
        .votes_by(&acme, "olga", 10)
        .await
        .expect("votes");
    assert_eq!(
        votes
            .iter()
            .map(|v| (v.action_id.clone(), v.vote.as_str()))
            .collect::<Vec<_>>(),
        [
            (scene.rejected.to_string(), "reject"),
            (scene.approved_executed.to_string(), "approve")
        ]
    );
    assert_eq!(votes[0].comment.as_deref(), Some("still in a campaign"));
}

/// A randomized workload across tenants, projected incrementally in small batches while it runs.
async fn workload(world: &mut World, seed: u64, actions: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let tenants = [tenant("acme"), tenant("globex"), tenant("initech")];
    let voters = [
        principal("ana", &["approver"]),
        principal("bo", &["approver", "finance_ops"]),
        principal("olga", &["owner"]),
        principal("carla", &["cfo"]),
    ];
    let requester = principal("rita", &["requester"]);
    let mut minute = 0;
    for n in 0..actions {
        let tenant = &tenants[rng.usize(..tenants.len())];
        let requirements = match rng.u8(..4) {
            0 => any_of(1),
            1 => any_of(2),
            2 => {
                json!({ "stages": [{ "rules": [{ "type": "role", "role": "finance_ops", "min_approvals": 1 }] }], "timeout_seconds": 60, "escalation_role": "cfo", "auto_execute": true })
            }
            _ => {
                json!({ "stages": [{ "rules": [{ "type": "any", "min_approvals": 1 }] }, { "rules": [{ "type": "specific_users", "users": ["olga"] }] }], "auto_execute": true, "auto_approve": true })
            }
        };
        let mode = if rng.bool() {
            TenantMode::Auto
        } else {
            TenantMode::RequireApproval
        };
        let id = ActionId::from_uuid(uuid::Uuid::now_v7());
        let module = ["billing", "crm", "email", "payouts"][rng.usize(..4)];
        let _ = world
            .submit_as(
                id,
                tenant,
                &requester,
                minute,
                submission(
                    module,
                    "run",
                    &format!("Action {n}"),
                    json!({ "flags": if rng.bool() { vec!["pii"] } else { vec![] } }),
                ),
                requirements,
                mode,
            )
            .await;
        for _ in 0..rng.usize(..6) {
            minute += rng.i64(0..30);
            let command = match rng.u8(..6) {
                0..=2 => World::vote_command(
                    tenant,
                    &voters[rng.usize(..voters.len())],
                    [Vote::Approve, Vote::Reject, Vote::Abstain][rng.usize(..3)],
                    minute,
                    if rng.bool() { Some("ok") } else { None },
                ),
                3 => World::expire_command(tenant, minute + 2),
                4 => World::start_command(tenant, minute),
                _ => {
                    if rng.bool() {
                        World::success_command(tenant, 1, minute)
                    } else {
                        World::failure_command(tenant, 1, rng.bool(), minute)
                    }
                }
            };
            world.try_run(id, command).await;
        }
        match rng.u8(..10) {
            0 => {
                world
                    .try_run(id, World::request_command(tenant, &requester, minute))
                    .await
            }
            1 => {
                world
                    .try_run(id, World::cancel_command(tenant, &requester, minute))
                    .await
            }
            _ => false,
        };
        minute += 1;
    }
}

on_both_stores!(a_rebuild_is_identical_row_for_row_to_the_incremental_tables);
async fn a_rebuild_is_identical_row_for_row_to_the_incremental_tables(kind: &str) {
    let mut world = World::new(kind).await;
    let mut live = Vec::new();
    for projection in Projection::ALL {
        live.push(world.live(projection).await);
    }
    for round in 0..4 {
        workload(&mut world, 7 + round, 15).await;
        for generation in &live {
            world
                .catch_up(generation.projection, generation.generation, 7)
                .await;
        }
    }
    for generation in &live {
        let incremental = world
            .projections
            .dump(generation.projection, generation.generation)
            .await
            .expect("dump");
        let rebuilt = world
            .projections
            .create_generation(generation.projection, GenerationState::Building)
            .await
            .expect("new generation");
        world
            .catch_up(generation.projection, rebuilt.generation, 1000)
            .await;
        let from_scratch = world
            .projections
            .dump(generation.projection, rebuilt.generation)
            .await
            .expect("dump");
        assert!(incremental.len() > 60, "{} rows", incremental.len());
        assert_eq!(incremental, from_scratch, "{}", generation.projection);
    }
}

on_both_stores!(a_runner_killed_mid_batch_loses_and_duplicates_nothing);
async fn a_runner_killed_mid_batch_loses_and_duplicates_nothing(kind: &str) {
    let mut world = World::new(kind).await;
    let live = world.live(Projection::Actions).await;
    let audit = world.live(Projection::Audit).await;
    workload(&mut world, 99, 40).await;
    // Kill a running runner at varied moments, as a crash would, then start another.
    for kill_after_ms in [1u64, 3, 7, 12, 20, 30] {
        let runner = Runner::new(
            world.store.ledger.clone(),
            world.projections.clone(),
            Projection::Actions,
            live.generation,
        )
        .with_batch(5);
        let task = tokio::spawn(runner.run(std::future::pending()));
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        task.abort();
        let _ = task.await;
    }
    world
        .catch_up(Projection::Actions, live.generation, 5)
        .await;
    world
        .catch_up(Projection::Audit, audit.generation, 1000)
        .await;
    let survived = world
        .projections
        .dump(Projection::Actions, live.generation)
        .await
        .expect("dump");
    let rebuilt = world
        .projections
        .create_generation(Projection::Actions, GenerationState::Building)
        .await
        .expect("generation");
    world
        .catch_up(Projection::Actions, rebuilt.generation, 1000)
        .await;
    assert_eq!(
        survived,
        world
            .projections
            .dump(Projection::Actions, rebuilt.generation)
            .await
            .expect("dump")
    );
}

on_both_stores!(replay_shows_the_views_as_they_were);
async fn replay_shows_the_views_as_they_were(kind: &str) {
    let mut world = World::new(kind).await;
    let acme = tenant("acme");
    let id = ActionId::from_uuid(uuid::Uuid::now_v7());
    let submitted = world
        .submit_as(
            id,
            &acme,
            &principal("rita", &["requester"]),
            0,
            submission("crm", "tag-contact", "Tag contact 7", json!({})),
            any_of(1),
            TenantMode::RequireApproval,
        )
        .await;
    let before_vote = submitted.last_position().expect("position");
    let vote = World::vote_command(
        &acme,
        &principal("olga", &["owner"]),
        Vote::Approve,
        5,
        Some("fine"),
    );
    let voted = world.run(id, vote).await;
    let after_vote = voted.last_position().expect("position");
    eventually(within(Duration::from_secs(60)), async || {
        let head = world.store.ledger.log_head().await.expect("head");
        if head.position < after_vote {
            Err(format!(
                "the log head stayed at {head:?}, before {after_vote}"
            ))
        } else {
            Ok(())
        }
    })
    .await;

    let earlier = replay(
        &world.store.ledger,
        &acme,
        Until::Position(before_vote),
        |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(
        earlier.state(&id.to_string()).map(|s| s.status),
        Some(ActionStatus::Pending)
    );
    assert_eq!(earlier.inbox().len(), 1);
    assert_eq!(earlier.audit(&id.to_string()).len(), 1);

    let later = replay(
        &world.store.ledger,
        &acme,
        Until::Position(after_vote),
        |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(
        later.state(&id.to_string()).map(|s| s.status),
        Some(ActionStatus::Approved)
    );
    assert!(later.inbox().is_empty());
    assert_eq!(later.audit(&id.to_string()).len(), 4);
    let detail = later.detail(&id.to_string()).expect("detail");
    assert_eq!(
        detail.stages[0].votes[0]
            .ballot
            .comment
            .as_ref()
            .map(|c| c.as_str()),
        Some("fine")
    );

    let other = replay(
        &world.store.ledger,
        &tenant("globex"),
        Until::Position(after_vote),
        |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(other.events, 0, "another tenant sees nothing");
    let by_time = replay(
        &world.store.ledger,
        &acme,
        Until::Time(chrono::Utc::now()),
        |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(
        by_time.state(&id.to_string()).map(|s| s.status),
        Some(ActionStatus::Approved)
    );
    let before_time = replay(
        &world.store.ledger,
        &acme,
        Until::Time(chrono::Utc::now() - chrono::Duration::hours(1)),
        |_| {},
    )
    .await
    .expect("replay");
    assert_eq!(before_time.events, 0);
}

on_both_stores!(a_rebuild_swaps_in_while_readers_always_get_complete_answers);
async fn a_rebuild_swaps_in_while_readers_always_get_complete_answers(kind: &str) {
    let mut world = World::new(kind).await;
    workload(&mut world, 5, 40).await;
    world.project().await;
    let acme = tenant("acme");
    let expected = world
        .projections
        .inbox(
            &acme,
            &InboxFilter {
                limit: 500,
                ..InboxFilter::default()
            },
        )
        .await
        .expect("inbox")
        .items;
    let old = world
        .projections
        .live(Projection::Actions)
        .await
        .expect("registry")
        .expect("live");

    let projections = world.projections.clone();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Each reader counts its complete reads, so that the test knows they read before the swap
    // and after it instead of hoping they were scheduled.
    let counts: Vec<_> = (0..3).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let readers: Vec<_> = counts
        .iter()
        .map(|count| {
            let projections = projections.clone();
            let acme = acme.clone();
            let expected = expected.clone();
            let stopped = stopped.clone();
            let count = count.clone();
            tokio::spawn(async move {
                while !*stopped.borrow() {
                    let page = projections
                        .inbox(
                            &acme,
                            &InboxFilter {
                                limit: 500,
                                ..InboxFilter::default()
                            },
                        )
                        .await
                        .expect("every read succeeds");
                    assert_eq!(page.items, expected, "every read is complete");
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    // Every reader has read at least `more` times more than it had when `reads` were taken.
    let read_on = |reads: Vec<usize>, more: usize| {
        let counts = counts.clone();
        async move {
            let deadline = within(Duration::from_secs(60)).every(Duration::from_millis(5));
            eventually(deadline, async || {
                let behind = counts
                    .iter()
                    .zip(&reads)
                    .any(|(count, read)| count.load(Ordering::SeqCst) < read + more);
                if behind {
                    Err("a reader stopped reading (a failed read panics above)")
                } else {
                    Ok(())
                }
            })
            .await;
        }
    };
    let snapshot = || -> Vec<usize> {
        counts
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .collect()
    };
    read_on(vec![0; counts.len()], 1).await;
    let rebuilt = countersign_projections::rebuild(
        &world.store.ledger,
        &world.projections,
        Projection::Actions,
        |_, _| {},
    )
    .await
    .expect("rebuild");
    assert_eq!(rebuilt.state, GenerationState::Live);
    assert!(rebuilt.generation > old.generation);
    world
        .projections
        .drop_retired(Projection::Actions)
        .await
        .expect("drop");
    // Two more reads each: the second began after the old generation was dropped.
    read_on(snapshot(), 2).await;
    stop.send(true).expect("stop");
    for reader in readers {
        reader.await.expect("reader");
    }
    let generations = world
        .projections
        .generations(Projection::Actions)
        .await
        .expect("registry");
    assert_eq!(
        generations
            .iter()
            .map(|g| (g.generation, g.state))
            .collect::<Vec<_>>(),
        [(rebuilt.generation, GenerationState::Live)]
    );
}

on_both_stores!(a_changed_projection_version_is_rebuilt_beside_the_live_one_by_the_supervisor);
async fn a_changed_projection_version_is_rebuilt_beside_the_live_one_by_the_supervisor(kind: &str) {
    let mut world = World::new(kind).await;
    workload(&mut world, 11, 10).await;
    world.project().await;
    let old = world
        .projections
        .live(Projection::Audit)
        .await
        .expect("registry")
        .expect("live");
    // Pretend the live generation was written by an older version of the code.
    let pretend = format!(
        "UPDATE projections SET version = 0 WHERE name = 'audit' AND generation = {}",
        old.generation
    );
    match world.store.ledger.backend() {
        countersign_ledger::Backend::Postgres(pool) => {
            sqlx::query(&pretend).execute(pool).await.map(drop)
        }
        countersign_ledger::Backend::Sqlite(pool) => {
            sqlx::query(&pretend).execute(pool).await.map(drop)
        }
    }
    .expect("pretend an older version");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor = tokio::spawn(
        Supervisor::new(world.store.ledger.clone(), world.projections.clone()).run(stopped),
    );
    let every = Duration::from_millis(50);
    eventually(within(Duration::from_secs(60)).every(every), async || {
        let live = world
            .projections
            .live(Projection::Audit)
            .await
            .expect("registry")
            .expect("live");
        if live.version == Projection::Audit.version() && live.events == world.written {
            assert!(live.generation > old.generation);
            return Ok(());
        }
        Err("never rebuilt")
    })
    .await;
    // New events keep flowing into the new generation.
    workload(&mut world, 12, 3).await;
    eventually(within(Duration::from_secs(60)).every(every), async || {
        let live = world
            .projections
            .live(Projection::Audit)
            .await
            .expect("registry")
            .expect("live");
        if live.events < world.written {
            Err("the new generation stopped")
        } else {
            Ok(())
        }
    })
    .await;
    stop.send(true).expect("stop");
    supervisor.await.expect("task").expect("supervisor");
    let left: Vec<_> = world
        .projections
        .generations(Projection::Audit)
        .await
        .expect("registry")
        .into_iter()
        .map(|g| g.state)
        .collect();
    assert_eq!(
        left,
        [GenerationState::Live],
        "the old generation was dropped"
    );
}

on_both_stores!(an_older_live_generation_serves_while_its_successor_builds);
async fn an_older_live_generation_serves_while_its_successor_builds(kind: &str) {
    let mut world = World::new(kind).await;
    workload(&mut world, 13, 10).await;
    world.project().await;
    let old = world.live(Projection::Actions).await;
    // Make it exactly what version 1 of the code left behind: registered as version 1, without
    // the columns added since (the code reads and writes them).
    let g = old.generation;
    let statements = [
        format!("DROP INDEX p_actions_g{g}_review_due"),
        format!("ALTER TABLE p_actions_g{g} DROP COLUMN review_due"),
        format!("ALTER TABLE p_actions_g{g} DROP COLUMN vote_summary"),
        format!("ALTER TABLE p_actions_g{g} DROP COLUMN break_glass"),
        format!("ALTER TABLE p_actions_g{g} DROP COLUMN stage_rules"),
        format!("UPDATE projections SET version = 1 WHERE name = 'actions' AND generation = {g}"),
    ];
    for statement in &statements {
        match world.store.ledger.backend() {
            countersign_ledger::Backend::Postgres(pool) => {
                sqlx::query(statement).execute(pool).await.map(drop)
            }
            countersign_ledger::Backend::Sqlite(pool) => {
                sqlx::query(statement).execute(pool).await.map(drop)
            }
        }
        .unwrap_or_else(|err| panic!("{statement}: {err}"));
    }
    // Another builder holds the build: the old generation serves alone, for as long as that
    // takes, and must keep up with what is written meanwhile.
    let builder = world
        .store
        .ledger
        .lock_tailer("projection-build:actions")
        .await
        .expect("lock")
        .expect("the build lock is free");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let supervisor = tokio::spawn(
        Supervisor::new(world.store.ledger.clone(), world.projections.clone()).run(stopped),
    );
    workload(&mut world, 14, 5).await;
    let every = Duration::from_millis(50);
    let tenants = [tenant("acme"), tenant("globex"), tenant("initech")];
    let everything = InboxFilter {
        statuses: Vec::new(),
        limit: 200,
        ..InboxFilter::default()
    };
    eventually(within(Duration::from_secs(60)).every(every), async || {
        let live = world.live(Projection::Actions).await;
        if live.generation != g {
            return Err("the old generation was replaced while its successor could not build");
        }
        if live.events < world.written {
            return Err("the old generation does not keep up");
        }
        Ok(())
    })
    .await;
    let mut items = Vec::new();
    for tenant in &tenants {
        let page = world
            .projections
            .inbox(tenant, &everything)
            .await
            .expect("the old generation serves the inbox");
        items.extend(page.items);
    }
    assert!(
        items.iter().any(|item| item.stage_rules.is_some()),
        "the actions written after the upgrade carry the new columns"
    );
    assert!(
        items.iter().any(|item| item.stage_rules.is_none()),
        "the rows written by the old version read as not recorded"
    );

    // Once the build may run, the successor replaces the old generation.
    builder.release().await;
    eventually(within(Duration::from_secs(60)).every(every), async || {
        let live = world.live(Projection::Actions).await;
        if live.version == Projection::Actions.version() && live.events == world.written {
            assert!(live.generation > g);
            return Ok(());
        }
        Err("never rebuilt")
    })
    .await;
    let mut rebuilt = Vec::new();
    for tenant in &tenants {
        let page = world
            .projections
            .inbox(tenant, &everything)
            .await
            .expect("the new generation serves the inbox");
        rebuilt.extend(page.items);
    }
    assert_eq!(rebuilt.len(), items.len());
    assert!(rebuilt.iter().all(|item| item.stage_rules.is_some()));
    stop.send(true).expect("stop");
    supervisor.await.expect("task").expect("supervisor");
}

async fn visible_tenants(
    connection: &mut sqlx::PgConnection,
    generation: i64,
    tenant: Option<&str>,
) -> Vec<String> {
    let mut tx = sqlx::Connection::begin(connection).await.expect("begin");
    sqlx::query("SET LOCAL ROLE countersign_reader")
        .execute(&mut *tx)
        .await
        .expect("role");
    if let Some(tenant) = tenant {
        sqlx::query("SELECT set_config('countersign.tenant', $1, true)")
            .bind(tenant)
            .execute(&mut *tx)
            .await
            .expect("tenant");
    }
    // A hand-written query with no tenant filter at all.
    let tenants: Vec<String> =
        sqlx::query_scalar(&format!("SELECT tenant FROM p_actions_g{generation}"))
            .fetch_all(&mut *tx)
            .await
            .expect("select");
    tx.rollback().await.expect("rollback");
    tenants
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_level_security_hides_other_tenants_even_from_hand_written_queries() {
    let mut world = World::new("postgres").await;
    scene(&mut world).await;
    world.project().await;
    let live = world
        .projections
        .live(Projection::Actions)
        .await
        .expect("registry")
        .expect("live");
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&world.store.location())
        .await
        .expect("connect");
    let acme = visible_tenants(&mut connection, live.generation, Some("acme")).await;
    assert_eq!(acme.len(), 6);
    assert!(acme.iter().all(|tenant| tenant == "acme"));
    assert_eq!(
        visible_tenants(&mut connection, live.generation, Some("globex")).await,
        ["globex"]
    );
    assert!(
        visible_tenants(&mut connection, live.generation, None)
            .await
            .is_empty(),
        "no tenant set, no rows"
    );
}

/// The indexes on a generation's tables, their generation number written as `*`.
async fn indexes_of(world: &World, projection: Projection, generation: i64) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for table in projection.tables(generation) {
        let found: Vec<String> = match world.store.ledger.backend() {
            countersign_ledger::Backend::Postgres(pool) => {
                sqlx::query_scalar("SELECT indexname::TEXT FROM pg_indexes WHERE tablename = $1")
                    .bind(&table)
                    .fetch_all(pool)
                    .await
            }
            countersign_ledger::Backend::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = $1",
                )
                .bind(&table)
                .fetch_all(pool)
                .await
            }
        }
        .expect("index list");
        names.extend(
            found
                .into_iter()
                .map(|name| name.replace(&format!("_g{generation}"), "_g*")),
        );
    }
    names
}

on_both_stores!(a_rebuilt_generation_is_indexed_once_caught_up_like_the_live_one);
async fn a_rebuilt_generation_is_indexed_once_caught_up_like_the_live_one(kind: &str) {
    let mut world = World::new(kind).await;
    workload(&mut world, 21, 12).await;
    world.project().await;
    for projection in Projection::ALL {
        let live = world.live(projection).await;
        let served = indexes_of(&world, projection, live.generation).await;
        assert!(
            served
                .iter()
                .filter(|name| !name.ends_with("pkey") && !name.contains("autoindex"))
                .count()
                >= 2,
            "{projection}: the live generation has its secondary indexes: {served:?}"
        );
        // A build interrupted early: its tables hold rows and only their primary keys.
        let building = world
            .projections
            .create_generation(projection, GenerationState::Building)
            .await
            .expect("generation");
        world.catch_up(projection, building.generation, 7).await;
        let bare = indexes_of(&world, projection, building.generation).await;
        assert!(
            bare.len() < served.len() && bare.is_subset(&served),
            "{projection}: a building generation is written without its secondary indexes: {bare:?}"
        );
        // More is written; the live generation keeps up, the build resumes, catches up and
        // goes live with every index the live one had.
        workload(&mut world, 22, 3).await;
        world.catch_up(projection, live.generation, 1000).await;
        let rebuilt = countersign_projections::rebuild(
            &world.store.ledger,
            &world.projections,
            projection,
            |_, _| {},
        )
        .await
        .expect("rebuild");
        assert_eq!(rebuilt.generation, building.generation, "the build resumed");
        assert_eq!(rebuilt.state, GenerationState::Live);
        assert_eq!(
            indexes_of(&world, projection, rebuilt.generation).await,
            served,
            "{projection}"
        );
        // Resumed without its indexes, the build still holds exactly the incremental rows.
        assert_eq!(
            world
                .projections
                .dump(projection, rebuilt.generation)
                .await
                .expect("dump"),
            world
                .projections
                .dump(projection, live.generation)
                .await
                .expect("dump of the retired generation, not yet dropped"),
            "{projection}"
        );
        world
            .projections
            .drop_retired(projection)
            .await
            .expect("drop");
    }
}
