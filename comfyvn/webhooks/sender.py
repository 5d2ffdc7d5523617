"""One signed POST to a receiver: what every way of delivering a webhook shares.

The embedded worker (:mod:`.worker`) and the shared-bus delivery (:mod:`.shared`) both send
through this class, so signing, the outbound address policy, Basic auth from the URL's
user-info, the timeout, the response snippet and the ``Retry-After`` reading are one code path
whichever store holds the outbox. It keeps one connection pool per endpoint and the counters
``stats()`` reports; it must be used from one event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import functools
import logging
import time
from collections.abc import Container

import httpx

from comfyvn import __version__
from comfyvn.net import AddressPolicy, GuardedTransport, RefusedAddress, guarded_transport

from .config import WebhookConfig
from .models import Attempt, Subscription
from .signing import webhook_headers

__all__ = ["HEADERS", "Sender", "parse_retry_after"]

log = logging.getLogger("comfyvn.webhooks")

HEADERS = {  # what httpx.AsyncClient sent, with our user agent
    "accept": "*/*",
    "accept-encoding": "gzip, deflate",
    "connection": "keep-alive",
    "content-type": "application/json",
    "user-agent": f"ComfyVN-Webhooks/{__version__}",
}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also admits '²', which float() refuses
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now)


class Sender:
    def __init__(self, config: WebhookConfig, policy: AddressPolicy) -> None:
        self.cfg = config
        self.policy = policy
        self._transports: dict[str, GuardedTransport] = {}
        self._timeouts = httpx.Timeout(config.timeout_s).as_dict()  # connect, read, write, pool
        self._checked: dict[str, str] = {}  # endpoint -> the URL the policy last passed
        self._failing: set[str] = set()  # endpoints whose last attempt failed (log transitions)
        self.sent = 0
        self.delivered = 0
        self.failed_attempts = 0

    def transport_for(self, sub_id: str) -> GuardedTransport:
        """One connection pool per endpoint: small pools stay cheap to manage (httpcore scans
        every connection per request) and one endpoint's sockets never queue another's.

        Requests go straight to the guarded transport, without an ``httpx.AsyncClient`` on
        top: a webhook needs none of its cookies, auth, redirects or URL merging, and that
        layer cost about a fifth of the CPU of a delivery."""
        transport = self._transports.get(sub_id)
        if transport is None:
            slots = self.cfg.per_endpoint + 2  # + room for a ping or redeliver
            limits = httpx.Limits(
                max_connections=slots, max_keepalive_connections=slots, keepalive_expiry=30.0
            )
            transport = self._transports[sub_id] = guarded_transport(self.policy, limits)
        return transport

    async def close_stale(self, known: Container[str]) -> None:
        """Drop the pools (and policy checks) of endpoints that no longer exist."""
        for sub_id in [k for k in self._checked if k not in known]:
            del self._checked[sub_id]
        for sub_id in [k for k in self._transports if k not in known]:
            transport = self._transports.pop(sub_id)
            with contextlib.suppress(Exception):
                await transport.aclose()

    async def aclose(self) -> None:
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                await transport.aclose()
        self._transports.clear()

    async def send(self, sub: Subscription, delivery_id: int, msg_id: str, body: str) -> Attempt:
        """One signed POST; never raises. The error text never contains the secret."""
        transport = self.transport_for(sub.id)
        started = time.time()
        t0 = time.perf_counter()
        status: int | None = None
        error: str | None = None
        response: str | None = None
        retry_after: float | None = None
        try:
            if self._checked.get(sub.id) != sub.url:  # the policy is fixed: once per URL
                self.policy.check_url(sub.url)
                self._checked[sub.id] = sub.url
            payload = body.encode()
            signed = webhook_headers(sub.signing_keys(started), msg_id, int(time.time()), payload)
            request = httpx.Request(
                "POST",
                sub.url,
                content=payload,
                headers={**HEADERS, **signed, **_basic_auth(sub.url)},
                extensions={"timeout": self._timeouts},
            )
            async with asyncio.timeout(self.cfg.timeout_s):
                resp = await transport.handle_async_request(request)  # never follows redirects
                try:
                    status = resp.status_code
                    response = await _read_prefix(resp, self.cfg.response_bytes)
                    retry_after = parse_retry_after(resp.headers.get("retry-after"), time.time())
                finally:
                    await resp.aclose()
            if resp.is_redirect:
                error = f"HTTP {status}: redirects are not followed"
            elif not 200 <= status < 300:
                error = f"HTTP {status}"
        except RefusedAddress as exc:
            error = f"refused: {exc}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"no response within {self.cfg.timeout_s:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except Exception as exc:  # a bug must not kill the worker
            log.exception("webhook %s: unexpected error sending delivery %s", sub.id, delivery_id)
            error = f"internal error: {type(exc).__name__}"
        latency_ms = round((time.perf_counter() - t0) * 1000.0, 2)
        self.sent += 1
        ok = status is not None and 200 <= status < 300
        if ok:
            self.delivered += 1
            if sub.id in self._failing:
                self._failing.discard(sub.id)
                log.info("webhook %s is delivering again", sub.id)
        else:
            self.failed_attempts += 1
            if sub.id not in self._failing:  # once per failing streak; the delivery log has all
                self._failing.add(sub.id)
                log.warning(
                    "webhook %s: delivery %s failed (%s); retrying per schedule, see "
                    "GET /api/modder/hooks/webhooks/%s/deliveries",
                    sub.id,
                    delivery_id,
                    error,
                    sub.id,
                )
            else:
                log.debug("webhook %s delivery %s failed: %s", sub.id, delivery_id, error)
        return Attempt(
            delivery_id=delivery_id,
            webhook_id=sub.id,
            started_at=started,
            latency_ms=latency_ms,
            status_code=status,
            error=error,
            response=response,
            retry_after=retry_after,
        )


async def _read_prefix(resp: httpx.Response, limit: int) -> str:
    """The first ``limit`` bytes of the body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit].decode("utf-8", "replace")


@functools.lru_cache(maxsize=256)
def _basic_auth(url: str) -> dict[str, str]:
    """``Authorization: Basic`` from a URL's user-info, as an httpx client would send it (the
    sender talks to the transport directly, so nothing else adds it)."""
    parsed = httpx.URL(url)
    if not parsed.username and not parsed.password:
        return {}
    token = base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}
