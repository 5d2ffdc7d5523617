"""Modder hook routes: catalogue, history, test emit and the live WebSocket stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.types import Message, Send

from comfyvn.core.hook_bus import Gap, Subscription, UnknownHookError, envelope_json
from comfyvn.core.hook_specs import HOOK_SPECS
from comfyvn.core.json_input import JsonInputError, JsonLimits, read_json

from ..bodies import parse_json_body, validation_detail
from ..services import Services, commit_or_503, get_services

router = APIRouter(prefix="/api/modder/hooks", tags=["modder hooks"])
log = logging.getLogger("comfyvn.server.streams")

MAX_TEST_PAYLOAD_BYTES = 256 * 1024
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER range; a larger cursor is a client error, not a 500
FIRST_MESSAGE_WAIT_S = 1.0


class TestEmitRequest(BaseModel):
    event: str = Field(description="Hook name, e.g. 'on_scene_enter'.")
    payload: dict[str, Any] = Field(description="Payload; validated against the hook's model.")


class TestEmitResponse(BaseModel):
    ok: bool = True
    event: str
    seq: int
    id: str


class HistoryResponse(BaseModel):
    ok: bool = True
    items: list[dict[str, Any]]
    next_since: int


def parse_topics(raw: str | list[str] | None) -> list[str] | None:
    """``None`` or ``*`` means every hook; unknown names raise :class:`UnknownHookError`."""
    if raw is None:
        return None
    names = raw if isinstance(raw, list) else raw.split(",")
    cleaned = [str(n).strip() for n in names if str(n).strip()]
    if not cleaned or "*" in cleaned:
        return None
    for name in cleaned:
        if name not in HOOK_SPECS:
            raise UnknownHookError(name)
    return cleaned


@router.get("", summary="List hooks with payload descriptions, webhooks, plugins and history")
async def list_hooks(request: Request) -> dict[str, Any]:
    services = get_services(request)
    bus = services.bus
    history = await asyncio.to_thread(bus.history, limit=15)
    return {
        "ok": True,
        "hooks": [spec.describe() for spec in HOOK_SPECS.values()],
        "webhooks": services.describe_webhooks(),
        "plugin_host": services.describe_plugin_host(),
        "history": history,
        "bus": bus.stats(),
    }


@router.get("/history", summary="Committed envelopes, oldest first", response_model=HistoryResponse)
async def history(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 25,
    since: Annotated[int | None, Query(ge=0, le=MAX_SEQ)] = None,
    event: Annotated[str | None, Query(description="Hook name(s), comma-separated")] = None,
) -> HistoryResponse:
    bus = get_services(request).bus
    try:
        events = parse_topics(event)
    except UnknownHookError as exc:
        raise HTTPException(400, str(exc)) from None
    items = await asyncio.to_thread(bus.history, limit=limit, since=since, events=events)
    next_since = items[-1]["seq"] if items else (since if since is not None else bus.committed_seq)
    return HistoryResponse(items=items, next_since=next_since)


@router.post(
    "/test",
    summary="Emit a real event with a validated payload; answers after the commit",
    response_model=TestEmitResponse,
    responses={400: {"description": "Unknown hook"}, 413: {"description": "Payload too large"}},
)
async def test_emit(request: Request) -> TestEmitResponse:
    services = get_services(request)
    req = await parse_json_body(
        request,
        TestEmitRequest,
        limit=MAX_TEST_PAYLOAD_BYTES,
        empty="request body is empty; send JSON {event, payload}",
    )
    spec = HOOK_SPECS.get(req.event)
    if spec is None:
        raise HTTPException(400, str(UnknownHookError(req.event)))
    try:
        payload = spec.payload_model.model_validate(req.payload).model_dump(mode="json")
    except ValidationError as exc:
        raise HTTPException(422, validation_detail(exc, prefix=("payload",))) from None
    emitted = services.bus.emit(req.event, payload)
    await commit_or_503(services.bus, emitted.seq)
    return TestEmitResponse(event=req.event, seq=emitted.seq, id=emitted.id)


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
    timed_out = False
    try:
        send = _timed_sender(ws, settings.send_timeout_s)
        await send(json.dumps({"ok": True, "subscribed": subscribed, "seq": hello_seq(sub, since)}))
        await _pump(ws, sub, send, settings.ws_heartbeat_s)
    except TimeoutError:
        timed_out = True
    except (WebSocketDisconnect, RuntimeError, ConnectionError):
        pass
    finally:
        sub.close()
    if timed_out:
        # Its cursor is released already; the close frame reaches the client if it ever reads
        # again (then it resumes with `since`). A peer that is gone is found by protocol pings.
        log.info("WebSocket client accepted nothing for %g s; closing it", settings.send_timeout_s)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_GRACE_S):
                await ws.close(code=CLOSE_POLICY, reason="send timeout")


def _close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    return text.encode("utf-8")[:120].decode("utf-8", "ignore")


def _timed_sender(ws: WebSocket, timeout_s: float) -> Callable[[str], Awaitable[None]]:
    """``ws.send_text`` that raises ``TimeoutError`` when the socket accepts nothing for
    ``timeout_s`` (a client that stopped reading fills the buffers, then every send waits)."""

    async def send(text: str) -> None:
        async with asyncio.timeout(timeout_s):
            await ws.send_text(text)

    return send


async def _pump(
    ws: WebSocket, sub: Any, send: Callable[[str], Awaitable[None]], heartbeat_s: float
) -> None:
    """Send envelopes as they commit; a heartbeat keeps idle proxies and clients honest.

    The pending ``next_batch`` task is never cancelled by the heartbeat: it may be reading the
    log on a worker thread and has already moved the cursor, so cancelling it would lose rows.
    """
    reader = asyncio.create_task(_drain_client(ws))
    pending: asyncio.Future[list[Any]] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(sub.next_batch())
            done, _ = await asyncio.wait(
                {pending, reader}, timeout=heartbeat_s, return_when=asyncio.FIRST_COMPLETED
            )
            if reader in done:
                return
            if pending not in done:
                await send('{"ping":true}')
                continue
            items, pending = pending.result(), None
            for item in items:
                if isinstance(item, Gap):
                    await send(json.dumps(item.to_dict()))
                else:
                    await send(envelope_json(item))
    finally:
        for task in (reader, pending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


async def _drain_client(ws: WebSocket) -> None:
    """Consume client frames so a disconnect is noticed promptly."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return


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
        hello = {"ok": True, "subscribed": subscribed, "seq": hello_seq(sub, resume)}
        pending: asyncio.Future[list[Any]] | None = None
        try:
            yield f"retry: 2000\nevent: hello\ndata: {json.dumps(hello)}\n\n"
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(sub.next_batch())
                done, _ = await asyncio.wait({pending}, timeout=keepalive)
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                items, pending = pending.result(), None
                chunk = []
                for item in items:
                    if isinstance(item, Gap):
                        chunk.append(f"event: gap\ndata: {json.dumps(item.to_dict())}\n\n")
                    else:
                        chunk.append(f"id: {item.seq}\ndata: {envelope_json(item)}\n\n")
                yield "".join(chunk)
        finally:
            if pending is not None:
                pending.cancel()
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


