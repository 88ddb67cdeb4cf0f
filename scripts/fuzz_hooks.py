"""schemathesis hooks for countersign, loaded by schemathesis.toml (`hooks`).

One custom check, `refusal_changes_nothing`: a request the service refuses (any 4xx) leaves the
log as it was. Before every request the hook reads the log's head, the cursor `GET /v1/stream`
announces in its first event (`ready`: the newest log position, of every tenant and every kind
of event: actions, policies, settings, keys, members, workflows, delegations); after a 4xx it
reads the head again, and a head that moved is a failure.

The service writes on its own too (the executor's outcomes, timers, workflow runs started by a
published event), so a head that moved is not yet proof: the refused request is sent again,
byte for byte, between two more readings of the head, up to `RETRIES` times. Only when every
attempt was refused and every one moved the head does the check fail; a refusal that leaves the
head still once shows that the movement was someone else's.

It needs COUNTERSIGN_FUZZ_URL (the served base URL) and COUNTERSIGN_FUZZ_TOKEN (the bearer the
run uses); scripts/fuzz-api.sh sets both. Without them the check does nothing. At exit it says
on stderr how many refusals it checked (cli/tests/fuzz_gate.rs requires some).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import OrderedDict

import requests
import schemathesis

BASE_URL = os.environ.get("COUNTERSIGN_FUZZ_URL", "").rstrip("/")
TOKEN = os.environ.get("COUNTERSIGN_FUZZ_TOKEN", "")
RETRIES = 2
# Heads read before each request, by case; a few are enough with one worker, and the bound
# keeps probes that no check looks at (auth probes, for instance) from piling up.
_KEPT = 256
_heads_before: OrderedDict[int, tuple[object, str]] = OrderedDict()
_session = requests.Session()
_tally = {"checked": 0, "another_writer": 0}


@atexit.register
def _report() -> None:
    if enabled():
        print(
            f"refusal_changes_nothing: {_tally['checked']} refused requests checked, the log "
            f"moved by another writer during {_tally['another_writer']} of them",
            file=sys.stderr,
        )


class HeadUnreadable(Exception):
    pass


def read_head() -> str:
    """The log's head: the cursor of `GET /v1/stream`'s first event (`ready`)."""
    try:
        response = _session.get(
            f"{BASE_URL}/v1/stream",
            headers={"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"},
            stream=True,
            timeout=(5, 10),
        )
    except requests.RequestException as error:
        raise HeadUnreadable(f"GET /v1/stream: {error}") from error
    try:
        if response.status_code != 200:
            raise HeadUnreadable(f"GET /v1/stream answered {response.status_code}")
        buffer = ""
        for chunk in response.iter_content(chunk_size=None, decode_unicode=True):
            buffer += chunk if isinstance(chunk, str) else chunk.decode()
            if "\n\n" in buffer:
                break
        event, _, _ = buffer.partition("\n\n")
        fields = dict(
            line.split(":", 1) for line in event.splitlines() if ":" in line and not line.startswith(":")
        )
        if fields.get("event", "").strip() != "ready":
            raise HeadUnreadable(f"GET /v1/stream began with {event!r}, not `ready`")
        return str(json.loads(fields["data"])["cursor"])
    finally:
        response.close()


def enabled() -> bool:
    return bool(BASE_URL and TOKEN)


@schemathesis.hook
def before_call(context, case, **kwargs):
    if not enabled():
        return
    try:
        head = read_head()
    except HeadUnreadable as error:
        head = f"unreadable: {error}"
    _heads_before[id(case)] = (case, head)
    _heads_before.move_to_end(id(case))
    while len(_heads_before) > _KEPT:
        _heads_before.popitem(last=False)


@schemathesis.check
def refusal_changes_nothing(ctx, response, case):
    """A refused request (4xx) leaves the log's head where it was."""
    if not enabled() or not 400 <= response.status_code < 500:
        return None
    kept = _heads_before.pop(id(case), None)
    if kept is None or kept[0] is not case:
        return None
    before = kept[1]
    if before.startswith("unreadable: "):
        raise AssertionError(f"The log's head could not be read before the request ({before[12:]})")
    _tally["checked"] += 1
    after = read_head()
    if after == before:
        return None
    attempts = [(response.status_code, before, after)]
    for _ in range(RETRIES):
        before = read_head()
        again = _session.send(response.request.copy(), timeout=30)
        after = read_head()
        if not 400 <= again.status_code < 500:
            # Accepted this time (the state it depended on changed): nothing to conclude.
            return None
        if after == before:
            # Refused again with the log untouched: the movement was another writer's.
            _tally["another_writer"] += 1
            return None
        attempts.append((again.status_code, before, after))
    described = "; ".join(f"{status}: head {b} -> {a}" for status, b, a in attempts)
    raise AssertionError(
        f"A refused request changed the log: each of {len(attempts)} attempts was refused "
        f"and moved the log's head ({described})"
    )
