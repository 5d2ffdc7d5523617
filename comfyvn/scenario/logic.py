"""Conditions and actions over scenario variables addressed by dot paths ('stats.trust').

Values are JSON data. Comparisons never raise: a missing variable or a value of the wrong type
simply fails the test (``neq``/``not_in``/``not_exists`` then hold). Actions that cannot apply
(incrementing a string, setting below a non-object) raise :class:`ScenarioRuntimeError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from comfyvn.core.json_input import DEFAULT_LIMITS

from .errors import ScenarioRuntimeError
from .model import Action, Condition

__all__ = [
    "apply_action",
    "check_condition",
    "first_non_finite",
    "get_path",
    "json_copy",
    "json_kind",
    "non_finite",
    "path_problem",
    "valid_path",
]

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$")
# Variables travel back and forth in the run state, so what the runner builds must stay within
# what the guarded JSON reader accepts: dot paths are short and shallow, a `set` cannot nest a
# value deeper than MAX_VARIABLE_DEPTH (the state wraps variables in two more levels), and a
# number never grows past the reader's digit bound.
MAX_PATH_CHARS = 256
MAX_PATH_PARTS = 16
MAX_VARIABLE_DEPTH = DEFAULT_LIMITS.max_depth - 4
MAX_INT = 10**DEFAULT_LIMITS.max_int_digits - 1
_MISSING = object()


def valid_path(key: str) -> bool:
    return path_problem(key) is None


def path_problem(key: str) -> str | None:
    """Why ``key`` is not a usable dot path, or None."""
    if len(key) > MAX_PATH_CHARS:
        return f"the dot path is {len(key)} characters long; the limit is {MAX_PATH_CHARS}"
    parts = key.count(".") + 1
    if parts > MAX_PATH_PARTS:
        return f"the dot path has {parts} parts; the limit is {MAX_PATH_PARTS}"
    if not _PATH.match(key):
        return f"{key!r} is not a dot path like 'stats.trust' (letters, digits, '_' and '-')"
    return None


def json_copy(value: Any) -> Any:
    """A deep copy of JSON data; several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_copy(v) for v in value]
    return value


def non_finite(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Paths of the NaN and infinite numbers in JSON data. JSON cannot carry them (an answer
    would turn them into null), so scenes, states and variables holding one are refused."""
    if isinstance(value, float):
        if not math.isfinite(value):
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from non_finite(item, (*path, index))


def first_non_finite(value: Any, prefix: str) -> str | None:
    """``prefix.a[0]``: where the first non-finite number in ``value`` is, or None."""
    for path in non_finite(value):
        return prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)
    return None


def get_path(variables: dict[str, Any], key: str) -> Any:
    """The value at ``key``, or the module's private ``_MISSING`` sentinel."""
    current: Any = variables
    for part in key.split("."):
        if not isinstance(current, dict) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    return a == b


def check_condition(cond: Condition, variables: dict[str, Any]) -> bool:
    current = get_path(variables, cond.key)
    op = cond.operator
    if op == "exists":
        return current is not _MISSING
    if op == "not_exists":
        return current is _MISSING
    if op == "eq":
        return current is not _MISSING and _same(current, cond.value)
    if op == "neq":
        return current is _MISSING or not _same(current, cond.value)
    if op in ("in", "not_in"):
        found = current is not _MISSING and any(_same(current, v) for v in cond.value or ())
        return found if op == "in" else not found
    if current is _MISSING or not _is_number(current) or not _is_number(cond.value):
        return False
    if op == "gt":
        return current > cond.value
    if op == "gte":
        return current >= cond.value
    if op == "lt":
        return current < cond.value
    return current <= cond.value  # lte


def apply_action(action: Action, variables: dict[str, Any]) -> None:
    """Apply ``action`` to ``variables`` in place."""
    parts = action.key.split(".")
    parent = variables
    for depth, part in enumerate(parts[:-1]):
        child = parent.get(part, _MISSING)
        if child is _MISSING:
            if action.type == "clear":
                return
            child = parent[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise ScenarioRuntimeError(
                f"cannot {action.type} {action.key!r}: {where!r} is a "
                f"{json_kind(child)}, not an object"
            )
        parent = child
    leaf = parts[-1]
    if action.type == "set":
        parent[leaf] = json_copy(action.value)
    elif action.type == "clear":
        parent.pop(leaf, None)
    else:
        amount = 1 if action.amount is None else action.amount
        current = parent.get(leaf, 0)
        if not _is_number(current):
            raise ScenarioRuntimeError(
                f"cannot {action.type} {action.key!r}: its value is a {json_kind(current)}, "
                "not a number"
            )
        result = current + amount if action.type == "increment" else current - amount
        if (isinstance(result, float) and not math.isfinite(result)) or (
            isinstance(result, int) and abs(result) > MAX_INT
        ):
            raise ScenarioRuntimeError(
                f"cannot {action.type} {action.key!r} by {amount}: the result is not a finite "
                "number"
            )
        parent[leaf] = result


def json_kind(value: Any) -> str:
    """The JSON kind of a value, as error messages name it ("boolean", "list", "object"...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
