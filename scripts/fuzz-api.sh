#!/usr/bin/env bash
# `make fuzz-api`: schemathesis (from PyPI, into target/fuzz-venv) against the served
# /openapi.json of a demo instance, with every check (`--checks all`), once per role: an owner
# (olivia), a requester (rita) and an auditor (audrey). Each run is bounded by FUZZ_SECONDS
# (default 300, spent in full) and FUZZ_EXAMPLES per operation and pass (default 25);
# FUZZ_USERS picks fewer of the three; FUZZ_READY_SECONDS (default 180) bounds the wait for the
# served instance to be ready. Fails when any run finds anything:
# a 5xx, a response that does not match the document, an undocumented status, a schema-valid
# request refused or a schema-invalid one accepted, or a refused request (4xx) that changed the
# log (`refusal_changes_nothing`, scripts/fuzz_hooks.py, which schemathesis.toml loads). The few
# rules the document cannot state are allowed in schemathesis.toml, each with its reason.
# Loopback only.
#
# FUZZ_SEED makes a run repeatable (hypothesis's seed, deterministic generation); COUNTERSIGN_BIN
# names an already built binary (the gate's test, cli/tests/fuzz_gate.rs, runs this script with
# both, as the owner only, for about a minute and a half).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-300}
examples=${FUZZ_EXAMPLES:-25}
# How long the served instance may take to answer /readyz (a busy host takes many seconds).
ready_seconds=${FUZZ_READY_SECONDS:-180}
venv=target/fuzz-venv
# Created once, under a lock: concurrent callers wait for one environment instead of racing.
if [ ! -x "$venv/bin/st" ]; then
  mkdir -p target
  exec 9>"$venv.lock"
  flock 9
  if [ ! -x "$venv/bin/st" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5'
  fi
  exec 9>&-
fi
# FUZZ_EXCLUDE_CHECKS leaves checks out (comma-separated schemathesis check names);
# FUZZ_EXCLUDE_OPERATIONS leaves operations out ("METHOD /path" names separated by ';').
excluded=()
if [ -n "${FUZZ_EXCLUDE_CHECKS:-}" ]; then
  excluded=(--exclude-checks "$FUZZ_EXCLUDE_CHECKS")
fi
IFS=';' read -r -a operations <<<"${FUZZ_EXCLUDE_OPERATIONS:-}"
for operation in "${operations[@]}"; do
  [ -n "$operation" ] && excluded+=(--exclude-name "$operation")
done
seeded=()
if [ -n "${FUZZ_SEED:-}" ]; then
  seeded=(--seed "$FUZZ_SEED" --generation-deterministic)
fi
bin=${COUNTERSIGN_BIN:-}
if [ -z "$bin" ]; then
  cargo build -q -p countersign
  bin=./target/debug/countersign
fi
data=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$data"' EXIT
env -u DATABASE_URL "$bin" demo --data-dir "$data" --log-format text >"$data/demo.txt" 2>/dev/null
# Served on a random port, ready when /readyz answers: a busy host (the gate runs beside other
# test binaries) may take many seconds; a port someone else holds makes the server exit, and
# another port is tried. Never fuzzes a server that is not ready.
ready=
for attempt in 1 2 3; do
  port=$((10000 + RANDOM % 22000)) # below the ephemeral ports (32768 up) outgoing connections take
  env -u DATABASE_URL "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" --log-format text 2>"$data/serve.log" &
  server=$!
  deadline=$((SECONDS + ready_seconds))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$server" 2>/dev/null; do
    if curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
      ready=1
      break
    fi
    sleep 0.2
  done
  [ -n "$ready" ] && break
  if kill -0 "$server" 2>/dev/null; then
    echo "fuzz-api: the server on port $port was not ready within ${ready_seconds}s; its log:" >&2
    cat "$data/serve.log" >&2
    exit 1
  fi
  echo "fuzz-api: the server on port $port exited (attempt $attempt); its log:" >&2
  cat "$data/serve.log" >&2
  server=
done
if [ -z "$ready" ]; then
  echo "fuzz-api: no server became ready" >&2
  exit 1
fi

failed=()
users=${FUZZ_USERS:-olivia rita audrey}
for user in $users; do
  token=$(awk -v user="$user" '$1 == user { print $4 }' "$data/demo.txt")
  if [ -z "$token" ]; then
    echo "fuzz-api: the demo printed no token for $user" >&2
    exit 1
  fi
  role=$(awk -v user="$user" '$1 == user { print $3 }' "$data/demo.txt")
  echo "== schemathesis as $user ($role): --checks all, $examples examples, ${seconds}s"
  code=0
  # `--max-time` spends the budget on the phases in turn and ends the run with its report;
  # `timeout` is the backstop should it not stop. One worker: with two threads, hypothesis's
  # `ast.parse` on Python 3.11 fails now and then ("AST constructor recursion depth mismatch").
  # The hooks' check reads the log's head as this user (scripts/fuzz_hooks.py).
  COUNTERSIGN_FUZZ_URL="http://127.0.0.1:$port" COUNTERSIGN_FUZZ_TOKEN="$token" \
    timeout "$((seconds + 60))" "$venv/bin/st" --config-file schemathesis.toml run \
    "http://127.0.0.1:$port/openapi.json" \
    --header "Authorization: Bearer $token" \
    --checks all \
    --max-examples "$examples" \
    --max-time "$seconds" \
    --workers 1 "${seeded[@]}" "${excluded[@]}" || code=$?
  if [ "$code" -eq 124 ]; then
    echo "fuzz-api: the run as $user did not stop within ${seconds}s" >&2
  fi
  if [ "$code" -ne 0 ]; then
    failed+=("$user")
  fi
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz-api: findings (or an unfinished run) as: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz-api: nothing found as: $users"
