#!/usr/bin/env bash
# Runs scripts/webhook_receiver.py with `blake3` available (see scripts/py_blake3.sh).
exec "$(dirname "$0")/py_blake3.sh" webhook_receiver.py "$@"
