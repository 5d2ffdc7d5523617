"""ScenarioRunner: plays a validated scene and emits ``on_scene_enter`` / ``on_choice_render``.

The runner holds no play state: ``start`` and ``step`` return a new :class:`ScenarioState` and
never touch the one they were given, so the same code serves in-process tools and the stateless
REST route. Emission goes through any ``emit(event, payload)`` callable (a :class:`HookBus`
works as is); every payload is a fresh copy that the runner never touches again.

Per node entered: one ``on_scene_enter``, then, unless the node ends the scene, one
``on_choice_render`` with only the choices offered to the POV (conditions hold, ``visible_to``
allows it). Hidden choices appear nowhere: not in the payload, not in :meth:`node_view`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from comfyvn.core.json_input import json_depth

from .errors import (
    ChoiceNotOffered,
    NoChoiceOffered,
    ScenarioError,
    ScenarioFinished,
    UnknownChoice,
)
from .logic import (
    MAX_VARIABLE_DEPTH,
    apply_action,
    check_condition,
    first_non_finite,
    json_copy,
)
from .model import Choice, Node, Scene
from .state import MAX_SEED, ScenarioState, draw
from .validation import load_scene

__all__ = ["EmitFn", "InvalidStart", "ScenarioRunner", "render_choice"]

EmitFn = Callable[[str, dict[str, Any]], Any]

SCENE_ENTER = "on_scene_enter"
CHOICE_RENDER = "on_choice_render"


class _HasEmit(Protocol):
    def emit(self, event: str, payload: Mapping[str, Any]) -> Any: ...


class InvalidStart(ScenarioError):
    """A start parameter (seed, POV, variables) is not acceptable."""


def render_choice(choice: Choice) -> dict[str, Any]:
    """What a player (and a hook consumer) sees of a choice: no conditions, actions or POVs."""
    out: dict[str, Any] = {
        "id": choice.id,
        "label": choice.label,
        "target": choice.target,
        "weight": choice.weight,
    }
    if choice.model_extra:
        for key, value in choice.model_extra.items():
            out.setdefault(key, json_copy(value))
    return out


class ScenarioRunner:
    def __init__(
        self,
        emit: EmitFn | _HasEmit | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if emit is not None and hasattr(emit, "emit"):
            emit = emit.emit  # a HookBus (or anything with .emit)
        self._emit: EmitFn | None = emit  # type: ignore[assignment]
        self._clock = clock

    # -- public API --------------------------------------------------------------------------
    def start(
        self,
        scene: Scene | dict[str, Any],
        seed: int | None = None,
        pov: str | None = None,
        variables: Mapping[str, Any] | None = None,
    ) -> ScenarioState:
        """Enter the start node (the "initial state" events) and return the first state."""
        scene = load_scene(scene)
        if seed is None:
            seed = secrets.randbits(53)  # recorded in the state, so the run can be replayed
        elif not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
            raise InvalidStart(f"seed must be an integer from 0 to {MAX_SEED}, got {seed!r}")
        chosen = scene.resolve_pov(pov)
        if not isinstance(chosen, str) or not chosen.strip():
            raise InvalidStart(f"pov must be a non-empty string, got {pov!r}")
        povs = scene.metadata.povs
        if povs is not None and chosen not in povs:
            raise InvalidStart(f"POV {chosen!r} is not one of the scene's povs {povs}")
        start_vars = json_copy(scene.variables)
        if variables is not None:
            if not isinstance(variables, Mapping):
                raise InvalidStart(f"variables must be an object, got {type(variables).__name__}")
            bad = first_non_finite(variables, "variables")
            if bad:
                raise InvalidStart(f"{bad} is not a finite number (NaN and Infinity are not JSON)")
            if json_depth(dict(variables)) > MAX_VARIABLE_DEPTH:
                raise InvalidStart(
                    f"variables nest deeper than {MAX_VARIABLE_DEPTH} levels, so the run state "
                    "could not be sent back"
                )
            start_vars.update(json_copy(dict(variables)))
        state = ScenarioState(
            scene=scene,
            current_node=scene.start,
            variables=start_vars,
            history=[],
            pov=chosen,
            seed=seed,
        )
        return self._enter(state, scene.node_map()[scene.start], state.variables, state.history)

    def step(self, state: ScenarioState, choice_id: str | None = None) -> ScenarioState:
        """Take ``choice_id`` (or auto-pick by weight) and enter its target node."""
        if state.finished:
            raise ScenarioFinished(
                f"scene {state.scene_id!r} already finished at node {state.current_node!r}; "
                "start a new run"
            )
        node = state.scene.node_map()[state.current_node]
        offered = self.visible_choices(state)
        draws = state.draws
        if choice_id is None:
            if not offered:
                raise NoChoiceOffered(
                    f"node {node.id!r} offers no choice to POV {state.pov!r} with the current "
                    "variables, so there is nothing to pick"
                )
            choice = self._pick(offered, draw(state.seed, draws))
            draws += 1
        else:
            choice = self._find(node, offered, choice_id, state.pov)
        variables = json_copy(state.variables)
        for action in choice.actions:
            apply_action(action, variables)
        history = state.history[:-1]
        history.append((node.id, choice.id))
        nxt = ScenarioState(
            scene=state.scene,
            current_node=choice.target,
            variables=variables,
            history=history,
            pov=state.pov,
            seed=state.seed,
            draws=draws,
        )
        return self._enter(nxt, state.scene.node_map()[choice.target], variables, history)

    def visible_choices(self, state: ScenarioState) -> list[Choice]:
        """The choices offered at the current node: conditions hold and the POV may see them."""
        if state.offered is None:
            node = state.scene.node_map()[state.current_node]
            state.offered = [] if state.finished else self._offered(node, state)
        return state.offered

    def node_view(self, state: ScenarioState) -> dict[str, Any]:
        """The current node as shown to the player: only offered choices, no mechanics."""
        node = state.scene.node_map()[state.current_node]
        view: dict[str, Any] = {
            "id": node.id,
            "type": node.type,
            "text": node.text,
            "speaker": node.speaker,
            "end": node.end,
        }
        if node.model_extra:
            for key, value in node.model_extra.items():
                view.setdefault(key, json_copy(value))
        view["choices"] = [render_choice(c) for c in self.visible_choices(state)]
        return view

    # -- internals ---------------------------------------------------------------------------
    def _enter(
        self,
        state: ScenarioState,
        node: Node,
        variables: dict[str, Any],
        history: list[tuple[str, str | None]],
    ) -> ScenarioState:
        for action in node.actions:
            apply_action(action, variables)
        history.append((node.id, None))
        state.finished = node.end or not node.choices
        state.offered = [] if state.finished else self._offered(node, state)
        if self._emit is not None:
            self._emit_entry(state)
        return state

    def _emit_entry(self, state: ScenarioState) -> None:
        emit = self._emit
        assert emit is not None
        ts = self._clock()
        payload = {
            "scene_id": state.scene.id,
            "node": state.current_node,
            "pov": state.pov,
            "variables": json_copy(state.variables),
            "history": state.history_dicts(),
            "finished": state.finished,
            "timestamp": ts,
        }
        if state.finished:
            emit(SCENE_ENTER, payload)
            return
        render = {
            **payload,
            "variables": json_copy(state.variables),
            "history": state.history_dicts(),
            "choices": [render_choice(c) for c in state.offered or ()],
        }
        emit(SCENE_ENTER, payload)
        emit(CHOICE_RENDER, render)

    @staticmethod
    def _offered(node: Node, state: ScenarioState) -> list[Choice]:
        pov = state.pov
        variables = state.variables
        return [
            c
            for c in node.choices
            if (c.visible_to is None or pov in c.visible_to)
            and all(check_condition(cond, variables) for cond in c.conditions)
        ]

    @staticmethod
    def _pick(offered: list[Choice], r: float) -> Choice:
        total = sum(c.weight for c in offered)
        if total <= 0:  # every offered choice has weight 0: uniform
            return offered[min(int(r * len(offered)), len(offered) - 1)]
        point = r * total
        acc = 0.0
        for choice in offered:
            acc += choice.weight
            if point < acc:
                return choice
        return next(c for c in reversed(offered) if c.weight > 0)  # float rounding at the top

    @staticmethod
    def _find(node: Node, offered: list[Choice], choice_id: str, pov: str) -> Choice:
        for choice in offered:
            if choice.id == choice_id:
                return choice
        if any(c.id == choice_id for c in node.choices):
            raise ChoiceNotOffered(
                f"choice {choice_id!r} is not offered at node {node.id!r} to POV {pov!r} "
                "(its conditions do not hold or it is not visible to this POV)"
            )
        ids = ", ".join(repr(c.id) for c in offered) or "none"
        raise UnknownChoice(f"node {node.id!r} has no choice {choice_id!r}; offered choices: {ids}")
