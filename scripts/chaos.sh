#!/usr/bin/env bash
# `make chaos`: the service under mixed load (submit, vote, bulk vote, execute; about 200
# requests/s) while its parts fail, round after round (bench/src/chaos.rs says what and checks
# what). It runs on a PostgreSQL cluster and a NATS server of its own, created in a temporary
# directory on free ports (55432 and 54222 or the next free ones) and removed afterwards, so the
# servers on 5432 and 4222 that other work uses are never restarted or paused. Loopback only,
# 10 to 20 minutes on the two-core host; CHAOS_ARGS=--short runs the gate's one-round variant.
# Needs PostgreSQL's server programs (the newest /usr/lib/postgresql/*/bin, or
# $COUNTERSIGN_PG_BIN) and nats-server (scripts/services.sh installs both).
set -euo pipefail
cd "$(dirname "$0")/.."
# The release build, as `make bench` uses (and builds once for both): at 200 requests/s the
# debug build spends the two cores on itself and sheds load. The gate's one-round variant
# (cli/tests/chaos.rs) runs the debug build the tests use.
cargo build --release -q -p countersign -p countersign-bench
exec target/release/countersign-bench chaos ${CHAOS_ARGS:-}
