"""Scenes a server can hand out by id: the bundled demo scenes (loaded under ``--demo``).

Scenes are kept as authored (raw JSON) next to their validated model, so what a client fetches
round-trips unchanged through ``/api/scenario/validate`` and ``/api/scenario/run/step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyvn.core.json_input import FILE_LIMITS, JsonInputError, read_json

from .model import Scene
from .validation import load_scene

__all__ = ["DEMO_DIR", "CatalogEntry", "SceneCatalog", "demo_scene_paths", "read_scene_file"]

DEMO_DIR = Path(__file__).resolve().parent / "demo"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    scene: Scene
    raw: dict[str, Any]
    source: str

    def summary(self) -> dict[str, Any]:
        meta = self.scene.metadata
        return {
            "id": self.scene.id,
            "title": meta.title or self.scene.id,
            "source": self.source,
            "nodes": len(self.scene.nodes),
            "povs": meta.povs,
            "default_pov": self.scene.resolve_pov(None),
        }


def demo_scene_paths() -> list[Path]:
    return sorted(DEMO_DIR.glob("*.json"))


def read_scene_file(path: Path) -> Any:
    """The JSON in ``path``; errors name the file and the problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read scene file {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return read_json(text, FILE_LIMITS, what=f"scene file {str(path)!r}")
    except JsonInputError as exc:
        raise ValueError(str(exc)) from None


class SceneCatalog:
    def __init__(self) -> None:
        self._entries: dict[str, CatalogEntry] = {}

    def add(self, raw: dict[str, Any], source: str) -> Scene:
        """Validate and register ``raw``; raises :class:`SceneInvalid` when it is not valid."""
        scene = load_scene(raw)
        self._entries[scene.id] = CatalogEntry(scene, raw, source)
        return scene

    def load_demo(self) -> list[str]:
        """Register every bundled demo scene; a broken one is a packaging bug, so it raises."""
        return [self.add(read_scene_file(p), "demo").id for p in demo_scene_paths()]

    def get(self, scene_id: str) -> CatalogEntry | None:
        return self._entries.get(scene_id)

    def summaries(self) -> list[dict[str, Any]]:
        return [entry.summary() for entry in self._entries.values()]
