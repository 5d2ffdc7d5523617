"""The live streams: the hook WebSocket and the same stream as Server-Sent Events.

Both are cursors over committed envelopes (:class:`~comfyvn.core.subscription.Subscription`):
replay after ``since``, then live, resumable by seq. A client that stops reading is dropped
after ``COMFYVN_SEND_TIMEOUT_S``; a WebSocket client also gets a heartbeat when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.types import Message, Send

from comfyvn.core.hook_bus import Gap, Subscription, UnknownHookError
from comfyvn.core.hook_specs import HOOK_SPECS
from comfyvn.core.json_input import JsonInputError, JsonLimits, read_json

from ..services import Services, get_services
from .hooks import MAX_SEQ, parse_topics

router = APIRouter(prefix="/api/modder/hooks", tags=["modder hooks"])
log = logging.getLogger("comfyvn.server.streams")

FIRST_MESSAGE_WAIT_S = 1.0

# -- WebSocket ---------------------------------------------------------------------------------
CLOSE_POLICY = 1008  # a subscription we cannot serve; also a client that stopped reading
CLOSE_INVALID_DATA = 1007  # not UTF-8, lone surrogates
CLOSE_TOO_BIG = 1009
_CLOSE_FOR = {
    "too_large": CLOSE_TOO_BIG,
    "encoding": CLOSE_INVALID_DATA,
    "surrogate": CLOSE_INVALID_DATA,
}
FIRST_MESSAGE_LIMITS = JsonLimits(max_bytes=16 * 1024, max_depth=8)
# How long a timed-out client has to read again and see its close frame; meanwhile it holds no
# subscription. Protocol pings close a peer that is gone well before this.
CLOSE_GRACE_S = 60.0
SEND_TIMEOUT = "send timeout"


class _BadSubscription(ValueError):
    def __init__(self, message: str, close_code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.close_code = close_code


def _parse_since(raw: Any) -> int | None:
    """A cursor from a query string, header or JSON: digits or an integer, never a bool,
    float or a number beyond SQLite's range."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 19:
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        shown = repr(raw) if len(repr(raw)) <= 40 else repr(raw)[:40] + "..."
        raise _BadSubscription(f"'since' must be a non-negative integer, got {shown}")
    if not 0 <= value <= MAX_SEQ:
        raise _BadSubscription(f"'since' must be an integer from 0 to {MAX_SEQ}")
    return value


async def _read_subscription(ws: WebSocket) -> tuple[list[str] | None, int | None]:
    params = ws.query_params
    if "topics" in params or "since" in params:
        return parse_topics(params.get("topics")), _parse_since(params.get("since"))
    try:
        message = await asyncio.wait_for(ws.receive(), FIRST_MESSAGE_WAIT_S)
    except TimeoutError:
        return None, None  # a client that says nothing gets everything, live
    if message["type"] == "websocket.disconnect":
        raise WebSocketDisconnect(message.get("code", 1000))
    # A text frame, or a binary one holding UTF-8 JSON; anything else is a bad subscription.
    raw = message.get("text") if message.get("text") is not None else message.get("bytes")
    try:
        msg = read_json(raw or b"", FIRST_MESSAGE_LIMITS, what="first message")
    except JsonInputError as exc:
        raise _BadSubscription(
            f"{exc}; send JSON {{topics, since}}", _CLOSE_FOR.get(exc.reason, CLOSE_POLICY)
        ) from None
    if not isinstance(msg, dict):
        raise _BadSubscription("first message must be a JSON object {topics, since}")
    topics = msg.get("topics")
    if topics is not None and not isinstance(topics, list | str):
        raise _BadSubscription("'topics' must be a list of hook names")
    return parse_topics(topics), _parse_since(msg.get("since"))


def hello_seq(sub: Subscription, since: int | None) -> int:
    """The latest seq, as the hello frame reports it. A live-only subscription reports exactly
    where it starts, so a client that resumes from this seq can never skip an envelope that
    committed between subscribing and the hello."""
    return sub.cursor if since is None else sub.bus.committed_seq


@router.websocket("/ws")
async def stream(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    bus = services.bus
    await ws.accept()
    settings = services.settings
    try:
        topics, since = await _read_subscription(ws)
        sub = bus.subscribe(topics, since)
    except (UnknownHookError, _BadSubscription) as exc:
        code = getattr(exc, "close_code", CLOSE_POLICY)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(settings.send_timeout_s):
                await ws.send_json({"ok": False, "error": str(exc)})
                await ws.close(code=code, reason=_close_reason(str(exc)))
        return
    except WebSocketDisconnect:
        return
    subscribed = topics if topics is not None else list(HOOK_SPECS)
    hello = json.dumps(
        {"ok": True, "subscribed": subscribed, "seq": hello_seq(sub, since), **services.node}
    )
    progress = _SendProgress(asyncio.get_running_loop())
    pump = asyncio.create_task(_pump(ws, sub, progress, hello))
    supervisor = asyncio.create_task(
        _supervise(ws, progress, settings.ws_heartbeat_s, settings.send_timeout_s)
    )
    try:
        done, _ = await asyncio.wait({pump, supervisor}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pump, supervisor):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sub.close()
    ended = supervisor.result() if supervisor in done and supervisor.exception() is None else ""
    if ended == SEND_TIMEOUT:
        # Its cursor is released already; the close frame reaches the client if it ever reads
        # again (then it resumes with `since`). Protocol pings find a peer that is gone.
        log.info("WebSocket client accepted nothing for %g s; closing it", settings.send_timeout_s)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_GRACE_S):
                await ws.close(code=CLOSE_POLICY, reason=SEND_TIMEOUT)


