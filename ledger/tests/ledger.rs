//! The ledger against real stores: every test runs on a fresh PostgreSQL database and on a fresh
//! SQLite file, except where a test is about PostgreSQL's concurrency alone.
#![expect(
    clippy::expect_used,
    reason = "a test fails loudly where its setup breaks"
)]

mod fixtures;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use countersign_domain::action::{Action, ActionEvent, ActionStatus};
use countersign_ledger::on_both_stores;
use countersign_ledger::testing::{TestStore, eventually, readable_log, within};
use countersign_ledger::{LedgerError, LogCursor, LoggedEvent, RetryPolicy};
use fixtures::*;
use serde_json::json;

/// The whole log once the event at `position` is readable. On PostgreSQL the readable horizon is
/// the oldest transaction running anywhere on the server (other tests' included), so a reader may
/// have to wait for it, as a tailer would.
async fn read_through(store: &TestStore, position: i64) -> Vec<LoggedEvent> {
    eventually(within(Duration::from_secs(60)), async || {
        let all = readable_log(&store.ledger).await;
        if all.iter().any(|event| event.cursor.position == position) {
            Ok(all)
        } else {
            Err(format!("position {position} never became readable"))
        }
    })
    .await
}

// ------------------------------------------------------------------ commands and positions

on_both_stores!(
    a_command_appends_its_events_with_positions_and_metadata,
    commands_append
);
async fn commands_append(store: &TestStore) {
    let id = new_id();
    let committed = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("submitted");
    assert_eq!(committed.events.len(), 1);
    assert_eq!(committed.events[0].sequence, 1);
    assert_eq!(
        committed.aggregate.state().map(|s| s.status),
        Some(ActionStatus::Pending)
    );

    let voted = store
        .ledger
        .execute::<Action>(
            &id,
            vote(approver("ana"), countersign_domain::quorum::Vote::Approve),
            &metadata("ana"),
        )
        .await
        .expect("voted");
    assert_eq!(
        voted.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [2, 3, 4]
    );
    assert!(
        voted
            .events
            .windows(2)
            .all(|w| w[0].position < w[1].position)
    );
    assert!(voted.events[0].position > committed.events[0].position);

    let log = read_through(store, voted.last_position().expect("position")).await;
    assert_eq!(log.len(), 4);
    assert_eq!(log[0].tenant, "acme");
    assert_eq!(log[0].aggregate_type, "action");
    assert_eq!(log[0].event_type, "ActionSubmitted");
    assert_eq!(log[0].event_version, "1");
    assert_eq!(log[1].metadata["actor"], "ana");
    assert_eq!(log[1].metadata["correlation_id"], "corr-ledger");
    assert_eq!(log.last().map(|e| e.cursor.position), voted.last_position());
    let decoded: Vec<ActionEvent> = log
        .iter()
        .map(|e| e.decode::<Action>().expect("decodes"))
        .collect();
    assert_eq!(Action::from_events(&decoded), voted.aggregate);
    assert_eq!(store.ledger.log_head().await.expect("head"), log[3].cursor);

    let (loaded, sequence) = store.ledger.load::<Action>(&id).await.expect("load");
    assert_eq!((loaded, sequence), (voted.aggregate, 4));
}

on_both_stores!(a_refused_command_records_nothing, refused_records_nothing);
async fn refused_records_nothing(store: &TestStore) {
    let id = new_id();
    let submitted = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("submitted");
    let refused = store
        .ledger
        .execute::<Action>(
            &id,
            vote(
                principal("rita", &["approver"]),
                countersign_domain::quorum::Vote::Approve,
            ),
            &metadata("rita"),
        )
        .await
        .expect_err("self approval refused");
    assert!(
        matches!(&refused, LedgerError::Rejected(e) if e.code() == "self_approval_forbidden"),
        "{refused}"
    );
    let again = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect_err("repeat");
    assert!(
        matches!(&again, LedgerError::Rejected(e) if e.code() == "already_submitted"),
        "{again}"
    );
    assert_eq!(
        read_through(store, submitted.last_position().expect("position"))
            .await
            .len(),
        1
    );
}

