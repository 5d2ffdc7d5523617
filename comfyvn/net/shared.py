"""The server's one policy object, made from its settings.

The app factory makes it once (``Services.outbound``) and hands it to every component that
sends requests (webhooks, providers), so all of them are judged by the same object.
"""

from __future__ import annotations

from typing import Any

from comfyvn.core.env import EnvError

from .address_policy import AddressPolicy

__all__ = ["policy_from_settings"]


def policy_from_settings(settings: Any) -> AddressPolicy:
    """The policy ``COMFYVN_OUTBOUND_*`` (and the webhook aliases) ask for; a malformed entry
    is an :class:`EnvError` naming the variable and the entry, which stops the server."""
    try:
        return AddressPolicy(
            allow_hosts=settings.outbound_allow,
            deny_hosts=settings.outbound_deny,
            allow_loopback=settings.outbound_allow_loopback,
        )
    except ValueError as exc:
        raise EnvError(str(exc)) from None
