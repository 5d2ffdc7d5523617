"""Scenario errors. Each names the problem; the API maps them to 4xx statuses."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ChoiceNotOffered",
    "InvalidState",
    "NoChoiceOffered",
    "ScenarioError",
    "ScenarioFinished",
    "ScenarioRuntimeError",
    "SceneInvalid",
    "UnknownChoice",
    "ValidationIssue",
]


@dataclass(frozen=True, slots=True)
class ValidationIssue:
    path: str  # JSONPath into the scene, e.g. "$.nodes[2].choices[0].target"
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ScenarioError(Exception):
    """Base class: anything the runner refuses to do."""


class SceneInvalid(ScenarioError):
    """The scene failed validation; ``errors`` holds every problem found."""

    def __init__(self, scene_id: str | None, errors: list[ValidationIssue]) -> None:
        self.scene_id = scene_id
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        name = f"scene {scene_id!r}" if scene_id else "scene"
        super().__init__(f"{name} is invalid: {shown}{more}")


class InvalidState(ScenarioError):
    """The state does not belong to this scene or is malformed."""


class ScenarioFinished(ScenarioError):
    """A step was asked of a state whose scene already ended."""


class UnknownChoice(ScenarioError):
    """The choice id does not exist at the current node."""


class ChoiceNotOffered(ScenarioError):
    """The choice exists but its conditions or ``visible_to`` exclude it right now."""


class NoChoiceOffered(ScenarioError):
    """Auto-pick found nothing to pick: every choice is hidden at a non-end node."""


class ScenarioRuntimeError(ScenarioError):
    """An action could not apply to the current variables (e.g. incrementing a string)."""
