"""An httpx transport whose connections are vetted by :class:`UrlPolicy` at connect time.

The network backend resolves the host itself, checks every address, and connects only to the
addresses it checked, so there is no window between "the name looked safe" and "the socket went
somewhere else" (DNS rebinding). TLS still verifies the certificate against the URL's host name.
Environment proxies are ignored (``trust_env=False``): a proxy would hide the real destination.
"""

from __future__ import annotations

import typing

import httpcore
import httpx

from .safety import UrlPolicy

__all__ = ["guarded_transport"]


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await self._policy.resolve(host, port)
        except (OSError, TimeoutError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from None
        self._policy.check_addresses(host, addresses)  # raises UnsafeUrlError
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        raise last or httpcore.ConnectError(f"no address to connect to for {host!r}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("webhooks are never sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def guarded_transport(policy: UrlPolicy, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """``httpx.AsyncHTTPTransport`` with its connection pool rebuilt on the guarded backend.

    httpx does not take a network backend argument, so the pool it builds is replaced; the test
    suite's refusal tests fail loudly if a future httpx stops using ``_pool``.
    """
    transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
    if not isinstance(getattr(transport, "_pool", None), httpcore.AsyncConnectionPool):
        raise RuntimeError("unsupported httpx version: cannot install the guarded connector")
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_GuardedBackend(policy),
    )
    return transport
