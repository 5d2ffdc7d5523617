"""Outbound requests: one address policy and one guarded transport for everything the server
sends (webhook deliveries, provider checks).

It sits beside :mod:`comfyvn.core` at the bottom of the layers: it imports only ``core`` (for
:class:`~comfyvn.core.env.EnvError`), and the components (webhooks, providers) import it.
:mod:`.address_policy` holds the rules, :mod:`.legacy_ipv4` reads the numeric host forms
``inet_aton`` accepts, :mod:`.transport` re-checks every connection, and :mod:`.shared` makes
the server's single policy object from its settings.
"""

from .address_policy import (
    MAX_URL_LENGTH,
    METADATA_ADDRESSES,
    METADATA_NAMES,
    AddressPolicy,
    RefusedAddress,
    Rule,
    Target,
    canonical_host,
    host_address,
    redact_url,
)
from .legacy_ipv4 import parse_legacy_ipv4
from .shared import policy_from_settings
from .transport import GuardedBackend, GuardedTransport, guarded_transport

__all__ = [
    "MAX_URL_LENGTH",
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "AddressPolicy",
    "GuardedBackend",
    "GuardedTransport",
    "RefusedAddress",
    "Rule",
    "Target",
    "canonical_host",
    "guarded_transport",
    "host_address",
    "parse_legacy_ipv4",
    "policy_from_settings",
    "redact_url",
]