# -- plugins -----------------------------------------------------------------------------------
@router.get("/plugins", summary="Dev-mode plugins: status, hooks, errors")
async def list_plugins(request: Request) -> dict[str, Any]:
    return {"ok": True, **get_services(request).describe_plugin_host()}


@router.post(
    "/plugins/reload",
    summary="Reload plugins without restarting the server; transactional per plugin",
    description="Every plugin, or only `name`. A plugin whose new version fails to import or "
    "set up keeps its previous version running: the answer is `ok: false` and that plugin's "
    "result has `status: error`, `running: previous` and the error with file and line.",
    responses={404: {"description": "No plugin of that name"}, 409: {"description": "No plugins"}},
)
async def reload_plugins(
    request: Request,
    name: Annotated[str | None, Query(description="Only this plugin")] = None,
) -> dict[str, Any]:
    services = get_services(request)
    host = services.plugin_host
    if host is None or (not services.settings.dev_mode and not services.settings.plugins):
        raise HTTPException(
            409,
            "no plugins run on this server: dev mode is off and no installed plugin is "
            "enabled (start with --dev, or --plugin NAME)",
        )
    try:
        report = await asyncio.to_thread(host.reload, [name] if name else None)
    except KeyError:
        known = ", ".join(repr(p["name"]) for p in host.describe()["plugins"]) or "none"
        raise HTTPException(404, f"no plugin named {name!r}; known plugins: {known}") from None
    return {**services.describe_plugin_host(), **report}
