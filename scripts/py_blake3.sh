#!/usr/bin/env bash
# Runs a Python script of this folder (the first argument) in a virtual environment with the
# `blake3` package from PyPI, created on first use, so the tests that call it need nothing
# installed by hand. The environment lives in $COUNTERSIGN_PY_VENV, default target/py-blake3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${COUNTERSIGN_PY_VENV:-$here/../target/py-blake3}"
if ! "$venv/bin/python" -c 'import blake3' >/dev/null 2>&1; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'blake3>=0.4,<2' >&2
fi
script="$1"
shift
exec "$venv/bin/python" "$here/$script" "$@"
