"""Demo assets for ``make run``: tiny PNGs drawn in code (zlib + struct, no imaging library)."""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Callable

from .registry import UID_LENGTH, AssetRegistry

__all__ = ["DEMO_ASSETS", "encode_png", "load_demo"]

Pixel = tuple[int, int, int]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, pixel: Callable[[int, int], Pixel]) -> bytes:
    """An 8-bit RGB PNG; ``pixel(x, y)`` gives each colour."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows.extend(pixel(x, y))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )


def _portrait(x: int, y: int) -> Pixel:
    w, h = 48, 64
    if (x - w / 2) ** 2 + (y - 24) ** 2 < 13**2:  # face
        return (242, 200, 170)
    if y > 44 and abs(x - w / 2) < 18:  # shoulders
        return (70, 90, 160)
    shade = int(180 - 100 * y / h)
    return (shade // 3, shade // 2, shade)


def _sunset(x: int, y: int) -> Pixel:
    t = y / 54
    if (x - 60) ** 2 + (y - 34) ** 2 < 9**2:
        return (255, 220, 120)
    if y > 40:
        return (20, 40 + x // 4, 60)
    return (int(250 - 90 * t), int(120 + 40 * t), int(90 + 120 * t))


def _heart(x: int, y: int) -> Pixel:
    u, v = (x - 7.5) / 6.5, (7.5 - y) / 6.5
    inside = (u * u + v * v - 1) ** 3 - u * u * v**3 < 0
    return (220, 40, 70) if inside else (250, 250, 250)


def _rings(x: int, y: int) -> Pixel:
    d = math.hypot(x - 16, y - 16)
    return (40, int(128 + 127 * math.sin(d / 2)), 200)


# (file name, type bucket, meta, width, height, painter)
DEMO_ASSETS: list[tuple[str, str, dict, int, int, Callable[[int, int], Pixel]]] = [
    (
        "hero.png",
        "character.portrait",
        {"title": "Hero portrait", "character": "hero", "tags": ["demo", "hero"]},
        48,
        64,
        _portrait,
    ),
    (
        "sunset.png",
        "background.scene",
        {"title": "Sunset over the bay", "tags": ["demo", "outdoor"]},
        96,
        54,
        _sunset,
    ),
    ("heart.png", "ui.icon", {"title": "Affection icon", "tags": ["demo", "ui"]}, 16, 16, _heart),
    ("rings.png", "fx.overlay", {"title": "Ripple overlay", "tags": ["demo"]}, 32, 32, _rings),
]


def load_demo(registry: AssetRegistry) -> int:
    """Register the demo assets that are not there yet; returns how many were added.

    Already-registered ones are left alone, so restarting ``make run`` adds no events. The
    check and the registration are one step under the registry's lock, so N workers starting
    together with ``--demo`` on one data dir add each asset once, with one set of events.
    """
    added = 0
    for name, asset_type, meta, width, height, painter in DEMO_ASSETS:
        data = encode_png(width, height, painter)
        uid = hashlib.sha256(data).hexdigest()[:UID_LENGTH]
        with registry.lock:
            if registry.find(uid) is None:
                registry.register_bytes(data, asset_type, {**meta, "source": "demo"}, filename=name)
                added += 1
    return added
