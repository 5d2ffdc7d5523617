"""Knobs for the provider checks, read from ``COMFYVN_PROVIDER_*`` so tests can shrink them."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from comfyvn.core.env import env_number_or_default

__all__ = ["ProviderSettings"]

log = logging.getLogger("comfyvn.providers")


def _env_number(name: str, default: float, minimum: float) -> float:
    return env_number_or_default(name, default, minimum=minimum, log=log)


DEFAULT_TIMEOUT_S = 5.0  # per provider check; the whole run costs about the slowest one
DEFAULT_CONCURRENCY = 64  # checks in flight at once
DEFAULT_HISTORY = 50  # checks kept per provider for the panel's sparkline


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    timeout_s: float = DEFAULT_TIMEOUT_S
    concurrency: int = DEFAULT_CONCURRENCY
    history_size: int = DEFAULT_HISTORY
    # Empty: any host. Otherwise only these hosts (exact, or "*.domain") are ever contacted;
    # pins checks to loopback in tests and fuzzing, or to known hosts on a locked-down studio.
    allow_hosts: tuple[str, ...] = ()

    def host_allowed(self, host: str | None) -> bool:
        if not self.allow_hosts:
            return True
        if not host:
            return False
        host = host.lower().rstrip(".")
        for pattern in self.allow_hosts:
            if pattern.startswith("*."):
                if host.endswith(pattern[1:]):
                    return True
            elif host == pattern:
                return True
        return False

    @classmethod
    def from_env(cls) -> ProviderSettings:
        return cls(
            timeout_s=_env_number("COMFYVN_PROVIDER_TIMEOUT", DEFAULT_TIMEOUT_S, 0.05),
            concurrency=int(_env_number("COMFYVN_PROVIDER_CONCURRENCY", DEFAULT_CONCURRENCY, 1)),
            history_size=int(_env_number("COMFYVN_PROVIDER_HISTORY", DEFAULT_HISTORY, 1)),
            allow_hosts=tuple(
                h.strip().lower().strip("[]")
                for h in os.environ.get("COMFYVN_PROVIDER_ALLOW_HOSTS", "").split(",")
                if h.strip()
            ),
        )
