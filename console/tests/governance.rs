//! The console's governance pages through its router (`oneshot`), on both stores: delegation
//! windows (grant, who sees what, revoke, refusals), policy backtesting (a draft's diff, who may
//! run one, bad drafts) and break-glass from the drawer (approve alone with a justification,
//! review after the fact, refusals that change nothing).
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod support;

use axum::http::StatusCode;
use countersign_app::{actions, delegations};
use countersign_domain::action::ActionStatus;
use std::time::Duration;

use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{eventually, within};
use countersign_projections::Projection;
use serde_json::json;

use support::*;

fn in_an_hour() -> String {
    (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string()
}

on_both_stores!(a_member_grants_a_delegation_and_revokes_it_from_the_page);
async fn a_member_grants_a_delegation_and_revokes_it_from_the_page(kind: &str) {
    let harness = Harness::start(kind).await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let ben = harness
        .sign_in(&token("ben", "acme", &["approver"], hour()))
        .await;
    let carl = harness
        .sign_in(&token("carl", "acme", &["approver"], hour()))
        .await;
    let page = harness.get("/delegations", Some(&ana)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("No delegation yet."));
    let csrf = page.csrf();

    // Bad input and a forged form change nothing.
    let until = in_an_hour();
    let missing_end = harness
        .post(
            "/delegations",
            Some(&ana),
            &[("csrf", &csrf), ("delegate", "ben")],
        )
        .await;
    assert_eq!(missing_end.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(missing_end.body.contains("ends_at"), "{}", missing_end.body);
    let bad_date = harness
        .post(
            "/delegations",
            Some(&ana),
            &[("csrf", &csrf), ("delegate", "ben"), ("ends_at", "soon")],
        )
        .await;
    assert_eq!(bad_date.status, StatusCode::UNPROCESSABLE_ENTITY);
    let to_self = harness
        .post(
            "/delegations",
            Some(&ana),
            &[("csrf", &csrf), ("delegate", "ana"), ("ends_at", &until)],
        )
        .await;
    assert!(
        to_self.status.is_client_error(),
        "delegating to oneself: {}",
        to_self.status
    );
    let forged = harness
        .post(
            "/delegations",
            Some(&ana),
            &[("delegate", "ben"), ("ends_at", &until)],
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let owner = actor("olivia", "acme", &["owner"]);
    assert!(
        delegations::list(&harness.state.app, &owner)
            .await
            .expect("list")
            .is_empty(),
        "a refused form granted something"
    );

    let granted = harness
        .post(
            "/delegations",
            Some(&ana),
            &[("csrf", &csrf), ("delegate", "ben"), ("ends_at", &until)],
        )
        .await;
    assert_eq!(granted.status, StatusCode::SEE_OTHER, "{}", granted.body);
    let listed = delegations::list(&harness.state.app, &owner)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    let id = listed[0].id.to_string();
    assert_eq!(listed[0].delegate.as_str(), "ben");
    assert_eq!(listed[0].delegator.id.as_str(), "ana");

    let mine = harness
        .get("/delegations?notice=delegation_granted", Some(&ana))
        .await;
    assert!(mine.body.contains("The delegation was granted."));
    assert!(
        mine.body
            .contains(&format!("id=\"delegation-{id}\" data-status=\"active\""))
    );
    assert!(mine.body.contains(&format!("/delegations/{id}/revoke")));
    // The delegate sees it without a revoke button; a stranger does not see it.
    let bens = harness.get("/delegations", Some(&ben)).await;
    assert!(bens.body.contains(&format!("id=\"delegation-{id}\"")));
    assert!(!bens.body.contains(&format!("/delegations/{id}/revoke")));
    let carls = harness.get("/delegations", Some(&carl)).await;
    assert!(!carls.body.contains(&format!("id=\"delegation-{id}\"")));
    let carl_csrf = harness.csrf(&carl).await;
    let stranger = harness
        .post(
            &format!("/delegations/{id}/revoke"),
            Some(&carl),
            &[("csrf", &carl_csrf)],
        )
        .await;
    assert_eq!(stranger.status, StatusCode::NOT_FOUND);

    let revoked = harness
        .post(
            &format!("/delegations/{id}/revoke"),
            Some(&ana),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER, "{}", revoked.body);
    let after = harness.get("/delegations", Some(&ana)).await;
    assert!(
        after
            .body
            .contains(&format!("id=\"delegation-{id}\" data-status=\"revoked\""))
    );
}

on_both_stores!(a_backtest_shows_the_decisions_a_draft_changes);
async fn a_backtest_shows_the_decisions_a_draft_changes(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let ana = actor("ana", "acme", &["approver"]);
    // The refunds policy needs two approvals: one refund gets one, the other none.
    let voted = harness
        .submit(&rita, "Refund order 1", json!({ "order": 1 }))
        .await;
    harness
        .submit(&rita, "Refund order 2", json!({ "order": 2 }))
        .await;
    let written = actions::vote(
        &harness.state.app,
        &ana,
        voted,
        countersign_domain::quorum::Vote::Approve,
        None,
    )
    .await
    .expect("vote");
    // The backtest selects the range's actions from the read model: wait until it has them
    // (the page, like the API without a consistency token, reads what the model holds).
    eventually(within(Duration::from_secs(30)), async || {
        harness
            .state
            .app
            .wait_for(Projection::Actions, written.cursor)
            .await
            .map_err(|err| err.to_string())
    })
    .await;

    let approver = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;
    let refused = harness.get("/backtest", Some(&approver)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);

    let auditor = harness
        .sign_in(&token("audrey", "acme", &["auditor"], hour()))
        .await;
    let form = harness.get("/backtest", Some(&auditor)).await;
    assert_eq!(form.status, StatusCode::OK, "{}", form.body);
    assert!(!form.body.contains("id=\"backtest-report\""));
    let csrf = form.csrf();
    let from = (chrono::Utc::now() - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let to = in_an_hour();
    let one_approval = json!([{ "op": "change", "id": "refunds", "policy": {
        "name": "Refunds", "priority": 10, "criteria": {"module": "billing"},
        "requirements": {"stages": [{"name": "finance", "rules": [{"type": "any", "min_approvals": 1}]}]}
    }}])
    .to_string();

    let bad_json = harness
        .post(
            "/backtest",
            Some(&auditor),
            &[
                ("csrf", &csrf),
                ("from", &from),
                ("to", &to),
                ("changes", "[{"),
            ],
        )
        .await;
    assert_eq!(bad_json.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad_json.body.contains("changes"), "{}", bad_json.body);
    let unknown_policy = harness
        .post(
            "/backtest",
            Some(&auditor),
            &[
                ("csrf", &csrf),
                ("from", &from),
                ("to", &to),
                ("changes", r#"[{"op": "remove", "id": "nope"}]"#),
            ],
        )
        .await;
    assert!(
        unknown_policy.status.is_client_error(),
        "{}",
        unknown_policy.status
    );
    let backwards = harness
        .post(
            "/backtest",
            Some(&auditor),
            &[
                ("csrf", &csrf),
                ("from", &to),
                ("to", &from),
                ("changes", "[]"),
            ],
        )
        .await;
    assert_eq!(backwards.status, StatusCode::UNPROCESSABLE_ENTITY);

    let report = harness
        .post(
            "/backtest",
            Some(&auditor),
            &[
                ("csrf", &csrf),
                ("from", &from),
                ("to", &to),
                ("changes", &one_approval),
            ],
        )
        .await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.body);
    assert!(
        report
            .body
            .contains("data-replayed=\"2\" data-outcome-changed=\"1\""),
        "{}",
        report.body
    );
    assert!(
        report.body.contains("waiting → approved"),
        "{}",
        report.body
    );
    assert!(report.body.contains(&format!("data-action=\"{voted}\"")));
    // The draft was replayed, not recorded: the action still waits.
    let detail = actions::detail(&harness.state.app, &ana, voted)
        .await
        .expect("detail");
    assert_eq!(detail.status, ActionStatus::Pending);
}

on_both_stores!(break_glass_from_the_drawer_then_its_review);
async fn break_glass_from_the_drawer_then_its_review(kind: &str) {
    let harness = Harness::start(kind).await;
    let rita = actor("rita", "acme", &["requester"]);
    let id = harness
        .submit(&rita, "Refund order 9", json!({ "order": 9 }))
        .await;
    let bea = harness
        .sign_in(&token("bea", "acme", &["approver", "break_glass"], hour()))
        .await;
    let ana = harness
        .sign_in(&token("ana", "acme", &["approver"], hour()))
        .await;

    // Only a member holding break_glass is offered the button.
    let anas = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert_eq!(anas.status, StatusCode::OK, "{}", anas.body);
    assert!(!anas.body.contains("id=\"break-glass\""));
    let drawer = harness.get(&format!("/actions/{id}"), Some(&bea)).await;
    assert!(
        drawer.body.contains("id=\"break-glass\""),
        "{}",
        drawer.body
    );
    let csrf = drawer.csrf();

    // Without a justification, or from someone without the grant: refused, nothing changes.
    let unjustified = harness
        .post(
            &format!("/actions/{id}/break-glass"),
            Some(&bea),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(unjustified.status, StatusCode::UNPROCESSABLE_ENTITY);
    let ana_csrf = anas.csrf();
    let ungranted = harness
        .post(
            &format!("/actions/{id}/break-glass"),
            Some(&ana),
            &[("csrf", &ana_csrf), ("justification", "hurry")],
        )
        .await;
    assert_eq!(ungranted.status, StatusCode::FORBIDDEN);
    let owner = actor("olivia", "acme", &["owner"]);
    let still = actions::detail(&harness.state.app, &owner, id)
        .await
        .expect("detail");
    assert_eq!(still.status, ActionStatus::Pending);
    assert!(still.break_glass.is_none());

    let broken = harness
        .post(
            &format!("/actions/{id}/break-glass"),
            Some(&bea),
            &[("csrf", &csrf), ("justification", "prod is down")],
        )
        .await;
    assert_eq!(broken.status, StatusCode::SEE_OTHER, "{}", broken.body);
    let detail = actions::detail(&harness.state.app, &owner, id)
        .await
        .expect("detail");
    assert!(!detail.status.is_open(), "{:?}", detail.status);
    let glass = detail.break_glass.expect("break-glass recorded");
    assert_eq!(glass.by.as_str(), "bea");
    assert_eq!(glass.justification.as_str(), "prod is down");

    // The drawer marks it and offers the review to an eligible approver, not to the breaker.
    let marked = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert!(
        marked.body.contains("id=\"break-glass-mark\""),
        "{}",
        marked.body
    );
    assert!(marked.body.contains("prod is down"));
    assert!(marked.body.contains("id=\"review-break-glass\""));
    let breakers = harness.get(&format!("/actions/{id}"), Some(&bea)).await;
    assert!(!breakers.body.contains("id=\"review-break-glass\""));

    let bad_verdict = harness
        .post(
            &format!("/actions/{id}/review"),
            Some(&ana),
            &[("csrf", &ana_csrf), ("verdict", "fine")],
        )
        .await;
    assert_eq!(bad_verdict.status, StatusCode::UNPROCESSABLE_ENTITY);
    let reviewed = harness
        .post(
            &format!("/actions/{id}/review"),
            Some(&ana),
            &[
                ("csrf", &ana_csrf),
                ("verdict", "disputed"),
                ("comment", "not an emergency"),
            ],
        )
        .await;
    assert_eq!(reviewed.status, StatusCode::SEE_OTHER, "{}", reviewed.body);
    let again = harness
        .post(
            &format!("/actions/{id}/review"),
            Some(&ana),
            &[("csrf", &ana_csrf), ("verdict", "upheld")],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    let detail = actions::detail(&harness.state.app, &owner, id)
        .await
        .expect("detail");
    let review = detail
        .break_glass
        .and_then(|glass| glass.review)
        .expect("review recorded");
    assert_eq!(review.by.as_str(), "ana");
    let after = harness.get(&format!("/actions/{id}"), Some(&ana)).await;
    assert!(after.body.contains("disputed"));
    assert!(!after.body.contains("id=\"review-break-glass\""));
}

/// The `<tr>` of action `id` in `body` (up to its end), or `""` when it is not listed.
fn row_of<'a>(body: &'a str, id: &str) -> &'a str {
    let start = format!("<tr data-id=\"{id}\"");
    body.find(&start)
        .map(|at| {
            let rest = &body[at..];
            &rest[..rest.find("</tr>").unwrap_or(rest.len())]
        })
        .unwrap_or_default()
}

/// The "For me" section of an inbox page.
fn for_me(body: &str) -> &str {
    let start = body.find("id=\"mine\"").unwrap_or(0);
    let end = body.find("id=\"all\"").unwrap_or(body.len());
    body.get(start..end).unwrap_or_default()
}

on_both_stores!(the_inbox_marks_items_held_in_a_delegators_place_and_break_glass);
async fn the_inbox_marks_items_held_in_a_delegators_place_and_break_glass(kind: &str) {
    let harness = Harness::start(kind).await;
    let app = &harness.state.app;
    let rita = actor("rita", "acme", &["requester"]);
    let ana = actor("ana", "acme", &["approver"]);
    // Vic may vote on nothing himself; ana lends him her eligibility.
    let vic = harness
        .sign_in(&token("vic", "acme", &["requester"], hour()))
        .await;
    let refund = harness
        .submit(&rita, "Refund order 1", json!({ "order": 1 }))
        .await;
    let vics_own = harness
        .submit(
            &actor("vic", "acme", &["requester"]),
            "Refund order 2",
            json!({ "order": 2 }),
        )
        .await;
    let glassed = harness
        .submit(&rita, "Refund order 3", json!({ "order": 3 }))
        .await;
    let granted = delegations::grant(
        app,
        &ana,
        countersign_domain::UserId::parse("vic").expect("user"),
        None,
        chrono::Utc::now() + chrono::Duration::hours(1),
    )
    .await
    .expect("granted");

    // "For me" lists ana's item as hers, without a checkbox (a row's vote is one's own); never
    // vic's own request.
    eventually(within(Duration::from_secs(30)), async || {
        let page = harness.get("/inbox", Some(&vic)).await;
        let mine = for_me(&page.body);
        let row = row_of(mine, &refund.to_string());
        if !row.contains("data-on-behalf-of=\"ana\">for ana</span>") {
            return Err(format!("not marked for ana yet: {mine}"));
        }
        assert!(!row.contains("form=\"bulk\""), "{row}");
        assert_eq!(row_of(mine, &vics_own.to_string()), "", "{mine}");
        Ok(())
    })
    .await;

    // Its drawer offers a vote in ana's place (none on vic's own request); the ballot is hers,
    // cast by vic.
    let drawer = harness.get(&format!("/actions/{refund}"), Some(&vic)).await;
    assert!(
        drawer.body.contains("id=\"vote-for-ana\""),
        "{}",
        drawer.body
    );
    assert!(!drawer.body.contains("id=\"vote-form\""), "{}", drawer.body);
    let own = harness
        .get(&format!("/actions/{vics_own}"), Some(&vic))
        .await;
    assert!(!own.body.contains("vote-for-"), "{}", own.body);
    let csrf = drawer.csrf();
    let cast = harness
        .post(
            &format!("/actions/{refund}/vote"),
            Some(&vic),
            &[
                ("csrf", &csrf),
                ("on_behalf_of", "ana"),
                ("vote", "approve"),
                ("comment", "ana is away"),
            ],
        )
        .await;
    assert_eq!(cast.status, StatusCode::SEE_OTHER, "{}", cast.body);
    let detail = actions::detail(app, &actor("olivia", "acme", &["owner"]), refund)
        .await
        .expect("detail");
    let ballots = &detail.stages[0].votes;
    assert_eq!(ballots.len(), 1, "{ballots:?}");
    assert_eq!(ballots[0].voter.as_str(), "ana");
    assert_eq!(
        ballots[0].ballot.cast_by.as_ref().map(|by| by.as_str()),
        Some("vic")
    );
    let again = harness.get(&format!("/actions/{refund}"), Some(&vic)).await;
    assert!(
        !again.body.contains("id=\"vote-for-ana\""),
        "{}",
        again.body
    );

    // Approved by break-glass: every listing marks it, with its review.
    actions::break_glass(
        app,
        &actor("bea", "acme", &["break_glass"]),
        glassed,
        countersign_domain::Comment::parse("refunds are stuck").expect("comment"),
    )
    .await
    .expect("broken");
    eventually(within(Duration::from_secs(30)), async || {
        let page = harness.get("/inbox?status=all", Some(&vic)).await;
        let row = row_of(&page.body, &glassed.to_string());
        if !row.contains("class=\"tag break-glass\" data-review=\"pending\"") {
            return Err(format!("not marked break-glass yet: {row}"));
        }
        assert!(row.contains("Approved alone by bea"), "{row}");
        assert!(
            !row_of(&page.body, &refund.to_string()).contains("break-glass"),
            "{}",
            page.body
        );
        Ok(())
    })
    .await;

    // Once revoked, nothing of ana's is vic's.
    delegations::revoke(app, &ana, granted.value.id)
        .await
        .expect("revoked");
    eventually(within(Duration::from_secs(30)), async || {
        let page = harness.get("/inbox", Some(&vic)).await;
        if for_me(&page.body).contains("Nothing waits for your vote.") {
            return Ok(());
        }
        Err(format!("still listed: {}", for_me(&page.body)))
    })
    .await;
}

on_both_stores!(a_skipped_stage_shows_as_skipped_in_the_drawer);
async fn a_skipped_stage_shows_as_skipped_in_the_drawer(kind: &str) {
    let harness = Harness::start(kind).await;
    let app = &harness.state.app;
    let owner = actor("olivia", "acme", &["owner"]);
    let draft: countersign_domain::tenant::PolicyDraft = serde_json::from_value(json!({
        "name": "Reviewed refunds", "priority": 100, "criteria": {"module": "billing"},
        "requirements": {"stages": [
            {"name": "approval", "rules": [{"type": "any", "min_approvals": 1}]},
            {"name": "review", "optional": true,
             "skip_when": {"type": "role", "role": "owner", "min_approvals": 1},
             "rules": [{"type": "role", "role": "reviewer", "min_approvals": 1}]}
        ]},
    }))
    .expect("policy");
    countersign_app::policies::create(
        app,
        &owner,
        countersign_domain::PolicyId::parse("reviewed").expect("id"),
        draft,
    )
    .await
    .expect("policy created");
    let rita = actor("rita", "acme", &["requester"]);
    let skipped = harness
        .submit(&rita, "Refund order 7", json!({ "order": 7 }))
        .await;
    let reviewed = harness
        .submit(&rita, "Refund order 8", json!({ "order": 8 }))
        .await;
    let voted = actions::vote(
        app,
        &owner,
        skipped,
        countersign_domain::quorum::Vote::Approve,
        None,
    )
    .await
    .expect("voted");
    assert_eq!(voted.value.status, ActionStatus::Approved);
    for (by, roles) in [("ann", "approver"), ("rob", "reviewer")] {
        actions::vote(
            app,
            &actor(by, "acme", &[roles]),
            reviewed,
            countersign_domain::quorum::Vote::Approve,
            None,
        )
        .await
        .expect("voted");
    }

    let olivia = harness
        .sign_in(&token("olivia", "acme", &["owner"], hour()))
        .await;
    let drawer = harness
        .get(&format!("/actions/{skipped}"), Some(&olivia))
        .await;
    assert_eq!(drawer.status, StatusCode::OK, "{}", drawer.body);
    assert!(
        drawer
            .body
            .contains("class=\"stage stage-approved\" aria-label=\"Stage 1\""),
        "{}",
        drawer.body
    );
    assert!(
        drawer
            .body
            .contains("class=\"stage stage-skipped\" aria-label=\"Stage 2\""),
        "{}",
        drawer.body
    );
    assert!(
        drawer
            .body
            .contains("id=\"stage-2-skipped\">Skipped, not voted on: the previous stage"),
        "{}",
        drawer.body
    );
    // Stage 2 reads as not required, never as met.
    let stage_two = &drawer.body[drawer.body.find("aria-label=\"Stage 2\"").expect("stage 2")..];
    let stage_two = &stage_two[..stage_two.find("</section>").expect("end")];
    assert!(!stage_two.contains("✓ met"), "{stage_two}");
    assert!(stage_two.contains("not required"), "{stage_two}");

    // Both stages voted on: both approved, nothing skipped.
    let full = harness
        .get(&format!("/actions/{reviewed}"), Some(&olivia))
        .await;
    assert!(
        full.body
            .contains("class=\"stage stage-approved\" aria-label=\"Stage 2\""),
        "{}",
        full.body
    );
    assert!(!full.body.contains("stage-skipped"), "{}", full.body);
}
