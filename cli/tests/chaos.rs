//! Chaos in the gate (issue 18): `make chaos`'s program (bench/src/chaos.rs, compiled in here as
//! it is) for one round of each fault under a small load — the worker and the api process
//! SIGKILLed and restarted, PostgreSQL stopped and started, NATS restarted, PostgreSQL paused
//! with SIGSTOP — on a PostgreSQL cluster and a NATS server of its own (never the shared ones on
//! 5432 and 4222). It asserts properties, never timings: nothing acknowledged is missing from
//! the log, nothing executed twice and no key delivered more often than attempted, projections
//! equal a rebuild, `verify --decisions --published-heads` passes, writes become readable again
//! after each fault, no 5xx but 503 while PostgreSQL is up, no request left unanswered, and
//! while PostgreSQL is away the service says so: 503 `store_unavailable`, no other 5xx.

#[path = "../../bench/src/chaos.rs"]
#[expect(
    dead_code,
    reason = "the full run and the bench's command are make chaos's, not the test's"
)]
mod chaos;

use std::path::PathBuf;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[expect(clippy::print_stderr, reason = "the table, shown with --nocapture")]
async fn one_round_of_every_fault_under_load_loses_and_duplicates_nothing() {
    let settings = chaos::ChaosSettings::short(PathBuf::from(env!("CARGO_BIN_EXE_countersign")));
    let rounds = match chaos::run(settings).await {
        Ok(rounds) => rounds,
        Err(err) => panic!("the chaos run could not be carried out: {err:#}"),
    };
    let table = chaos::table(&rounds);
    eprintln!("{table}");
    assert_eq!(rounds.len(), 1, "{table}");
    let round = &rounds[0];
    assert!(
        round.acknowledged > 0 && round.executed > 0,
        "the load did nothing:\n{table}"
    );
    assert_eq!(
        round.recovery.len(),
        5,
        "every fault was injected:\n{table}"
    );
    let failures = round.failures(true);
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
}
