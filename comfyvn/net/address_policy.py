"""Where the server may send a request: one policy for webhooks and provider checks alike.

A request the server makes on someone's behalf must not become a way to read instance
credentials or reach the host's own services in disguise, so some destinations are always
refused, whatever the configuration:

- cloud metadata endpoints (``169.254.169.254``, ``fd00:ec2::254``, ``100.100.100.200``,
  ``168.63.129.16``, ``metadata.google.internal``...);
- link-local addresses (``169.254.0.0/16``, ``fe80::/10``);
- unspecified addresses (``0.0.0.0/8``, ``::``: connecting to them reaches the local host),
  multicast and the broadcast address;
- every other spelling of those: the legacy numeric forms ``getaddrinfo`` still accepts
  (``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376``, ``169.254.43518``, ``0``; see
  :mod:`.legacy_ipv4`) and IPv6 addresses that carry an IPv4 address (mapped, NAT64, 6to4,
  IPv4-compatible, Teredo), which are judged as the IPv4 address too.

Loopback is allowed by default (a local ComfyUI, a modder's webhook receiver). Operators narrow
the rest with entries (host names, ``*.suffix`` wildcards, IP addresses, CIDR networks):
``COMFYVN_OUTBOUND_DENY`` refuses what it lists; ``COMFYVN_OUTBOUND_ALLOW``, when set, admits
only what it lists. ``COMFYVN_WEBHOOK_DENY_HOSTS`` / ``COMFYVN_WEBHOOK_ALLOW_HOSTS`` are aliases
and ``COMFYVN_WEBHOOK_ALLOW_LOOPBACK=0`` refuses loopback. The allow list never re-admits an
always-refused address. Refusals are :class:`RefusedAddress` errors whose message names the
rule (and the variable, for list entries).

The checks run when a URL is registered (:meth:`AddressPolicy.check_url`, plus the current DNS
answer in :meth:`AddressPolicy.check_url_resolved`) and again on every connection, on the very
addresses the socket connects to (:mod:`.transport`), so a DNS answer that changes later cannot
steer a request to a refused address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

import httpx

from .legacy_ipv4 import parse_legacy_ipv4

__all__ = [
    "DEFAULT_ALLOW_SOURCE",
    "DEFAULT_DENY_SOURCE",
    "LOOPBACK_SOURCE",
    "MAX_URL_LENGTH",
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "AddressPolicy",
    "IPAddress",
    "RefusedAddress",
    "Rule",
    "Target",
    "canonical_host",
    "host_address",
    "redact_url",
]

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT_S = 3.0

DEFAULT_ALLOW_SOURCE = "COMFYVN_OUTBOUND_ALLOW"
DEFAULT_DENY_SOURCE = "COMFYVN_OUTBOUND_DENY"
LOOPBACK_SOURCE = "COMFYVN_WEBHOOK_ALLOW_LOOPBACK"

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
        "fd20:ce::254",  # GCP metadata over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure WireServer
        "192.0.0.192",  # Oracle Cloud (classic)
    )
)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # "this host on this network": reaches us
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class Rule:
    """The ``rule`` a :class:`RefusedAddress` names (stable strings for code and tests)."""

    URL = "url"
    CLOUD_METADATA = "cloud_metadata"
    LINK_LOCAL = "link_local"
    UNSPECIFIED = "unspecified"
    MULTICAST = "multicast"
    BROADCAST = "broadcast"
    LOOPBACK = "loopback"
    DENY_LIST = "deny_list"
    ALLOW_LIST = "allow_list"


class RefusedAddress(ValueError):
    """The server may not send a request there; the message says why, ``rule`` which rule."""

    def __init__(self, message: str, rule: str = Rule.URL) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int
    ip: IPAddress | None  # set when the host is an IP address in any of its spellings


def canonical_host(host: str) -> str:
    """The host as the rules compare it: NFKC-normalised (full-width digits and letters become
    ASCII, as IDNA maps them), ideographic full stops as dots, lower-case, no brackets and no
    trailing dot. Full-width ``169.254.169.254`` is judged as the ASCII address."""
    text = unicodedata.normalize("NFKC", host).replace("\u3002", ".")
    return text.strip().strip("[]").lower().rstrip(".")


def host_address(host: str) -> IPAddress | None:
    """The address ``host`` spells (a literal, or a legacy numeric form), else ``None``.

    A zone id (``fe80::1%eth0``) is dropped: the rules judge the address itself."""
    text = canonical_host(host).split("%", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return parse_legacy_ipv4(text)


_NAME_FORBIDDEN = frozenset(" /\\@?#*:[]%,")


class _HostList:
    """Entries from one or more variables; a match says which variable listed the entry."""

    def __init__(self, sources: Mapping[str, Iterable[str]]) -> None:
        self._names: dict[str, str] = {}
        self._suffixes: list[tuple[str, str]] = []
        self._networks: list[tuple[IPNetwork, str]] = []
        self.sources: tuple[str, ...] = ()
        used: list[str] = []
        for source, entries in sources.items():
            for raw in entries:
                try:
                    added = self._add(raw, source)
                except ValueError as exc:
                    raise ValueError(f"{source}: {exc}") from None
                if added and source not in used:
                    used.append(source)
        self.sources = tuple(used)

    def _add(self, raw: str, source: str) -> bool:
        entry = canonical_host(raw)
        if not entry:
            return False
        if "/" in entry and host_address(entry.split("/", 1)[0]) is not None:
            try:
                self._networks.append((ipaddress.ip_network(entry, strict=False), source))
            except ValueError:
                raise ValueError(f"{raw.strip()!r} is not a valid CIDR network") from None
            return True
        address = host_address(entry)
        if address is not None:
            self._networks.append((ipaddress.ip_network(address), source))
            return True
        name = entry[2:] if entry.startswith("*.") else entry
        if (
            not name
            or any(ch in _NAME_FORBIDDEN or ord(ch) < 33 for ch in name)
            or "" in name.split(".")
        ):
            raise ValueError(
                f"{raw.strip()!r} is not a host name, *.wildcard, IP address or CIDR network"
            )
        if entry.startswith("*."):
            self._suffixes.append((entry[1:], source))
        else:
            self._names.setdefault(entry, source)
        return True

    def __bool__(self) -> bool:
        return bool(self._names or self._suffixes or self._networks)

    @property
    def has_networks(self) -> bool:
        return bool(self._networks)

    @property
    def label(self) -> str:
        return " / ".join(self.sources)

    def match_name(self, host: str) -> str | None:
        if host in self._names:
            return self._names[host]
        return next((src for suffix, src in self._suffixes if host.endswith(suffix)), None)

    def match_address(self, ip: IPAddress) -> str | None:
        return next(
            (src for net, src in self._networks if ip.version == net.version and ip in net), None
        )


# IPv6 prefixes whose addresses carry an IPv4 address in their low 32 bits: on a network with
# NAT64 (or SIIT) they reach that IPv4 host. Local-use NAT64 prefixes are /96s in practice.
_LOW32_PREFIXES = tuple(
    ipaddress.IPv6Network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96")
)
# IPv4-compatible addresses (``::a.b.c.d``, deprecated) share ``::/96`` with ``::``, ``::1`` and
# other unassigned low values; only those spelling an address outside 0.0.0.0/8 embed one.
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _judged_as(ip: IPAddress) -> list[IPAddress]:
    """The address, plus the IPv4 address it embeds (mapped, NAT64, 6to4, compatible, Teredo).

    Every form is vetted, so ``[64:ff9b::a9fe:a9fe]`` is refused like ``169.254.169.254``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return [ip]
    embedded = ip.ipv4_mapped or ip.sixtofour
    if embedded is None and ip.teredo is not None:
        embedded = ip.teredo[1]  # the client's address; the server part is a relay
    if embedded is None and (
        any(ip in net for net in _LOW32_PREFIXES) or (ip in _COMPATIBLE and int(ip) >= 1 << 24)
    ):
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