on_both_stores!(
    creations_in_a_batch_answer_as_each_would_alone,
    creations_together
);
/// `execute_creations`: new streams start together (one statement on PostgreSQL: one
/// transaction id), while a stream that exists already and a repeat within the batch are
/// answered as `execute` would answer them, and nothing is recorded twice.
async fn creations_together(store: &TestStore) {
    let (existing, first, second) = (new_id(), new_id(), new_id());
    store
        .ledger
        .execute::<Action>(&existing, submit(existing, any_of(1)), &metadata("rita"))
        .await
        .expect("submitted before");
    let answers = store
        .ledger
        .execute_creations::<Action>(vec![
            (&first, submit(first, any_of(1)), metadata("rita")),
            (&existing, submit(existing, any_of(1)), metadata("rita")),
            (&second, submit(second, any_of(1)), metadata("rita")),
            (&first, submit(first, any_of(1)), metadata("rita")),
        ])
        .await;
    assert_eq!(answers.len(), 4);
    let refused = |index: usize| match &answers[index] {
        Err(LedgerError::Rejected(err)) => err.code(),
        other => panic!("answer {index}: {other:?}"),
    };
    assert_eq!(refused(1), "already_submitted");
    assert_eq!(refused(3), "already_submitted");
    let committed = |index: usize| match &answers[index] {
        Ok(committed) => committed,
        other => panic!("answer {index}: {other:?}"),
    };
    let (one, two) = (committed(0), committed(2));
    for done in [one, two] {
        assert_eq!(done.events.len(), 1);
        assert_eq!(done.events[0].sequence, 1);
        assert_eq!(
            done.aggregate.state().map(|s| s.status),
            Some(ActionStatus::Pending)
        );
    }
    if store.ledger.kind() == "postgres" {
        assert_eq!(
            one.events[0].txid, two.events[0].txid,
            "the new streams were started by one statement"
        );
    }
    let last = one.events[0].position.max(two.events[0].position);
    let log = read_through(store, last).await;
    let submitted: Vec<(&str, i64)> = log
        .iter()
        .map(|event| (event.aggregate_id.as_str(), event.cursor.position))
        .collect();
    assert_eq!(submitted.len(), 3, "{submitted:?}");
    for (id, done) in [(first, one), (second, two)] {
        assert!(
            submitted.contains(&(id.to_string().as_str(), done.events[0].position)),
            "{id} at {} in {submitted:?}",
            done.events[0].position
        );
        let (loaded, sequence) = store.ledger.load::<Action>(&id).await.expect("load");
        assert_eq!((loaded, sequence), (done.aggregate.clone(), 1));
    }
}

// ------------------------------------------------------------------ append-only

on_both_stores!(events_cannot_be_updated_or_deleted, append_only);
async fn append_only(store: &TestStore) {
    let id = new_id();
    let submitted = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("submitted");
    for statement in [
        "UPDATE events SET event_type = 'ActionApproved'",
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
    ] {
        let err = raw_execute(store, statement).await.expect_err(statement);
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    if store.ledger.kind() == "postgres" {
        let err = raw_execute(store, "TRUNCATE events")
            .await
            .expect_err("truncate");
        assert!(
            err.to_string().contains("append-only: TRUNCATE refused"),
            "{err}"
        );
    }
    let log = read_through(store, submitted.last_position().expect("position")).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].event_type, "ActionSubmitted");
}

// ------------------------------------------------------------------ the gap-safe log

/// A transaction that appended first but commits last must not be skipped by a reader that
/// already saw a later transaction's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_commit_is_never_skipped() {
    let store = TestStore::postgres().await.expect("test database");
    let pool = pg_pool(&store);

    // A: appends and stays open.
    let mut a = pool.begin().await.expect("begin A");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('probe', 'slow', 1, 'Probed', '1', '{}', '{\"tenant\": \"acme\"}')",
    )
    .execute(&mut *a)
    .await
    .expect("A appends");

    // B: appends and commits while A is open.
    let id = new_id();
    let b = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("B commits");
    let b_position = b.last_position().expect("position");

    // The reader returns neither: B is behind A in log order, and A is not finished.
    assert!(
        store
            .ledger
            .read_log(LogCursor::START, 100)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        store.ledger.log_head().await.expect("head"),
        LogCursor::START
    );

    a.commit().await.expect("commit A");
    let log = read_through(&store, b_position).await;
    assert_eq!(
        log.iter()
            .map(|e| e.aggregate_id.as_str())
            .collect::<Vec<_>>(),
        ["slow", id.to_string().as_str()]
    );
    assert!(
        log[0].cursor.position < b_position,
        "A took the smaller position"
    );
    assert!(log[0].cursor < log[1].cursor);
}

