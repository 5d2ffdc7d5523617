"""``comfyvn hooks tail``: print live envelopes as JSON lines, resuming after reconnects.

The cursor is the last seq printed (or the server's seq in its hello frame, before anything was
printed), so a server restart or a dropped connection never skips an envelope and never repeats
one. Envelopes go to stdout; what the tail is doing (connected, disconnected, reconnected) goes to
stderr as ``#`` lines, so a pipe of stdout stays pure JSON lines.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TextIO
from urllib.parse import urlencode

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import connect

from .api import Connection

__all__ = ["tail"]

_TRANSIENT = frozenset({408, 425, 429})  # client errors worth retrying
# The server sends its hello as soon as the stream is open. A server that accepted and then
# says nothing (stuck mid-shutdown) is retried instead of waited on until keepalive gives up.
HELLO_TIMEOUT_S = 10.0


def _stream_url(conn: Connection, topics: list[str] | None, since: int | None) -> str:
    query: dict[str, str] = {}
    if topics:
        query["topics"] = ",".join(topics)
    if since is not None:
        query["since"] = str(since)
    suffix = f"?{urlencode(query)}" if query else "?topics=*"
    return f"{conn.ws_base}/api/modder/hooks/ws{suffix}"


def tail(
    conn: Connection,
    *,
    topics: list[str] | None = None,
    since: int | None = None,
    count: int | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    max_backoff_s: float = 5.0,
) -> int:
    """Run until interrupted (or ``count`` envelopes were printed); returns an exit code."""
    cursor = since
    printed = 0
    backoff = 0.25
    headers = {"Authorization": f"Bearer {conn.token}"} if conn.token else {}
    connected_once = False
    while count is None or printed < count:
        try:
            with connect(
                _stream_url(conn, topics, cursor),
                additional_headers=headers,
                open_timeout=5,
                max_size=None,
            ) as ws:
                hello = json.loads(ws.recv(timeout=HELLO_TIMEOUT_S))
                if not hello.get("ok"):
                    print(f"comfyvn hooks tail: {hello.get('error')}", file=err)
                    return 2
                if cursor is None:
                    cursor = int(hello.get("seq", 0))
                if connected_once:
                    print(f"# reconnected, resuming after seq {cursor}", file=err, flush=True)
                else:  # from here on nothing is missed: a script may start what it watches
                    print(
                        f"# connected to {conn.server}, printing envelopes after seq {cursor}",
                        file=err,
                        flush=True,
                    )
                connected_once = True
                backoff = 0.25
                for frame in ws:
                    msg = json.loads(frame)
                    if msg.get("ping"):
                        continue
                    if msg.get("gap"):
                        cursor = max(cursor, int(msg["to"]))
                    else:
                        cursor = int(msg["seq"])
                        printed += 1
                    out.write(json.dumps(msg, separators=(",", ":")) + "\n")
                    out.flush()
                    if count is not None and printed >= count:
                        return 0
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                print(
                    f"comfyvn hooks tail: refused by the server ({status}); check the token",
                    file=err,
                )
                return 2
            if 400 <= status < 500 and status not in _TRANSIENT:
                # Retrying cannot help (wrong path, refused Host name...): say so and stop.
                print(
                    f"comfyvn hooks tail: the server answered {status} to "
                    f"{conn.ws_base}/api/modder/hooks/ws; check --server",
                    file=err,
                )
                return 2
            print(f"# server answered {status}; retrying", file=err, flush=True)
        except InvalidURI as exc:
            print(f"comfyvn hooks tail: bad server URL: {exc}", file=err)
            return 2
        except InvalidHandshake as exc:  # not an HTTP answer (yet): a server mid-restart
            print(f"# handshake failed ({exc}); retrying in {backoff:.2f}s", file=err, flush=True)
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            print(
                f"# disconnected ({type(exc).__name__}); retrying in {backoff:.2f}s",
                file=err,
                flush=True,
            )
        time.sleep(backoff)
        backoff = min(backoff * 2, max_backoff_s)
    return 0
