"""The live hook stream for the Modder Hooks dock, read on a background thread.

It first reads the recent history over REST, then subscribes over the WebSocket with
``since=<last seq seen>``; after any disconnect it resubscribes with the same cursor, so a
reconnect neither skips nor repeats an envelope. Envelopes reach the GUI in batches.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from comfyvn.client.api import Connection

from .workers import call_gui, dispatcher, drop_gui_callback, gui_callback, post_to_gui

__all__ = ["HookStream"]

StatusCallback = Callable[[str, str], None]  # (state, message); state: connecting|live|retry|error
EnvelopeCallback = Callable[[list[dict[str, Any]]], None]


class HookStream:
    def __init__(
        self,
        conn: Connection,
        on_envelopes: EnvelopeCallback,
        on_status: StatusCallback,
        *,
        history: int = 100,
        max_backoff_s: float = 5.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.conn = conn
        # Only callback numbers reach the thread: it must never hold the panel (a widget).
        self._envelopes_id = gui_callback(on_envelopes)
        self._status_id = gui_callback(on_status)
        self._history = history
        self._max_backoff = max_backoff_s
        self._timeout = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._batch: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        self._thread: threading.Thread | None = None
        self.cursor: int | None = None
        self.connects = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.conn.token}"} if self.conn.token else {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="comfyvn-hook-stream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """GUI thread; returns at once. The thread notices within a second (at once if
        connected), and nothing it still delivers reaches the panel."""
        self._stop.set()
        drop_gui_callback(self._envelopes_id)
        drop_gui_callback(self._status_id)
        ws = self._ws
        if ws is not None:
            # closing from another thread races with the reader: harmless either way
            with contextlib.suppress(Exception):
                ws.close()

    # -- thread ------------------------------------------------------------------------------
    def _status(self, state: str, message: str) -> None:
        if not self._stop.is_set():
            call_gui(self._status_id, state, message)

    def _deliver(self, items: list[dict[str, Any]]) -> None:
        if not items or self._stop.is_set():
            return
        with self._lock:
            first = not self._batch
            self._batch.extend(items)
        if first:  # one drain per batch, however many frames arrive before the GUI runs it
            post_to_gui(self._drain)

    def _drain(self) -> None:
        """GUI thread: hand over everything batched so far, in order with status updates."""
        with self._lock:
            items, self._batch = self._batch, []
        callback = dispatcher().callbacks.get(self._envelopes_id)
        if items and callback is not None and not self._stop.is_set():
            callback(items)

    def _run(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                if self.cursor is None:
                    self._status("connecting", f"reading recent history from {self.conn.server}")
                    self._read_history()
                self._status("connecting", f"subscribing at {self.conn.ws_base}")
                self._stream()
                backoff = 0.25
                if self._stop.is_set():
                    return
                why = "the server closed the stream"
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    self._status("error", f"the server refused the token ({status}); not retrying")
                    return
                why = f"the server answered {status}"
            except _Refused as exc:
                self._status("error", str(exc))
                return
            except InvalidURI as exc:
                self._status("error", f"bad server URL: {exc}")
                return
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
                why = f"disconnected ({type(exc).__name__})"
            except httpx.HTTPError as exc:
                why = f"history request failed ({type(exc).__name__})"
            except ValueError as exc:
                why = f"unreadable frame ({exc})"
            if self._stop.is_set():
                return
            resume = f", resuming after seq {self.cursor}" if self.cursor is not None else ""
            self._status("retry", f"{why}; reconnecting in {backoff:.1f} s{resume}")
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _read_history(self) -> None:
        with httpx.Client(base_url=self.conn.server, timeout=self._timeout) as client:
            response = client.get(
                "/api/modder/hooks/history", params={"limit": self._history}, headers=self.headers
            )
        if response.status_code in (401, 403):
            raise _Refused(f"the server refused the token ({response.status_code}); not retrying")
        response.raise_for_status()
        body = response.json()
        items = body.get("items") or []
        self._deliver(items)
        self.cursor = int(body.get("next_since") or 0)

    def _stream(self) -> None:
        url = f"{self.conn.ws_base}/api/modder/hooks/ws?since={self.cursor}"
        with connect(
            url, additional_headers=self.headers, open_timeout=self._timeout, max_size=None
        ) as ws:
            self._ws = ws
            try:
                hello = json.loads(ws.recv(timeout=self._timeout))
                if not hello.get("ok"):
                    raise _Refused(f"subscription refused: {hello.get('error')}")
                self.connects += 1
                if self.connects == 1:
                    self._status("live", f"live · streaming after seq {self.cursor}")
                else:
                    self._status(
                        "live", f"live again · resumed after seq {self.cursor} (no gap, no repeat)"
                    )
                while not self._stop.is_set():
                    try:
                        frame = ws.recv(timeout=1.0)
                    except TimeoutError:
                        continue
                    msg = json.loads(frame)
                    if msg.get("ping"):
                        continue
                    if msg.get("gap"):
                        self.cursor = max(self.cursor or 0, int(msg["to"]))
                    else:
                        self.cursor = int(msg["seq"])
                    self._deliver([msg])
            finally:
                self._ws = None


class _Refused(Exception):
    """A refusal that retrying cannot fix."""