/// A transaction that took its id first but appends last is read first, by every reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn log_order_follows_transactions_not_positions() {
    let store = TestStore::postgres().await.expect("test database");
    let pool = pg_pool(&store);
    let mut early = pool.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *early)
        .await
        .expect("take an id");

    let id = new_id();
    let late = store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("commits");
    assert!(
        store
            .ledger
            .read_log(LogCursor::START, 100)
            .await
            .expect("read")
            .is_empty()
    );

    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('probe', 'early', 1, 'Probed', '1', '{}', '{\"tenant\": \"acme\"}')",
    )
    .execute(&mut *early)
    .await
    .expect("appends last");
    early.commit().await.expect("commit");

    let log = read_through(&store, late.last_position().expect("position")).await;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].aggregate_id, "early");
    assert!(
        log[0].cursor.position > log[1].cursor.position,
        "the earlier transaction has the larger position"
    );
}

on_both_stores!(
    sixty_four_writers_are_read_exactly_once_in_one_order,
    many_writers
);
async fn many_writers(store: &TestStore) {
    const WRITERS: usize = 64;
    const ACTIONS_PER_WRITER: usize = 4;
    let total = WRITERS * ACTIONS_PER_WRITER * 2;

    // Tailers with different batch sizes read while the writers write (sharing the ledger's
    // cache of the newest events as the service's tailers do).
    let tailers: Vec<_> = [37u32, 5, 100]
        .into_iter()
        .map(|batch| {
            let ledger = store.ledger.clone();
            tokio::spawn(async move {
                let mut waker = ledger.log_waker().await.expect("waker");
                let mut cursor = LogCursor::START;
                let mut seen = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
                while seen.len() < total && tokio::time::Instant::now() < deadline {
                    let read = ledger.read_log(cursor, batch).await.expect("read");
                    if let Some(last) = read.last() {
                        assert!(last.cursor > cursor, "the cursor only moves forward");
                        assert!(read.len() <= batch as usize);
                        cursor = last.cursor;
                        seen.extend(read);
                    } else {
                        waker.wait(Duration::from_millis(50)).await;
                    }
                }
                seen
            })
        })
        .collect();

    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let ledger = store.ledger.clone();
            tokio::spawn(async move {
                for _ in 0..ACTIONS_PER_WRITER {
                    let id = new_id();
                    ledger
                        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
                        .await
                        .expect("submit");
                    ledger
                        .execute::<Action>(
                            &id,
                            cancel(principal("rita", &["requester"])),
                            &metadata("rita"),
                        )
                        .await
                        .expect("cancel");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }

    let mut tailed = Vec::new();
    for tailer in tailers {
        let seen = tailer.await.expect("tailer");
        if !tailed.is_empty() {
            assert!(
                seen == tailed,
                "every tailer reads the same events in the same order"
            );
        }
        tailed = seen;
    }
    let keys: Vec<(String, i64)> = tailed
        .iter()
        .map(|e| (e.aggregate_id.clone(), e.sequence))
        .collect();
    assert_eq!(keys.len(), total, "every event read");
    assert_eq!(
        keys.iter().collect::<HashSet<_>>().len(),
        total,
        "no event read twice"
    );
    let positions: Vec<i64> = tailed.iter().map(|e| e.cursor.position).collect();
    assert_eq!(positions.iter().collect::<HashSet<_>>().len(), total);

    // Within an aggregate, sequences arrive in order.
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &tailed {
        let previous = last
            .insert(&event.aggregate_id, event.sequence)
            .unwrap_or(0);
        assert_eq!(event.sequence, previous + 1);
    }

    // A reader starting afterwards sees exactly the same order.
    let last = tailed.last().expect("events").cursor.position;
    let afterwards: Vec<_> = read_through(store, last)
        .await
        .iter()
        .map(|e| e.cursor)
        .collect();
    assert_eq!(
        afterwards,
        tailed.iter().map(|e| e.cursor).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------ concurrency on one aggregate

on_both_stores!(
    sixteen_concurrent_voters_all_land_and_decide_once,
    concurrent_voters
);
async fn concurrent_voters(store: &TestStore) {
    const VOTERS: usize = 16;
    let id = new_id();
    store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(VOTERS as u32)), &metadata("rita"))
        .await
        .expect("submit");
    // On PostgreSQL the committer is held until every vote waits for it: all were decided on
    // the same state, so all but one are known to conflict and be decided again.
    let probe = store.ledger.commit_probe();
    if let Some(probe) = &probe {
        probe.hold();
    }
    let voters: Vec<_> = (0..VOTERS)
        .map(|i| {
            let ledger = store.ledger.clone();
            tokio::spawn(async move {
                let voter = approver(&format!("voter-{i}"));
                ledger
                    .execute::<Action>(
                        &id,
                        vote(voter, countersign_domain::quorum::Vote::Approve),
                        &metadata(&format!("voter-{i}")),
                    )
                    .await
            })
        })
        .collect();
    if let Some(probe) = &probe {
        probe
            .until_waiting(VOTERS, Duration::from_secs(60))
            .await
            .expect("every vote waits for the held committer");
        probe.release();
    }
    let (mut attempts, mut last) = (0, 0);
    for voter in voters {
        let committed = voter.await.expect("task").expect("every vote lands");
        attempts += committed.attempts;
        last = last.max(committed.last_position().expect("position"));
    }

    let log = read_through(store, last).await;
    let sequences: Vec<i64> = log.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=(VOTERS as i64 + 3)).collect::<Vec<_>>(),
        "dense sequences"
    );
    let count = |event_type: &str| log.iter().filter(|e| e.event_type == event_type).count();
    assert_eq!(count("VoteCast"), VOTERS);
    assert_eq!(count("ActionApproved"), 1, "decided exactly once");
    assert_eq!(
        log.last().map(|e| e.event_type.as_str()),
        Some("ActionApproved")
    );
    let (action, _) = store.ledger.load::<Action>(&id).await.expect("load");
    assert_eq!(
        action.state().map(|s| s.status),
        Some(ActionStatus::Approved)
    );
    if probe.is_some() {
        assert!(
            attempts >= 2 * VOTERS as u32 - 1,
            "every vote but one conflicted and was retried ({attempts} attempts)"
        );
    }
}

