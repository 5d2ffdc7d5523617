"""A webhook receiver for trying subscriptions out: ``python -m comfyvn.tools.receive``.

It listens on 127.0.0.1 (default port 9999, path ``/hooks``), verifies each delivery's Standard
Webhooks signature with the subscription's secret (``--secret whsec_...`` or
``COMFYVN_WEBHOOK_SECRET``), prints one line per delivery, and answers 204. A delivery whose
signature does not verify, or whose timestamp is more than five minutes off, is answered 401 and
printed as refused, so the sender retries it (and you see why). Without a secret it prints
deliveries unverified and says so. ``--count N`` exits after N verified deliveries (scripts).

Standard library only, so it runs wherever the ``comfyvn`` package is installed.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["main", "verify"]

TOLERANCE_S = 300
MAX_BODY = 1024 * 1024


class VerificationError(ValueError):
    pass


def _key(secret: str) -> bytes:
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise SystemExit("the secret is not a whsec_<base64> key") from None


def verify(key: bytes, headers: Any, body: bytes, now: float | None = None) -> None:
    """Raise :class:`VerificationError` unless one of the header's signatures matches."""
    msg_id = headers.get("webhook-id") or ""
    stamp = headers.get("webhook-timestamp") or ""
    signatures = (headers.get("webhook-signature") or "").split()
    if not msg_id or not stamp.isdigit() or not signatures:
        raise VerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    if abs((now or time.time()) - int(stamp)) > TOLERANCE_S:
        raise VerificationError("timestamp is more than 5 minutes off")
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode("ascii")
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise VerificationError("signature does not match the secret")


class _Receiver(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            self._answer(413)
            return
        body = self.rfile.read(length)
        srv = self.server
        if self.path.split("?", 1)[0] != srv.path:
            self._answer(404)
            return
        verdict = "unverified"
        if srv.key is not None:
            try:
                verify(srv.key, self.headers, body)
            except VerificationError as exc:
                srv.emit(f"REFUSED {self.headers.get('webhook-id', '?')}: {exc}")
                self._answer(401)
                return
            verdict = "verified"
        try:
            envelope = json.loads(body)
            summary = f"{envelope.get('event')} seq={envelope.get('seq')}"
            data = envelope.get("data") or {}
            if isinstance(data, dict) and "node" in data:
                summary += f" node={data['node']}"
        except ValueError:
            summary = f"{len(body)} bytes (not JSON)"
        srv.emit(f"{verdict} {self.headers.get('webhook-id', '?')}: {summary}")
        self._answer(204)
        srv.count(verdict == "verified" or srv.key is None)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per delivery
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, path: str, key: bytes | None, limit: int | None) -> None:
        super().__init__(("127.0.0.1", port), _Receiver)
        self.path, self.key, self.limit = path, key, limit
        self._seen = 0
        self._lock = threading.Lock()

    def emit(self, line: str) -> None:
        print(line, flush=True)

    def count(self, accepted: bool) -> None:
        with self._lock:
            self._seen += int(accepted)
            if self.limit is not None and self._seen >= self.limit:
                threading.Thread(target=self.shutdown, daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comfyvn.tools.receive", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--path", default="/hooks")
    parser.add_argument("--secret", default=os.environ.get("COMFYVN_WEBHOOK_SECRET"))
    parser.add_argument("--count", type=int, help="exit after this many deliveries")
    args = parser.parse_args(argv)
    key = _key(args.secret) if args.secret else None
    server = _Server(args.port, args.path, key, args.count)
    where = f"http://127.0.0.1:{server.server_address[1]}{args.path}"
    mode = "verifying signatures" if key else "NOT verifying signatures (no --secret)"
    print(f"receiving webhooks at {where}, {mode}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
