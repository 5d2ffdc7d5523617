"""Webhook knobs from ``COMFYVN_WEBHOOK_*`` environment variables.

Read once at start-up. A malformed value stops the server with a message naming the variable,
rather than silently falling back to a default the operator did not ask for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_RETRY_SCHEDULE", "ConfigError", "WebhookConfig"]

# Seconds to wait before each attempt: the first is immediate, then 5 s, 5 min, 30 min, 2 h,
# 5 h and 10 h (about 17.6 h in all), after which the delivery is exhausted.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000)


class ConfigError(ValueError):
    """An environment variable holds a value the webhook forwarder cannot use."""


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    timeout_s: float = 15.0
    retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    disable_after: int = 5
    concurrency: int = 16
    per_endpoint: int = 4
    # The server judges webhook URLs with its shared outbound policy (comfyvn.net, made from
    # Settings, where these variables are aliases of COMFYVN_OUTBOUND_*); these three only
    # make the policy of a WebhookManager built without one (tools, tests).
    allow_hosts: tuple[str, ...] = ()
    deny_hosts: tuple[str, ...] = ()
    allow_loopback: bool = True
    rotation_grace_s: float = 24 * 3600.0
    retry_after_max_s: float = 24 * 3600.0
    poll_s: float = 5.0
    log_max_age_s: float = 7 * 24 * 3600.0
    max_subscriptions: int = 100
    response_bytes: int = 1024
    # On a shared bus (--bus): how long a node may hold a delivery without a sign of life
    # before another node takes it over (a node that died mid-send). Sends longer than this
    # stay owned: the node reports progress every third of it.
    ack_wait_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig:
        env = os.environ if env is None else env
        d = cls()  # slots: the class attributes are descriptors, not the defaults
        return cls(
            timeout_s=_positive(env, "COMFYVN_WEBHOOK_TIMEOUT", d.timeout_s),
            retry_schedule=_schedule(env, "COMFYVN_WEBHOOK_RETRY_SCHEDULE"),
            disable_after=int(_positive(env, "COMFYVN_WEBHOOK_DISABLE_AFTER", d.disable_after)),
            concurrency=int(_positive(env, "COMFYVN_WEBHOOK_CONCURRENCY", d.concurrency)),
            per_endpoint=int(_positive(env, "COMFYVN_WEBHOOK_PER_ENDPOINT", d.per_endpoint)),
            allow_hosts=_hosts(env, "COMFYVN_WEBHOOK_ALLOW_HOSTS"),
            deny_hosts=_hosts(env, "COMFYVN_WEBHOOK_DENY_HOSTS"),
            allow_loopback=_flag(env, "COMFYVN_WEBHOOK_ALLOW_LOOPBACK", True),
            rotation_grace_s=_positive(
                env, "COMFYVN_WEBHOOK_ROTATION_GRACE", d.rotation_grace_s, zero_ok=True
            ),
            retry_after_max_s=_positive(
                env, "COMFYVN_WEBHOOK_RETRY_AFTER_MAX", d.retry_after_max_s, zero_ok=True
            ),
            poll_s=_positive(env, "COMFYVN_WEBHOOK_POLL", d.poll_s),
            log_max_age_s=_positive(env, "COMFYVN_WEBHOOK_LOG_MAX_AGE", d.log_max_age_s),
            max_subscriptions=int(
                _positive(env, "COMFYVN_WEBHOOK_MAX_SUBSCRIPTIONS", d.max_subscriptions)
            ),
            ack_wait_s=_positive(env, "COMFYVN_WEBHOOK_ACK_WAIT", d.ack_wait_s),
        )

    @property
    def max_attempts(self) -> int:
        return len(self.retry_schedule)


def _positive(env: Mapping[str, str], name: str, default: float, zero_ok: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not zero_ok) or value != value:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


def _schedule(env: Mapping[str, str], name: str) -> tuple[float, ...]:
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_RETRY_SCHEDULE
    try:
        steps = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(
            f"{name} must be comma-separated seconds such as '0,5,300', got {raw!r}"
        ) from None
    if not steps or any(s < 0 or s != s for s in steps):
        raise ConfigError(f"{name} needs at least one non-negative delay, got {raw!r}")
    return steps


def _hosts(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in env.get(name, "").split(",") if h.strip())


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be 1/0 (or true/false), got {raw!r}")
