"""The built-in ``echo`` provider: always green, no network. It lets a fresh studio show a
working row in the panel and lets tests check the plumbing without a fake server."""

from __future__ import annotations

from .base import Adapter, Outcome

__all__ = ["EchoAdapter"]


class EchoAdapter(Adapter):
    kind = "echo"
    uses_key = False

    async def health(self) -> Outcome:
        return Outcome(
            "green",
            "ok",
            "built-in echo provider: always up (no network)",
            details={"builtin": True},
        )