class AddressPolicy:
    """The rules above. ``allow_hosts`` / ``deny_hosts`` take entries, or a mapping from the
    variable that set them to its entries (so a refusal can name the variable); a malformed
    entry is a ``ValueError`` naming it."""

    def __init__(
        self,
        *,
        allow_hosts: Iterable[str] | Mapping[str, Iterable[str]] = (),
        deny_hosts: Iterable[str] | Mapping[str, Iterable[str]] = (),
        allow_loopback: bool = True,
    ) -> None:
        if not isinstance(allow_hosts, Mapping):
            allow_hosts = {DEFAULT_ALLOW_SOURCE: allow_hosts}
        if not isinstance(deny_hosts, Mapping):
            deny_hosts = {DEFAULT_DENY_SOURCE: deny_hosts}
        self.allow = _HostList(allow_hosts)
        self.deny = _HostList(deny_hosts)
        self.allow_loopback = allow_loopback

    # -- static checks (no network) ----------------------------------------------------------
    def check_url(self, url: str) -> Target:
        """Parse and vet a URL without touching the network; raises :class:`RefusedAddress`.

        The host is judged as :func:`urllib.parse.urlsplit` reads it and as httpx (which sends
        the request) reads it, so a URL the two parse differently cannot slip through."""
        if len(url) > MAX_URL_LENGTH:
            raise RefusedAddress(f"URL is longer than {MAX_URL_LENGTH} characters")
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
            raise RefusedAddress("URL must not contain whitespace or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            shown = scheme or "none"
            raise RefusedAddress(f"only http and https URLs can be used (scheme: {shown})")
        host = canonical_host(parts.hostname or "")
        if not host:
            raise RefusedAddress("URL has no host")
        port = _port(parts)
        ip = self.check_host(host)
        try:
            sent_host = canonical_host(httpx.URL(url).host)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise RefusedAddress(f"URL is not valid: {exc}") from None
        if sent_host != host:
            if not sent_host:
                raise RefusedAddress("URL has no host")
            self.check_host(sent_host)
        return Target(scheme, host, port, ip)

    def check_host(self, host: str) -> IPAddress | None:
        """Vet a host as written (name rules, or the address it spells); its address if any."""
        host = canonical_host(host)
        ip = host_address(host)
        if ip is not None:
            self.check_addresses(host, [ip])
            return ip
        if host in METADATA_NAMES:
            raise RefusedAddress(f"host {host!r} is a cloud metadata endpoint", Rule.CLOUD_METADATA)
        source = self.deny.match_name(host)
        if source:
            raise RefusedAddress(f"host {host!r} is in {source}", Rule.DENY_LIST)
        if self.allow and not self.allow.match_name(host) and not self.allow.has_networks:
            raise RefusedAddress(f"host {host!r} is not in {self.allow.label}", Rule.ALLOW_LIST)
        return None

    def check_addresses(self, host: str, addresses: Iterable[IPAddress | str]) -> None:
        """Vet the addresses ``host`` resolved to; any refused address refuses the host."""
        host = canonical_host(host)
        name_allowed = bool(self.allow) and self.allow.match_name(host) is not None
        for raw in addresses:
            given = ipaddress.ip_address(raw.split("%", 1)[0]) if isinstance(raw, str) else raw
            forms = _judged_as(given)
            for ip in forms:
                where = host if _literal(host) == given else f"{host} ({given})"
                if ip != given:
                    where = f"{where}, which embeds {ip},"
                self._refuse_address(where, ip)
            allowed = any(self.allow.match_address(f) for f in forms)
            if self.allow and not name_allowed and not allowed:
                raise RefusedAddress(
                    f"{host} ({given}) is not in {self.allow.label}", Rule.ALLOW_LIST
                )

    def _refuse_address(self, where: str, ip: IPAddress) -> None:
        if ip in METADATA_ADDRESSES:
            raise RefusedAddress(f"{where} is a cloud metadata address", Rule.CLOUD_METADATA)
        if ip.is_link_local:
            raise RefusedAddress(f"{where} is a link-local address", Rule.LINK_LOCAL)
        if ip.is_unspecified or (ip.version == 4 and ip in _THIS_NETWORK):
            raise RefusedAddress(
                f"{where} is an unspecified address (0.0.0.0/8 or ::), not a unicast address",
                Rule.UNSPECIFIED,
            )
        if ip.is_multicast:
            raise RefusedAddress(
                f"{where} is a multicast address, not a unicast address", Rule.MULTICAST
            )
        if ip == _BROADCAST:
            raise RefusedAddress(
                f"{where} is the broadcast address, not a unicast address", Rule.BROADCAST
            )
        if ip.is_loopback and not self.allow_loopback:
            raise RefusedAddress(
                f"{where} is a loopback address and loopback is off ({LOOPBACK_SOURCE}=0)",
                Rule.LOOPBACK,
            )
        source = self.deny.match_address(ip)
        if source:
            raise RefusedAddress(f"{where} is in {source}", Rule.DENY_LIST)

    # -- with DNS ----------------------------------------------------------------------------
    async def resolve(self, host: str, port: int) -> list[str]:
        """The addresses ``host`` resolves to now, in the resolver's order, without duplicates."""
        loop = asyncio.get_running_loop()
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
        )
        seen: dict[str, None] = {}
        for info in infos:
            seen.setdefault(str(info[4][0]).split("%", 1)[0], None)
        return list(seen)

    async def addresses_for_connect(self, host: str, port: int) -> list[str]:
        """What a socket may connect to for ``host``: the host is vetted as written (no DNS
        query for a refused name), then every address of the current answer. Raises
        :class:`RefusedAddress`, or ``OSError``/``TimeoutError`` when it does not resolve."""
        self.check_host(host)
        addresses = await self.resolve(host, port)
        self.check_addresses(host, addresses)
        return addresses

    async def check_url_resolved(self, url: str) -> Target:
        """Static checks plus the current DNS answer. A name that does not resolve yet passes:
        the service may simply not be up; every connection checks again."""
        target = self.check_url(url)
        if target.ip is None:
            try:
                addresses = await self.resolve(target.host, target.port)
            except (OSError, TimeoutError, UnicodeError):
                return target
            self.check_addresses(target.host, addresses)
        return target


def _literal(host: str) -> IPAddress | None:
    """``host`` as a standard IP literal (not a legacy numeric form, whose address is shown)."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _port(parts: SplitResult) -> int:
    try:
        port = parts.port
    except ValueError:
        raise RefusedAddress("URL has an invalid port") from None
    if port is None:
        return 443 if parts.scheme.lower() == "https" else 80
    if port == 0:
        raise RefusedAddress("URL has an invalid port")
    return port