on_both_stores!(
    a_conflict_outliving_the_retries_is_reported_and_records_nothing,
    conflicts_reported
);
async fn conflicts_reported(store: &TestStore) {
    const VOTERS: usize = 16;
    let ledger = store.ledger.clone().with_retry(RetryPolicy {
        attempts: 1,
        ..RetryPolicy::default()
    });
    let id = new_id();
    let submitted = ledger
        .execute::<Action>(
            &id,
            submit(id, any_of(VOTERS as u32 + 1)),
            &metadata("rita"),
        )
        .await
        .expect("submit");
    // On PostgreSQL every vote is decided on the same state before any commits (see
    // `concurrent_voters`), so exactly one lands.
    let probe = ledger.commit_probe();
    if let Some(probe) = &probe {
        probe.hold();
    }
    let voters: Vec<_> = (0..VOTERS)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let voter = approver(&format!("voter-{i}"));
                ledger
                    .execute::<Action>(
                        &id,
                        vote(voter, countersign_domain::quorum::Vote::Approve),
                        &metadata("v"),
                    )
                    .await
            })
        })
        .collect();
    if let Some(probe) = &probe {
        probe
            .until_waiting(VOTERS, Duration::from_secs(60))
            .await
            .expect("every vote waits for the held committer");
        probe.release();
    }
    let (mut landed, mut conflicted) = (0, 0);
    let mut last = submitted.last_position().expect("position");
    for voter in voters {
        match voter.await.expect("task") {
            Ok(committed) => {
                landed += 1;
                last = last.max(committed.last_position().expect("position"));
            }
            Err(LedgerError::Conflict { attempts: 1 }) => conflicted += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(landed + conflicted, VOTERS);
    if probe.is_some() {
        assert_eq!((landed, conflicted), (1, VOTERS - 1));
    }
    let votes = read_through(store, last)
        .await
        .iter()
        .filter(|e| e.event_type == "VoteCast")
        .count();
    assert_eq!(
        votes, landed,
        "only the votes reported as landed were recorded"
    );
}

// ------------------------------------------------------------------ upcasting

on_both_stores!(
    an_event_stored_at_version_one_is_read_as_version_two,
    upcasting
);
async fn upcasting(store: &TestStore) {
    raw_execute(
        store,
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('counter', 'c-1', 1, 'Counted', '1', '{\"Counted\": {\"by\": 5}}', '{\"tenant\": \"acme\"}')",
    )
    .await
    .expect("a version 1 event");

    let (counter, sequence) = store
        .ledger
        .load::<Counter>("c-1")
        .await
        .expect("load upcasts");
    assert_eq!(sequence, 1);
    assert_eq!(counter.total, 5);
    assert_eq!(
        counter.units,
        vec!["items".to_owned()],
        "the upcaster filled the new field"
    );

    let counted = store
        .ledger
        .execute::<Counter>("c-1", 2, &metadata("x"))
        .await
        .expect("count on");
    let log = read_through(store, counted.last_position().expect("position")).await;
    assert_eq!(
        log.iter()
            .map(|e| e.event_version.as_str())
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    let decoded: Vec<CounterEvent> = log
        .iter()
        .map(|e| e.decode::<Counter>().expect("decode"))
        .collect();
    assert_eq!(
        decoded,
        [
            CounterEvent::Counted {
                by: 5,
                unit: "items".into()
            },
            CounterEvent::Counted {
                by: 2,
                unit: "items".into()
            }
        ]
    );
}

// ------------------------------------------------------------------ tailer locks and wake-ups

on_both_stores!(one_instance_holds_a_tailer_lock, tailer_locks);
async fn tailer_locks(store: &TestStore) {
    let mut first = store
        .ledger
        .lock_tailer("projection:inbox")
        .await
        .expect("lock")
        .expect("free");
    assert!(first.is_held().await);
    assert!(
        store
            .ledger
            .lock_tailer("projection:inbox")
            .await
            .expect("lock")
            .is_none(),
        "held elsewhere"
    );
    let other = store.ledger.lock_tailer("relay").await.expect("lock");
    assert!(other.is_some(), "other names are independent");
    first.release().await;
    // PostgreSQL frees an advisory lock when it has ended the closed session, just after.
    eventually(within(Duration::from_secs(60)), async || {
        let lock = store.ledger.lock_tailer("projection:inbox").await;
        match lock.expect("lock") {
            Some(_) => Ok(()),
            None => Err("released locks can be taken again"),
        }
    })
    .await;
}

on_both_stores!(an_append_wakes_a_waiting_tailer, wake_ups);
async fn wake_ups(store: &TestStore) {
    let mut waker = store.ledger.log_waker().await.expect("waker");
    // Polled once, the waiter is registered before the append (SQLite's in-process wake-up is
    // lost by a waiter that starts listening later); it would otherwise wait for an hour.
    let mut waiting = std::pin::pin!(waker.wait(Duration::from_secs(3600)));
    assert!(
        futures::poll!(waiting.as_mut()).is_pending(),
        "nothing appended yet"
    );
    let id = new_id();
    store
        .ledger
        .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
        .await
        .expect("submit");
    tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("woken by the append");
}

// ------------------------------------------------------------------ group commit (PostgreSQL)

/// Commands waiting for the committer together are appended by one statement (one
/// transaction), while a command that loses a race in a shared statement is decided again alone
/// without taking the others down: every command lands once, each told exactly where its events
/// went. The committer is held until every command is known to be queued, so the grouping is a
/// property of the committer, not of timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_commit_in_groups_and_losers_alone_decide_again() {
    const SUBMITTERS: usize = 96;
    const VOTERS: usize = 12;
    let store = TestStore::postgres().await.expect("test database");
    let contested = new_id();
    store
        .ledger
        .execute::<Action>(
            &contested,
            submit(contested, any_of(VOTERS as u32)),
            &metadata("rita"),
        )
        .await
        .expect("submit the contested action");

    let probe = store
        .ledger
        .commit_probe()
        .expect("PostgreSQL appends through the group committer");
    let earlier = probe.statements().len();
    probe.hold();
    let submits: Vec<_> = (0..SUBMITTERS)
        .map(|_| {
            let ledger = store.ledger.clone();
            tokio::spawn(async move {
                let id = new_id();
                ledger
                    .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
                    .await
                    .map(|committed| (id, committed.events))
            })
        })
        .collect();
    // Every voter decides on the same state (nothing commits while the committer is held), so
    // all but one of them lose the race.
    let votes: Vec<_> = (0..VOTERS)
        .map(|i| {
            let ledger = store.ledger.clone();
            tokio::spawn(async move {
                ledger
                    .execute::<Action>(
                        &contested,
                        vote(
                            approver(&format!("voter-{i}")),
                            countersign_domain::quorum::Vote::Approve,
                        ),
                        &metadata(&format!("voter-{i}")),
                    )
                    .await
                    .map(|committed| committed.events)
            })
        })
        .collect();
    probe
        .until_waiting(SUBMITTERS + VOTERS, Duration::from_secs(60))
        .await
        .expect("every command waits for the held committer");
    assert_eq!(
        probe.statements().len(),
        earlier,
        "nothing committed while held"
    );
    probe.release();

    let mut reported = BTreeMap::new();
    for submit in submits {
        let (id, events) = submit.await.expect("task").expect("every submission lands");
        for event in events {
            reported.insert(event.position, (id.to_string(), event.sequence, event.txid));
        }
    }
    for vote in votes {
        for event in vote.await.expect("task").expect("every vote lands") {
            reported.insert(
                event.position,
                (contested.to_string(), event.sequence, event.txid),
            );
        }
    }

    // One statement carried every submission and one vote per aggregate; the other votes on
    // the contested action went one per statement (lost, decided again, landed).
    let statements = probe.statements()[earlier..].to_vec();
    assert_eq!(
        statements.first(),
        Some(&(SUBMITTERS + 1)),
        "commands per statement: {statements:?}"
    );
    assert!(
        statements[1..].iter().all(|&commands| commands == 1),
        "one command per aggregate per statement: {statements:?}"
    );
    assert!(
        statements.len() > 2 * (VOTERS - 1),
        "each losing vote failed once and landed once: {statements:?}"
    );

    let last = *reported.keys().last().expect("events");
    let log = read_through(&store, last).await;
    for event in &log {
        if let Some((id, sequence, txid)) = reported.get(&event.cursor.position) {
            assert_eq!(
                (id, sequence, txid),
                (
                    &event.aggregate_id,
                    &(event.sequence as u64),
                    &event.cursor.txid
                ),
                "each command is told where its own events went"
            );
        }
    }
    let logged: HashSet<i64> = log.iter().map(|event| event.cursor.position).collect();
    assert!(reported.keys().all(|position| logged.contains(position)));

    let contested_log: Vec<&LoggedEvent> = log
        .iter()
        .filter(|event| event.aggregate_id == contested.to_string())
        .collect();
    assert_eq!(
        contested_log.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (1..=(VOTERS as i64 + 3)).collect::<Vec<_>>(),
        "the contested action's sequences stay dense"
    );
    assert_eq!(
        contested_log
            .iter()
            .filter(|e| e.event_type == "ActionApproved")
            .count(),
        1
    );

    let submissions: Vec<&LoggedEvent> = log
        .iter()
        .filter(|event| event.aggregate_id != contested.to_string())
        .collect();
    assert_eq!(submissions.len(), SUBMITTERS);
    let shared: HashSet<i64> = submissions.iter().map(|e| e.cursor.txid).collect();
    assert_eq!(shared.len(), 1, "every submission in one transaction");
    let vote_transactions: Vec<i64> = contested_log
        .iter()
        .filter(|e| e.event_type == "VoteCast")
        .map(|e| e.cursor.txid)
        .collect();
    assert_eq!(vote_transactions.len(), VOTERS);
    assert_eq!(
        vote_transactions
            .iter()
            .filter(|txid| shared.contains(txid))
            .count(),
        1,
        "one vote shared the submissions' transaction; the losers landed in their own"
    );
}

// ------------------------------------------------------------------ cached tenant streams

on_both_stores!(
    a_cached_tenant_stream_shows_writes_from_another_instance,
    cached_streams
);
async fn cached_streams(store: &TestStore) {
    use countersign_domain::tenant::{
        Settings, SettingsCommand, TenantCommandContext, TenantSettings,
    };
    let tenant = tenant("acme");
    let update = |mode: &str| SettingsCommand::UpdateSettings {
        context: TenantCommandContext {
            tenant: tenant.clone(),
            by: principal("ada", &["admin"]),
            at: chrono::Utc::now(),
            correlation_id: None,
        },
        settings: Settings {
            mode: serde_json::from_value(serde_json::json!(mode)).expect("mode"),
            ..Settings::default()
        },
    };
    // Another instance of the service, with its own cache, on the same store.
    let other = countersign_ledger::Ledger::open(&store.config)
        .await
        .expect("second handle");

    let (empty, version) = store
        .ledger
        .load::<TenantSettings>(&tenant)
        .await
        .expect("load");
    assert_eq!((empty, version), (TenantSettings::default(), 0));

    for (round, mode) in ["auto", "safe", "require_approval"].into_iter().enumerate() {
        other
            .execute::<TenantSettings>(&tenant, update(mode), &metadata("ada"))
            .await
            .expect("update");
        for _ in 0..2 {
            let (settings, version) = store
                .ledger
                .load::<TenantSettings>(&tenant)
                .await
                .expect("load");
            assert_eq!(version, round as u64 + 1, "the cache follows the stream");
            assert_eq!(
                serde_json::to_value(settings.settings.mode).expect("mode"),
                serde_json::json!(mode)
            );
            // Both of a tenant's streams by one version read: the same answers.
            let ((settings, version), (policies, policies_version)) = store
                .ledger
                .load_pair::<TenantSettings, countersign_domain::tenant::PolicySet>(
                    &tenant, &tenant,
                )
                .await
                .expect("load pair");
            assert_eq!(version, round as u64 + 1, "the pair follows the stream");
            assert_eq!(
                serde_json::to_value(settings.settings.mode).expect("mode"),
                serde_json::json!(mode)
            );
            assert_eq!((policies.list().len(), policies_version), (0, 0));
        }
    }
}

on_both_stores!(
    tailers_woken_together_read_the_store_once,
    tailers_share_reads
);
async fn tailers_share_reads(store: &TestStore) {
    let head = |events: &[LoggedEvent]| events.last().map(|e| e.cursor);
    let first = readable_log(&store.ledger).await;
    let start = head(&first).unwrap_or(LogCursor::START);
    let mut written = Vec::new();
    for _ in 0..3 {
        let id = new_id();
        let committed = store
            .ledger
            .execute::<Action>(&id, submit(id, any_of(1)), &metadata("rita"))
            .await
            .expect("submit");
        written.push(committed.last_position().expect("position"));
    }
    let last = *written.last().expect("written");
    // Wait until the new events are readable (the PostgreSQL horizon), through a separate
    // handle so that this ledger's cache is still cold.
    let other = countersign_ledger::Ledger::open(&store.config)
        .await
        .expect("second handle");
    eventually(within(Duration::from_secs(60)), async || {
        let read = other.read_log(start, 100).await.expect("read");
        let readable = read.iter().any(|e| e.cursor.position == last);
        readable.then_some(()).ok_or("never readable")
    })
    .await;

    // Five tailers at the same place, woken together, with different batch sizes.
    let before = store.ledger.log_reads();
    let reads = futures::future::join_all([100u32, 100, 2, 50, 100].map(|batch| {
        let ledger = store.ledger.clone();
        async move { ledger.read_log(start, batch).await.expect("read") }
    }))
    .await;
    let after = store.ledger.log_reads();
    assert_eq!(
        after.from_store - before.from_store,
        1,
        "one read of the store"
    );
    assert_eq!(
        after.from_cache - before.from_cache,
        4,
        "the others from the cache"
    );
    let positions =
        |events: &[LoggedEvent]| -> Vec<i64> { events.iter().map(|e| e.cursor.position).collect() };
    assert_eq!(positions(&reads[0]), written);
    for read in &reads {
        assert_eq!(read[..], reads[0][..read.len()], "the same events");
    }
    assert_eq!(positions(&reads[2]), written[..2]);

    // Reading on from inside the cached stretch is served from it; at its end, from the store.
    let second = head(&reads[2]).expect("read");
    let rest = store.ledger.read_log(second, 100).await.expect("read");
    assert_eq!(positions(&rest), written[2..]);
    assert_eq!(store.ledger.log_reads().from_store, after.from_store);
    let end = head(&reads[0]).expect("read");
    assert!(
        store
            .ledger
            .read_log(end, 100)
            .await
            .expect("read")
            .is_empty()
    );
    assert_eq!(store.ledger.log_reads().from_store, after.from_store + 1);
    // Behind the stretch: the store, and the full log as it is.
    assert_eq!(
        readable_log(&store.ledger).await.len(),
        first.len() + written.len()
    );
}

// ------------------------------------------------------------------ what is written reads back

on_both_stores!(
    an_event_that_would_not_read_back_is_never_appended,
    unreadable_events_are_refused
);
async fn unreadable_events_are_refused(store: &TestStore) {
    // Deeper than serde_json reads back (the event wraps the document in two more levels), and
    // U+0000 (PostgreSQL's jsonb refuses it; refused on SQLite too so logs can move).
    for (name, document) in [
        ("deep", nested(127)),
        ("nul in a string", json!({"note": "a\u{0}b"})),
        ("nul in a key", json!({"k\u{0}": 1})),
    ] {
        let refused = store
            .ledger
            .execute::<Notebook>("n-1", document, &metadata("x"))
            .await
            .expect_err(name);
        assert!(
            matches!(refused, LedgerError::Unreadable(_)),
            "{name}: {refused}"
        );
    }
    let (notebook, version) = store
        .ledger
        .load::<Notebook>("n-1")
        .await
        .expect("the stream reads");
    assert_eq!((notebook.notes, version), (0, 0), "nothing was appended");

    // What does read back is appended, and every reader decodes it.
    let committed = store
        .ledger
        .execute::<Notebook>("n-1", nested(100), &metadata("x"))
        .await
        .expect("a document serde_json reads back");
    let position = committed.last_position().expect("appended");
    let log = read_through(store, position).await;
    let decoded = log
        .iter()
        .map(|event| event.decode::<Notebook>().expect("decodes"))
        .collect::<Vec<_>>();
    assert_eq!(
        decoded,
        vec![NotebookEvent::Noted {
            document: nested(100)
        }]
    );
    let (notebook, _) = store.ledger.load::<Notebook>("n-1").await.expect("load");
    assert_eq!(notebook.notes, 1);
}

/// Whether the connection a query runs on is encrypted (PostgreSQL's own view of it).
const ENCRYPTED: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

async fn encrypted(pool: &sqlx::PgPool) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(ENCRYPTED).fetch_one(pool).await?)
}

