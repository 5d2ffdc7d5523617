"""What attempts do to their subscription on a shared bus: the rules of the SQLite store
(:meth:`WebhookStore.record`), written to the KV bucket with compare-and-set.

Successes and retries only set timestamps (and a success resets the failure count), so, as
the embedded store does per batch, a run of them comes down to the last of each: they are
gathered per subscription and written at most every ``FLUSH_S``, which keeps a healthy
endpoint's deliveries free of KV writes. A success that resets a failure count, a 410 and an
exhausted delivery change what the subscription does next, so they are written at once, after
the stamps gathered before them (order kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

from ..models import Subscription
from ..store import Outcome
from .catalog import Catalog

__all__ = ["Effects"]

log = logging.getLogger("comfyvn.webhooks")

FLUSH_S = 0.5
GONE_REASON = "the receiver answered 410 Gone"


class Effects:
    def __init__(self, catalog: Catalog, disable_after: int) -> None:
        self.catalog = catalog
        self.disable_after = disable_after
        self._stamps: dict[str, list[float | None]] = {}  # sub id -> [success_at, failure_at]
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def apply(self, sub_id: str, outcome: Outcome) -> bool:
        """Record the effect of one attempt; True when it disabled the subscription."""
        at = outcome.attempt.started_at
        if outcome.effect == "success":
            self._stamps.setdefault(sub_id, [None, None])[0] = at
            known = self.catalog.get(sub_id)
            if known is not None and known.consecutive_failures:  # a reset: at once
                stamps = self._stamps.pop(sub_id)
                await self.catalog.mutate(sub_id, lambda s: _stamped(s, *stamps))
        elif outcome.effect == "retry":
            self._stamps.setdefault(sub_id, [None, None])[1] = at
        elif outcome.effect in ("gone", "exhausted"):
            stamps = self._stamps.pop(sub_id, [None, None])
            disabled: list[bool] = [False]

            def change(sub: Subscription) -> Subscription:
                sub = _stamped(sub, *stamps)
                sub, disabled[0] = self._effect(sub, outcome)
                return sub

            await self.catalog.mutate(sub_id, change)
            if disabled[0]:
                reason = (
                    GONE_REASON
                    if outcome.effect == "gone"
                    else "consecutive deliveries failed after every retry"
                )
                log.warning("webhook %s disabled: %s", sub_id, reason)
            return disabled[0]
        return False

    def _effect(self, sub: Subscription, o: Outcome) -> tuple[Subscription, bool]:
        at = o.attempt.started_at
        if o.effect == "gone":
            if not sub.enabled:
                return sub, False
            changed = dataclasses.replace(
                sub,
                enabled=False,
                disabled_reason=GONE_REASON,
                last_failure_at=_later(sub.last_failure_at, at),
                updated_at=at,
            )
            return changed, True
        failures = sub.consecutive_failures + 1
        sub = dataclasses.replace(
            sub, consecutive_failures=failures, last_failure_at=_later(sub.last_failure_at, at)
        )
        if sub.enabled and failures >= self.disable_after:
            reason = (
                f"{self.disable_after} consecutive deliveries failed after every retry "
                "(COMFYVN_WEBHOOK_DISABLE_AFTER)"
            )
            return dataclasses.replace(
                sub, enabled=False, disabled_reason=reason, updated_at=at
            ), True
        return sub, False

    async def flush(self) -> None:
        stamps, self._stamps = self._stamps, {}
        for sub_id, (success_at, failure_at) in stamps.items():
            try:
                await self.catalog.mutate(
                    sub_id, lambda s, a=success_at, b=failure_at: _stamped(s, a, b)
                )
            except Exception as exc:  # kept for the next flush unless newer ones came
                log.warning("webhook %s: could not record its last results: %s", sub_id, exc)
                self._stamps.setdefault(sub_id, [success_at, failure_at])

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            if self._stamps:
                await self.flush()


def _stamped(sub: Subscription, success_at: float | None, failure_at: float | None) -> Subscription:
    """Stamps from several nodes arrive in any order: each timestamp only moves forward, and
    a success resets the failure count only if it started after the last recorded failure
    (a delayed success must not erase an exhaustion that came after it)."""
    if success_at is not None:
        if sub.consecutive_failures and success_at > (sub.last_failure_at or 0.0):
            sub = dataclasses.replace(sub, consecutive_failures=0)
        sub = dataclasses.replace(sub, last_success_at=_later(sub.last_success_at, success_at))
    if failure_at is not None:
        sub = dataclasses.replace(sub, last_failure_at=_later(sub.last_failure_at, failure_at))
    return sub


def _later(current: float | None, new: float) -> float:
    return new if current is None else max(current, new)
