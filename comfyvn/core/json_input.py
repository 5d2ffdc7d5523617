"""The one guarded JSON reader for everything the server parses from outside.

Request bodies, form fields (an asset's ``meta``), WebSocket messages and files a user may edit
all go through :func:`read_json`, so one set of bounds holds everywhere: size, nesting depth,
integer digits, no NaN/Infinity, no lone surrogates. Whatever passes can be stored in SQLite,
serialized again by ``json.dumps`` and read back by this same reader.

Why not only ``json.loads``: it accepts ``NaN`` and ``1e999`` (infinity), lone surrogate escapes
that later fail to encode (``"\\ud800"``), integers of thousands of digits that ``json.dumps``
then refuses, and raises ``RecursionError`` at about a thousand levels. Each of these surfaced as
a 500 or a dropped socket far from the parse.

Speed: the common document is parsed by the C scanner with no Python callback. The exact walk
(depth, digits, surrogates, finite floats) runs only when a cheap scan of the text says a bound
could be exceeded, so small bodies pay two ``str.count`` calls and three regex searches.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_LIMITS",
    "FILE_LIMITS",
    "JsonInputError",
    "JsonLimits",
    "check_json_value",
    "json_depth",
    "read_json",
]


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_bytes: int = 1024 * 1024
    max_depth: int = 64  # arrays and objects inside one another
    max_int_digits: int = 64  # JSON has no use for more; Python refuses > 4300 anyway


DEFAULT_LIMITS = JsonLimits()
# Files in the data dir (providers.json, sidecars, scene files) are larger but just as bounded.
FILE_LIMITS = JsonLimits(max_bytes=16 * 1024 * 1024)


class JsonInputError(ValueError):
    """Refused JSON. ``reason`` is a stable code; the message names the problem and where.

    ``reason`` is one of ``too_large``, ``encoding``, ``syntax``, ``too_deep``, ``number`` and
    ``surrogate``, so a caller can pick its status (413 for ``too_large``) or close code.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


# Cheap scans that decide whether the exact walk must run (false positives only cost a walk).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONG_EXPONENT = re.compile(r"[eE][+-]?[0-9]{3}")


def read_json(
    data: bytes | bytearray | str, limits: JsonLimits = DEFAULT_LIMITS, *, what: str = "body"
) -> Any:
    """Parse ``data`` within ``limits``; raises :class:`JsonInputError` naming ``what``."""
    if len(data) > limits.max_bytes:
        raise JsonInputError(
            f"{what} is {len(data)} bytes; the limit is {limits.max_bytes} bytes", "too_large"
        )
    if isinstance(data, str):
        text = data
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise JsonInputError(
                    f"{what} holds a lone surrogate (character {exc.start}); send valid Unicode",
                    "surrogate",
                ) from None
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JsonInputError(
                f"{what} is not valid UTF-8 (byte {exc.start}); JSON must be UTF-8", "encoding"
            ) from None
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except JsonInputError as exc:
        raise JsonInputError(f"{what}: {exc}", exc.reason) from None
    except RecursionError:
        raise JsonInputError(
            f"{what} nests deeper than {limits.max_depth} levels", "too_deep"
        ) from None
    except json.JSONDecodeError as exc:
        raise JsonInputError(
            f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            "syntax",
        ) from None
    except ValueError:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise JsonInputError(
            f"{what} holds an integer of more than {limits.max_int_digits} digits", "number"
        ) from None
    if (
        text.count("[") + text.count("{") > limits.max_depth
        or _SURROGATE_ESCAPE.search(text)
        or _LONG_EXPONENT.search(text)
        or _has_digit_run(text, limits.max_int_digits)
    ):
        check_json_value(value, limits, what=what)
    return value


def check_json_value(
    value: Any, limits: JsonLimits = DEFAULT_LIMITS, *, what: str = "value"
) -> None:
    """Hold already-parsed JSON data to the reader's bounds (iteratively: no recursion limit)."""
    int_bound = 10**limits.max_int_digits
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        item, depth, path = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            if depth > limits.max_depth:
                raise JsonInputError(
                    f"{what} nests deeper than {limits.max_depth} levels", "too_deep"
                )
            if isinstance(item, dict):
                for key, child in item.items():
                    child_path = f"{path}.{key if _printable(key) else '?'}"
                    _check_text(key, what, child_path)
                    stack.append((child, depth, child_path))
            else:
                stack.extend((child, depth, f"{path}[{i}]") for i, child in enumerate(item))
        elif isinstance(item, str):
            _check_text(item, what, path)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise JsonInputError(
                    f"{what} holds a number out of range at {path or 'the top'} "
                    "(JSON numbers are finite)",
                    "number",
                )
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) >= int_bound:
            raise JsonInputError(
                f"{what} holds an integer of more than {limits.max_int_digits} digits at "
                f"{path or 'the top'}",
                "number",
            )


def json_depth(value: Any) -> int:
    """How many arrays/objects are nested in ``value`` (0 for a scalar), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children if isinstance(child, dict | list))
    return deepest


def _refuse_constant(name: str) -> Any:
    raise JsonInputError(f"{name} is not allowed (JSON numbers are finite)", "number")


def _has_digit_run(text: str, digits: int) -> bool:
    # A digit run longer than the bound may be a long integer or a float mantissa that
    # overflows (1 followed by 400 zeros); strings of digits only trigger the exact walk.
    return _digit_run(digits).search(text) is not None


@functools.cache
def _digit_run(digits: int) -> re.Pattern[str]:
    return re.compile(f"[0-9]{{{digits + 1}}}")


def _check_text(text: str, what: str, path: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            where = path or "the top"
            raise JsonInputError(
                f"{what} holds a lone surrogate at {where}; send valid Unicode", "surrogate"
            ) from None


def _printable(key: str) -> bool:
    return key.isascii() and key.isprintable() and len(key) <= 64