/// A server on this host is reached over plain TCP (TLS on loopback cost the service a sixth of
/// its CPU) unless the URL asks for TLS: both the ledger's pool and the shared pool of the
/// tables beside it.
#[tokio::test]
async fn a_server_on_this_host_is_reached_without_tls_unless_the_url_asks() -> anyhow::Result<()> {
    let store = TestStore::postgres().await?;
    let countersign_ledger::Backend::Postgres(pool) = store.ledger.backend() else {
        anyhow::bail!("a PostgreSQL test store without a PostgreSQL pool");
    };
    let url = store.location();
    assert!(
        url.contains("127.0.0.1") || url.contains("localhost"),
        "the test server is expected on this host: {url}"
    );
    let offers_tls: String = sqlx::query_scalar("SHOW ssl").fetch_one(pool).await?;
    assert_eq!(
        offers_tls, "on",
        "the test server offers TLS (Debian's default), so a plain connection is a choice"
    );
    assert!(!encrypted(pool).await?, "the ledger's pool");
    let shared = store.config.any_pool(1).await?;
    let encrypted_shared: bool = sqlx::query_scalar(ENCRYPTED).fetch_one(&shared).await?;
    assert!(!encrypted_shared, "the shared pool");
    shared.close().await;

    let separator = if url.contains('?') { '&' } else { '?' };
    let asked = countersign_ledger::StoreConfig::Postgres {
        url: format!("{url}{separator}sslmode=require"),
    };
    let ledger = countersign_ledger::Ledger::open(&asked).await?;
    let countersign_ledger::Backend::Postgres(pool) = ledger.backend() else {
        anyhow::bail!("a PostgreSQL store without a PostgreSQL pool");
    };
    assert!(encrypted(pool).await?, "sslmode=require is kept");
    ledger.close().await;
    Ok(())
}
