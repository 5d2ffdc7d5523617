"""Scenario model, validation and runner (emits ``on_scene_enter`` and ``on_choice_render``).

In-process use::

    from comfyvn.scenario import ScenarioRunner

    runner = ScenarioRunner(emit=bus)          # a HookBus, any emit(event, payload), or None
    state = runner.start(scene_json, seed=7, pov="mara")
    while not state.finished:
        state = runner.step(state)             # seeded weighted auto-pick
"""

from __future__ import annotations

from .errors import (
    ChoiceNotOffered,
    InvalidState,
    NoChoiceOffered,
    ScenarioError,
    ScenarioFinished,
    ScenarioRuntimeError,
    SceneInvalid,
    UnknownChoice,
    ValidationIssue,
)
from .model import Action, Choice, Condition, Node, Scene
from .runner import InvalidStart, ScenarioRunner, render_choice
from .state import ScenarioState
from .validation import ValidationReport, load_scene, validate_scene

__all__ = [
    "Action",
    "Choice",
    "ChoiceNotOffered",
    "Condition",
    "InvalidStart",
    "InvalidState",
    "NoChoiceOffered",
    "Node",
    "ScenarioError",
    "ScenarioFinished",
    "ScenarioRunner",
    "ScenarioRuntimeError",
    "ScenarioState",
    "Scene",
    "SceneInvalid",
    "UnknownChoice",
    "ValidationIssue",
    "ValidationReport",
    "load_scene",
    "render_choice",
    "validate_scene",
]
