#!/usr/bin/env bash
# Runs scripts/merkle_check.py with `blake3` available (see scripts/py_blake3.sh).
exec "$(dirname "$0")/py_blake3.sh" merkle_check.py "$@"
