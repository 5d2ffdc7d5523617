"""Where a delivery goes after an attempt: the retry schedule, ``Retry-After``, 410 and
exhaustion, in one function shared by the embedded worker and the shared-bus delivery, so both
follow exactly the same rules."""

from __future__ import annotations

import time

from .config import WebhookConfig
from .models import Attempt
from .store import Outcome

__all__ = ["decide"]


def decide(
    cfg: WebhookConfig, event: str, tries_before: int, attempt: Attempt, *, manual: bool
) -> Outcome:
    """The outcome of ``attempt`` (also sets ``attempt.outcome``). ``tries_before``: attempts
    of the schedule already made (a manual redeliver counts as the first again)."""
    now = time.time()
    schedule = cfg.retry_schedule
    tries = 1 if manual else tries_before + 1
    if event == "ping":  # diagnostic: never retried, never changes the endpoint
        attempt.outcome = "delivered" if attempt.ok else "failed"
        return Outcome(attempt, attempt.outcome, tries, None, "none")
    if attempt.ok:
        attempt.outcome = "delivered"
        return Outcome(attempt, "delivered", tries, None, "success")
    if attempt.status_code == 410:
        attempt.outcome = "disabled"
        return Outcome(attempt, "failed", tries, None, "gone")
    if tries < len(schedule):
        delay = schedule[tries]
        if attempt.retry_after is not None:
            delay = max(delay, min(attempt.retry_after, cfg.retry_after_max_s))
        attempt.outcome = "retry"
        return Outcome(attempt, "pending", tries, now + delay, "retry")
    attempt.outcome = "failed"
    # A manual redeliver that fails is not an "exhausted" delivery: the operator asked once.
    return Outcome(attempt, "failed", tries, None, "retry" if manual else "exhausted")
