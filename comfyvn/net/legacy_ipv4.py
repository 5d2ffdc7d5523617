"""The numeric host forms the C library still accepts as IPv4 addresses (``inet_aton``).

``ipaddress`` only knows the four-decimal dotted quad, but ``getaddrinfo`` (glibc, musl, BSD)
turns ``2852039166``, ``0xa9fea9fe``, ``0251.0376.0251.0376`` or ``169.254.43518`` into
169.254.169.254 without any DNS. A URL checker that treats them as host *names* lets them past,
and the socket then connects to the address they encode. This parser reads them the way
``inet_aton`` does, so the policy judges the address the socket would really reach.

The rules (glibc ``inet_aton``, which ``getaddrinfo`` uses for numeric hosts):

- one to four parts separated by ``.``, none empty;
- each part is hexadecimal after ``0x``/``0X`` (at least one digit), octal when it starts with
  ``0``, decimal otherwise; ASCII digits only, no sign;
- ``a`` is the whole 32-bit address, ``a.b`` is 8.24 bits, ``a.b.c`` is 8.8.16 bits, ``a.b.c.d``
  is 8.8.8.8 bits: every part but the last is at most 255, the last fills the rest.
"""

from __future__ import annotations

import ipaddress

__all__ = ["parse_legacy_ipv4"]

_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")
_DEC = frozenset("0123456789")


def _part(text: str) -> int | None:
    if text[:2] in ("0x", "0X"):
        digits, base, allowed = text[2:], 16, _HEX
    elif len(text) > 1 and text[0] == "0":
        digits, base, allowed = text[1:], 8, _OCT
    else:
        digits, base, allowed = text, 10, _DEC
    if not digits or not set(digits) <= allowed:
        return None
    return int(digits, base)


def parse_legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address ``inet_aton`` reads in ``host``, or ``None`` when it reads none.

    Plain dotted quads parse too (``127.0.0.1``); callers that need to know whether a form was
    ambiguous compare with :func:`ipaddress.ip_address`.
    """
    if not host or len(host) > 255 or not host.isascii():
        return None
    pieces = host.split(".")
    if len(pieces) > 4:
        return None
    values: list[int] = []
    for piece in pieces:
        value = _part(piece)
        if value is None:
            return None
        values.append(value)
    *head, last = values
    if any(v > 0xFF for v in head):
        return None
    if last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for index, value in enumerate(head):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)
