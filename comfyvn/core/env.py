"""Reading ``COMFYVN_*`` knobs from the environment: one parser, errors that name the variable.

Server-side knobs are strict (a typo stops start-up with the variable's name, rather than
quietly running with a default); the Studio and the provider checks use the lenient form, which
logs the problem and keeps the default.
"""

from __future__ import annotations

import logging
import math
import os
import re

__all__ = [
    "EnvError",
    "env_flag",
    "env_list",
    "env_lists",
    "env_names",
    "env_number",
    "env_number_or_default",
]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class EnvError(ValueError):
    """A ``COMFYVN_*`` variable holds a value that cannot be used; the message names it."""


def env_flag(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise EnvError(f"{name}={raw!r} is not a flag; use 1/0, true/false, yes/no or on/off")


def env_list(name: str) -> tuple[str, ...]:
    """A comma-separated variable as its non-empty, trimmed items (empty when unset)."""
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def env_lists(*names: str) -> dict[str, tuple[str, ...]]:
    """:func:`env_list` of every variable that is set, keyed by its name, in the order given.

    For knobs with aliases (an old name kept working next to the new one): the items of all of
    them count, and a message can still name the variable an item came from."""
    found = {name: env_list(name) for name in names}
    return {name: items for name, items in found.items() if items}


_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def env_names(name: str) -> tuple[str, ...]:
    """:func:`env_list` whose items must be environment variable names (``MY_KEY``).

    For allow-lists of variables: a malformed item (``MY-KEY``, ``MY_*``) is an error rather
    than an entry that silently matches nothing."""
    items = env_list(name)
    bad = [item for item in items if not _VARIABLE_NAME.fullmatch(item)]
    if bad:
        raise EnvError(
            f"{name} lists {bad[0]!r}, which is not an environment variable name; "
            "give comma-separated names such as MY_KEY,OTHER_KEY (no patterns)"
        )
    return items


def env_number(
    name: str, default: float, *, minimum: float | None = None, integer: bool = False
) -> float:
    """The variable as a number (an ``int`` when ``integer``), or ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value: float = int(raw) if integer else float(raw)
    except ValueError:
        raise EnvError(f"{name}={raw!r} is not {kind}") from None
    if not math.isfinite(value):
        raise EnvError(f"{name}={raw!r} is not {kind}")
    if minimum is not None and value < minimum:
        raise EnvError(f"{name}={raw} is below the minimum of {minimum}")
    return value


def env_number_or_default(
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    integer: bool = False,
    log: logging.Logger,
) -> float:
    try:
        return env_number(name, default, minimum=minimum, integer=integer)
    except EnvError as exc:
        log.warning("%s; using the default %s", exc, default)
        return default
