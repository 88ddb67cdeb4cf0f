#!/usr/bin/env bash
# scripts/flake-hunt.sh N: runs the whole test suite N times on one build and counts failures.
#
# Starts the services as `make test` does (scripts/services.sh), builds every test target once
# (`cargo test --workspace --all-targets --no-run`), then runs each test executable of that build
# N times the way `cargo test` runs it (one executable after the other, from its package's
# directory; every executable runs even when an earlier one failed). Editing the code meanwhile
# changes nothing: the runs use the executables built at the start.
#
# At the end it prints every test that failed with how many of the N runs it failed in, and
# exits 1 when any did. Each run's output is kept under target/flake-hunt/.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${1:-}
if ! [[ $runs =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/flake-hunt.sh N   (N > 0 full runs of the test suite)" >&2
  exit 2
fi

scripts/services.sh

logs=target/flake-hunt
rm -rf "$logs"
mkdir -p "$logs"

echo "flake-hunt: building the tests once" >&2
# One line per test executable: executable, package directory, package name, label.
cargo test --workspace --all-targets --no-run --message-format=json-render-diagnostics \
  >"$logs/build.json"
python3 - "$logs/build.json" >"$logs/executables.tsv" <<'PY'
import json
import os
import sys

seen = set()
for line in open(sys.argv[1], encoding="utf-8"):
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if message.get("reason") != "compiler-artifact" or not message.get("profile", {}).get("test"):
        continue
    executable = message.get("executable")
    if not executable or executable in seen:
        continue
    seen.add(executable)
    target = message["target"]
    package = message["package_id"].split("#")[-1].split("@")[0]
    directory = os.path.dirname(message["manifest_path"])
    label = f"{package} ({'/'.join(target['kind'])} {target['name']})"
    print("\t".join([executable, directory, package, label]))
PY
executables=$(wc -l <"$logs/executables.tsv")
echo "flake-hunt: $executables test executables, $runs runs" >&2

# failures[label :: test] = number of runs in which it failed.
declare -A failures=()
for run in $(seq 1 "$runs"); do
  failed_here=0
  while IFS=$'\t' read -r executable directory package label; do
    log="$logs/run-$run-$(basename "$executable").log"
    code=0
    (cd "$directory" && CARGO_MANIFEST_DIR="$directory" CARGO_PKG_NAME="$package" "$executable") \
      >"$log" 2>&1 </dev/null || code=$?
    tests=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log")
    if [ -n "$tests" ]; then
      while IFS= read -r test; do
        key="$label :: $test"
        failures[$key]=$((${failures[$key]:-0} + 1))
        failed_here=$((failed_here + 1))
      done <<<"$tests"
    elif [ "$code" -ne 0 ]; then
      # Crashed, or failed outside any test (a panic in a harness-less target, a signal).
      key="$label :: (exited with status $code, no test marked FAILED)"
      failures[$key]=$((${failures[$key]:-0} + 1))
      failed_here=$((failed_here + 1))
    fi
  done <"$logs/executables.tsv"
  if [ "$failed_here" -eq 0 ]; then
    echo "flake-hunt: run $run/$runs: ok" >&2
  else
    echo "flake-hunt: run $run/$runs: $failed_here failed (logs in $logs/run-$run-*.log)" >&2
  fi
done

echo
if [ "${#failures[@]}" -eq 0 ]; then
  echo "flake-hunt: no failure in $runs runs of $executables test executables"
  exit 0
fi
echo "flake-hunt: failures in $runs runs (failed runs, test):"
for key in "${!failures[@]}"; do
  printf '%6s  %s\n' "${failures[$key]}/$runs" "$key"
done | sort -t/ -k1,1nr
exit 1
