"""Where webhooks may be sent: URL checks at subscription time, address checks at connect time.

Only ``http``/``https``. Link-local addresses and cloud metadata endpoints are always refused
(a webhook must not become a way to read instance credentials). Loopback is allowed by default
because modders run receivers on their own machine. ``COMFYVN_WEBHOOK_DENY_HOSTS`` refuses
hosts, ``COMFYVN_WEBHOOK_ALLOW_HOSTS`` (when set) admits only the hosts it lists. Entries are host
names (``example.com``), subdomain wildcards (``*.example.com``), IP addresses or CIDR networks.

The address checks run again on every connection, on the very addresses the socket connects to
(see :mod:`comfyvn.webhooks.transport`), so a DNS answer that changed after the subscription was
created cannot steer a delivery to a refused address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

__all__ = ["MAX_URL_LENGTH", "Target", "UnsafeUrlError", "UrlPolicy", "redact_url"]

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_S = 3.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_NAMES = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle, DigitalOcean...
        "169.254.170.2",  # AWS ECS task credentials
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
    )
)


class UnsafeUrlError(ValueError):
    """The URL may not receive webhooks; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    ip: IPAddress | None  # set when the host is an IP literal


@dataclass(frozen=True, slots=True)
class _HostList:
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _HostList:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def matches_name(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def matches_address(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


# IPv6 prefixes whose addresses carry an IPv4 address in their low 32 bits: on a network with
# NAT64 (or SIIT) they reach that IPv4 host. Local-use NAT64 prefixes are /96s in practice.
_LOW32_PREFIXES = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96")
)


def _judged_as(ip: IPAddress) -> list[IPAddress]:
    """The address, plus the IPv4 address it embeds (mapped, NAT64, 6to4, compatible...).

    Every form is vetted, so ``[64:ff9b::a9fe:a9fe]`` is refused like ``169.254.169.254``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    embedded = ip.ipv4_mapped or ip.sixtofour
    if embedded is None and int(ip) > 1 and any(ip in net for net in _LOW32_PREFIXES):
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return [ip] if embedded is None else [embedded, ip]


def redact_url(url: str) -> str:
    """The URL without a password in its user-info part (safe for listings and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:****@{netloc}").geturl()


class UrlPolicy:
    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] = (),
        deny_hosts: Iterable[str] = (),
        allow_loopback: bool = True,
    ) -> None:
        self.allow = _HostList.parse(allow_hosts)
        self.deny = _HostList.parse(deny_hosts)
        self.allow_loopback = allow_loopback

    # -- static checks (no network) ----------------------------------------------------------
    def check_url(self, url: str) -> Target:
        """Parse and vet a URL without touching the network; raises :class:`UnsafeUrlError`."""
        if len(url) > MAX_URL_LENGTH:
            raise UnsafeUrlError(f"URL is longer than {MAX_URL_LENGTH} characters")
        if any(ch.isspace() or ord(ch) < 32 for ch in url):
            raise UnsafeUrlError("URL must not contain whitespace or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = scheme or "none"
            raise UnsafeUrlError(f"only http and https URLs can receive webhooks (scheme: {shown})")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise UnsafeUrlError("URL has no host")
        port = _port(parts)
        ip = _ip_literal(host)
        if ip is None:
            if host in METADATA_NAMES:
                raise UnsafeUrlError(f"host {host!r} is a cloud metadata endpoint")
            if self.deny.matches_name(host):
                raise UnsafeUrlError(f"host {host!r} is in COMFYVN_WEBHOOK_DENY_HOSTS")
            if self.allow and not self.allow.matches_name(host) and not self.allow.networks:
                raise UnsafeUrlError(f"host {host!r} is not in COMFYVN_WEBHOOK_ALLOW_HOSTS")
        else:
            self.check_addresses(host, [ip])
        return Target(scheme, host, port, ip)

    def check_addresses(self, host: str, addresses: Iterable[IPAddress | str]) -> None:
        """Vet the addresses ``host`` resolved to; any refused address refuses the host."""
        name_allowed = bool(self.allow) and self.allow.matches_name(host)
        for raw in addresses:
            given = ipaddress.ip_address(raw) if isinstance(raw, str) else raw
            forms = _judged_as(given)
            for ip in forms:
                where = host if str(given) == host else f"{host} ({given})"
                if ip != given:
                    where = f"{where}, which embeds {ip},"
                self._refuse_address(where, ip)
            if self.allow and not name_allowed and not any(map(self.allow.matches_address, forms)):
                raise UnsafeUrlError(f"{host} ({given}) is not in COMFYVN_WEBHOOK_ALLOW_HOSTS")

    def _refuse_address(self, where: str, ip: IPAddress) -> None:
        if ip in METADATA_ADDRESSES:
            raise UnsafeUrlError(f"{where} is a cloud metadata address")
        if ip.is_link_local:
            raise UnsafeUrlError(f"{where} is a link-local address")
        if ip.is_unspecified or ip.is_multicast:
            raise UnsafeUrlError(f"{where} is not a unicast address")
        if ip.is_loopback and not self.allow_loopback:
            raise UnsafeUrlError(
                f"{where} is a loopback address and COMFYVN_WEBHOOK_ALLOW_LOOPBACK is off"
            )
        if self.deny.matches_address(ip):
            raise UnsafeUrlError(f"{where} is in COMFYVN_WEBHOOK_DENY_HOSTS")

    # -- with DNS ----------------------------------------------------------------------------
    async def resolve(self, host: str, port: int) -> list[str]:
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
        seen: dict[str, None] = {}
        for info in infos:
            seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
        return list(seen)

    async def check_url_resolved(self, url: str) -> Target:
        """Static checks plus the current DNS answer. A name that does not resolve yet passes:
        the receiver may simply not be up; every delivery checks again when it connects."""
        target = self.check_url(url)
        if target.ip is None:
            try:
                addresses = await self.resolve(target.host, target.port)
            except (OSError, TimeoutError, UnicodeError):
                return target
            self.check_addresses(target.host, addresses)
        return target


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        raise UnsafeUrlError("URL has an invalid port") from None
    if port is None:
        return 443 if parts.scheme.lower() == "https" else 80
    if port == 0:
        raise UnsafeUrlError("URL has an invalid port")
    return port


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
