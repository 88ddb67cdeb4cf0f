#!/usr/bin/env bash
# Runs scripts/webhook_receiver.py in a virtual environment of its own (created on first use,
# with the `blake3` package from PyPI), so the test that calls it needs nothing installed by hand.
# The environment lives in $COUNTERSIGN_PY_VENV, default target/py-blake3 (shared with
# scripts/merkle_check.sh).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${COUNTERSIGN_PY_VENV:-$here/../target/py-blake3}"
if ! "$venv/bin/python" -c 'import blake3' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'blake3>=0.4,<2' >&2
fi
exec "$venv/bin/python" "$here/webhook_receiver.py" "$@"
