"""The references for ``bench/bench_ratios.py``: the same work with nothing of ours in the way.

Imports nothing from ``comfyvn``. Each role runs in its own process and prints its URL (or
port) on one line when it is ready:

- ``rest``: a bare FastAPI app with one ``POST /api/modder/hooks/test`` that parses the JSON
  body into a pydantic model and answers a small JSON (no bus, no commit, no middleware).
- ``ws``: a minimal Starlette app: one WebSocket route with a queue per client, and a
  ``POST /api/modder/hooks/test`` that broadcasts the envelope JSON to every queue.
- ``receiver``: a raw asyncio HTTP/1.1 server answering 204 to every POST and counting them,
  for the webhook figure (``GET /arm?n=N`` resets the count, ``GET /wait`` answers once N
  POSTs arrived, with the receive time of the Nth).

The two app servers run on the same ``uvicorn.Config`` options as ``comfyvn/server/runner.py``
(``log_config=None``, level INFO, the access log on and written by a root stderr handler with
the same format, ``timeout_graceful_shutdown=5``, WebSocket pings every 20 s; HTTP, loop and
WebSocket implementations left on ``auto``, so httptools, uvloop and websockets like ours).
Keep them in step when runner.py changes.
"""

import asyncio
import json
import logging
import sys
import time
from typing import Any

# Mirrors comfyvn/server/runner.py (and the Settings default ws_ping_s = 20.0).
UVICORN_OPTIONS: dict[str, Any] = {
    "log_config": None,
    "log_level": "info",
    "timeout_graceful_shutdown": 5,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
EMIT_PATH = "/api/modder/hooks/test"
WS_PATH = "/api/modder/hooks/ws"


def configure_logging() -> None:
    """A root stderr handler at INFO, as ``comfyvn serve`` has (minus the token redaction)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel("INFO")


def rest_app() -> Any:
    # No ``from __future__ import annotations`` in this file: FastAPI must see the local model
    # class itself, not a string it cannot resolve (it would read ``req`` as a query parameter).
    from fastapi import FastAPI
    from pydantic import BaseModel

    class EmitRequest(BaseModel):
        event: str
        payload: dict[str, Any]

    class EmitResponse(BaseModel):
        ok: bool = True
        event: str
        seq: int
        id: str

    app = FastAPI()
    state = {"seq": 0}

    @app.post(EMIT_PATH, response_model=EmitResponse)
    async def emit(req: EmitRequest) -> EmitResponse:
        state["seq"] += 1
        seq = state["seq"]
        return EmitResponse(event=req.event, seq=seq, id=f"evt_ref_{seq}")

    return app


def ws_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    queues: set[asyncio.Queue[str]] = set()
    state = {"seq": 0}

    async def emit(request: Request) -> JSONResponse:
        body = await request.json()
        state["seq"] += 1
        seq = state["seq"]
        envelope = {
            "seq": seq,
            "id": f"evt_ref_{seq}",
            "event": body["event"],
            "ts": time.time(),
            "data": body["payload"],
        }
        text = json.dumps(envelope, separators=(",", ":"))
        for queue in queues:
            queue.put_nowait(text)
        return JSONResponse({"ok": True, "event": body["event"], "seq": seq})

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        queue: asyncio.Queue[str] = asyncio.Queue()
        queues.add(queue)

        async def pump() -> None:
            while True:
                await ws.send_text(await queue.get())

        try:
            await ws.send_text(json.dumps({"ok": True, "seq": state["seq"]}))  # hello
            sender = asyncio.create_task(pump())
            try:  # read until the client leaves, so its queue goes with it
                while (await ws.receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                sender.cancel()
        except Exception:
            pass
        finally:
            queues.discard(queue)

    return Starlette(
        routes=[Route(EMIT_PATH, emit, methods=["POST"]), WebSocketRoute(WS_PATH, stream)]
    )


def serve(app: Any) -> None:
    import uvicorn

    class ReadyServer(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
            await super().startup(sockets)
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"reference server ready at http://127.0.0.1:{port}", flush=True)

    configure_logging()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, **UVICORN_OPTIONS)
    ReadyServer(config).run()


# -- the webhook receiver ----------------------------------------------------------------------
async def receiver_main() -> None:
    state: dict[str, Any] = {"count": 0, "target": None, "at": None}
    waiters: list[asyncio.Future[float]] = []

    def reached(now: float) -> None:
        state["at"] = now
        for fut in waiters:
            if not fut.done():
                fut.set_result(now)
        waiters.clear()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"POST "):
                    state["count"] += 1
                    if state["count"] == state["target"]:
                        reached(time.time())
                    writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                    continue
                if head.startswith(b"GET /arm?n="):
                    target = int(head[11 : head.index(b" ", 11)])
                    state.update(count=0, target=target, at=None)
                    body = b"armed"
                else:  # GET /wait
                    at = state["at"]
                    if at is None:
                        fut = asyncio.get_running_loop().create_future()
                        waiters.append(fut)
                        at = await fut
                    body = repr(at).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(f"receiver ready at http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    role = sys.argv[1]
    if role == "rest":
        serve(rest_app())
    elif role == "ws":
        serve(ws_app())
    elif role == "receiver":
        asyncio.run(receiver_main())
    else:
        raise SystemExit(f"unknown role {role!r}: rest | ws | receiver")


if __name__ == "__main__":
    main()
