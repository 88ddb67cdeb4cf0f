#!/usr/bin/env bash
# `make fuzz-api`: schemathesis (from PyPI, into target/fuzz-venv) against the served
# /openapi.json of a demo instance, for a bounded time. Fails on any 5xx or any response that
# does not match the documented schema. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-300}
examples=${FUZZ_EXAMPLES:-25}
venv=target/fuzz-venv
if [ ! -x "$venv/bin/st" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'schemathesis>=4,<5'
fi
cargo build -q -p countersign
data=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$data"' EXIT
./target/debug/countersign demo --data-dir "$data" --log-format text >"$data/demo.txt" 2>/dev/null
token=$(awk '$1 == "olivia" { print $4 }' "$data/demo.txt")
port=$((20000 + RANDOM % 20000))
./target/debug/countersign serve --data-dir "$data" --listen "127.0.0.1:$port" --log-format text 2>"$data/serve.log" &
server=$!
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
timeout "$seconds" "$venv/bin/st" run "http://127.0.0.1:$port/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,response_schema_conformance \
  --max-examples "$examples" \
  --workers 2
