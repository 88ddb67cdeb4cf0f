"""A webhook receiver for countersign's `webhook.post`, written from docs/capabilities.md (the
`tenant_secret` and `verify` functions are the ones shown there).

Usage: webhook_receiver.py SERVICE_KEY_HEX TENANT

Listens on a free loopback port, prints `listening on <port>`, and answers every POST: 200 with
`{"verified": true, "idempotency_key": ..., "duplicate": ...}` when the signature verifies (a
repeated Idempotency-Key is a duplicate, to be dropped), 401 `{"verified": false}` otherwise.
"""

import hashlib
import hmac
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from blake3 import blake3


def tenant_secret(service_key_hex: str, tenant: str) -> str:
    """What the operator gives the tenant: derived from COUNTERSIGN_WEBHOOK_SECRET."""
    message = f"countersign webhook secret for {tenant}".encode()
    return blake3(message, key=bytes.fromhex(service_key_hex)).hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, tolerance: int = 300) -> bool:
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), signature)


def main() -> None:
    secret = tenant_secret(sys.argv[1], sys.argv[2])
    seen: set[str] = set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ok = verify(
                secret,
                self.headers.get("x-countersign-timestamp", "0"),
                self.headers.get("x-countersign-signature", ""),
                body,
            )
            key = self.headers.get("Idempotency-Key", "")
            answer = {"verified": ok}
            if ok:
                answer.update(idempotency_key=key, duplicate=key in seen, payload=json.loads(body))
                seen.add(key)
            data = json.dumps(answer).encode()
            self.send_response(200 if ok else 401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: the caller's test output stays readable

    server = HTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
