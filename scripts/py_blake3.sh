#!/usr/bin/env bash
# The tests' one Python virtual environment: target/py-blake3 (or $COUNTERSIGN_PY_VENV), with
# the `blake3` package from PyPI, created on first use (needs python3 and python3-venv, which
# scripts/services.sh installs) so that the tests that call Python need nothing set up by hand.
#
#   py_blake3.sh                  creates the environment when missing or broken
#   py_blake3.sh SCRIPT ARGS...   and runs SCRIPT (a Python file of this folder) in it
#
# Creation holds a lock, so concurrent callers wait for one environment instead of racing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${COUNTERSIGN_PY_VENV:-$here/../target/py-blake3}"
ready() { "$venv/bin/python" -c 'import blake3' >/dev/null 2>&1; }
if ! ready; then
  mkdir -p "$(dirname "$venv")"
  exec 9>"$venv.lock"
  flock 9
  if ! ready; then
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'blake3>=0.4,<2' >&2
  fi
  exec 9>&-
fi
[ "$#" -gt 0 ] || exit 0
script="$1"
shift
exec "$venv/bin/python" "$here/$script" "$@"