def _close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:120].decode("utf-8", "ignore")


class _SendProgress:
    """When the pump last got a frame through, and whether it is sending now: the supervisor
    reads it to find a stuck client, without a timer per frame."""

    __slots__ = ("clock", "last", "sending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.clock = loop.time
        self.last = self.clock()
        self.sending = False


async def _pump(ws: WebSocket, sub: Subscription, progress: _SendProgress, hello: str) -> None:
    """Send the hello, then envelopes as they commit, each batch straight from the ring."""
    send = ws.send_text
    clock = progress.clock
    progress.sending = True
    await send(hello)
    progress.last, progress.sending = clock(), False
    while True:
        items = await sub.next_batch()
        progress.sending = True
        for item in items:
            await send(item.wire if not isinstance(item, Gap) else json.dumps(item.to_dict()))
            progress.last = clock()
        progress.sending = False


async def _supervise(
    ws: WebSocket, progress: _SendProgress, heartbeat_s: float, send_timeout_s: float
) -> str:
    """Reads the client's frames (a disconnect ends the stream), sends the heartbeat when the
    stream has been idle for ``heartbeat_s``, and ends the stream when a send has made no
    progress for ``send_timeout_s``. Returns why it ended."""
    check = max(0.05, min(heartbeat_s, send_timeout_s) / 4)
    while True:
        try:
            async with asyncio.timeout(check):
                message = await ws.receive()
        except TimeoutError:
            pass
        else:
            if message["type"] == "websocket.disconnect":
                return "disconnect"
            continue  # the client may talk; it is not listened to
        idle = progress.clock() - progress.last
        if progress.sending:
            if idle > send_timeout_s:
                return SEND_TIMEOUT
        elif idle >= heartbeat_s:
            try:
                async with asyncio.timeout(send_timeout_s):
                    await ws.send_text('{"ping":true}')
            except TimeoutError:
                return SEND_TIMEOUT
            progress.last = progress.clock()


# -- Server-Sent Events ------------------------------------------------------------------------
@router.get(
    "/subscribe",
    summary="The hook stream as Server-Sent Events (id = seq; resume with Last-Event-ID)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, 400: {"description": "Bad topic"}},
)
async def subscribe_sse(
    request: Request,
    topics: Annotated[str | None, Query(description="Hook names, comma-separated")] = None,
    since: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Replay envelopes after this seq")
    ] = None,
) -> StreamingResponse:
    services = get_services(request)
    last_event_id = request.headers.get("last-event-id", "").strip()
    try:
        wanted = parse_topics(topics)
        resume = _parse_since(last_event_id) if last_event_id else since
    except UnknownHookError as exc:
        raise HTTPException(400, str(exc)) from None
    except _BadSubscription as exc:
        raise HTTPException(400, f"Last-Event-ID: {exc}") from None
    keepalive = services.settings.sse_keepalive_s

    async def frames() -> AsyncIterator[str]:
        # Subscribed only once the stream runs: a response that never starts (the client left
        # first) never iterates this generator, so a subscription made earlier would leak.
        sub = services.bus.subscribe(wanted, resume)
        subscribed = wanted or list(HOOK_SPECS)
        hello = {
            "ok": True,
            "subscribed": subscribed,
            "seq": hello_seq(sub, resume),
            **services.node,
        }
        try:
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            while True:
                try:
                    # Cancelling next_batch is safe: the cursor moves only once rows are handed
                    # over (a log read cut short is simply read again).
                    async with asyncio.timeout(keepalive):
                        items = await sub.next_batch()
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                chunk = []
                for item in items:
                    if isinstance(item, Gap):
                        chunk.append(f"event: gap\ndata: {json.dumps(item.to_dict())}\n\n")
                    else:
                        chunk.append(f"id: {item.seq}\nevent: {item.event}\ndata: {item.wire}\n\n")
                yield "".join(chunk)
        finally:
            sub.close()

    return _EventStreamResponse(
        frames(),
        send_timeout_s=services.settings.send_timeout_s,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class _EventStreamResponse(StreamingResponse):
    """A stream whose client must keep reading: when its socket accepts nothing for
    ``send_timeout_s``, the stream ends and its subscription is released (the client resumes
    with ``Last-Event-ID``)."""

    def __init__(self, content: AsyncIterator[str], *, send_timeout_s: float, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.send_timeout_s = send_timeout_s
        self._frames = content

    async def stream_response(self, send: Send) -> None:
        async def timed_send(message: Message) -> None:
            async with asyncio.timeout(self.send_timeout_s):
                await send(message)

        try:
            await super().stream_response(timed_send)
        except TimeoutError:
            log.info("SSE client accepted nothing for %g s; ending its stream", self.send_timeout_s)
            await self._frames.aclose()  # type: ignore[attr-defined]
