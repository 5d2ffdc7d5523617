"""The play state: everything a stateless client must send back to continue a run.

Inside the process the state is a plain dataclass bound to its validated :class:`Scene`; at the
edges it is JSON (``to_dict`` / ``from_dict``), checked by a pydantic model and against the scene.
The random generator is counter-based (SplitMix64 over ``seed + draws``), so its whole state is
two small integers and a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidState
from .logic import first_non_finite, json_copy
from .model import Choice, Scene

__all__ = ["MAX_SEED", "RngState", "ScenarioState", "StateModel", "draw"]

MAX_SEED = 2**63 - 1
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15


def draw(seed: int, index: int) -> float:
    """The ``index``-th number in [0, 1) of the stream for ``seed`` (SplitMix64)."""
    z = (seed + (index + 1) * _GAMMA) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    return (z >> 11) * (1.0 / (1 << 53))


class RngState(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    seed: int = Field(ge=0, le=MAX_SEED, description="Seed of the run.")
    draws: int = Field(ge=0, description="Numbers drawn so far (one per auto-pick).")


class HistoryItem(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    node: str
    choice: str | None


class StateModel(BaseModel):
    """The JSON form of a state, as returned by ``POST /api/scenario/run/step``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    scene_id: str
    current_node: str
    variables: dict[str, Any]
    history: list[HistoryItem] = Field(min_length=1)
    rng: RngState
    finished: bool
    pov: str = Field(min_length=1)


@dataclass(slots=True, eq=False)
class ScenarioState:
    scene: Scene
    current_node: str
    variables: dict[str, Any]
    history: list[tuple[str, str | None]]  # (node, choice taken there or None), oldest first
    pov: str
    seed: int
    draws: int = 0
    finished: bool = False
    offered: list[Choice] | None = field(default=None, repr=False)  # cache for visible choices

    @property
    def scene_id(self) -> str:
        return self.scene.id

    def history_dicts(self) -> list[dict[str, str | None]]:
        return [{"node": n, "choice": c} for n, c in self.history]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; together with the scene it is all a client needs to continue."""
        return {
            "scene_id": self.scene.id,
            "current_node": self.current_node,
            "variables": json_copy(self.variables),
            "history": self.history_dicts(),
            "rng": {"seed": self.seed, "draws": self.draws},
            "finished": self.finished,
            "pov": self.pov,
        }

    @classmethod
    def from_dict(cls, data: Any, scene: Scene) -> ScenarioState:
        """Rebuild a state a client sent back; whatever does not fit the scene is refused."""
        try:
            model = StateModel.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"state.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise InvalidState(f"malformed state: {problems}") from None
        if model.scene_id != scene.id:
            raise InvalidState(
                f"the state belongs to scene {model.scene_id!r}, not to {scene.id!r}"
            )
        nodes = scene.node_map()
        for k, item in enumerate(model.history):
            if item.node not in nodes:
                raise InvalidState(f"state.history[{k}] names unknown node {item.node!r}")
        last = model.history[-1]
        if last.node != model.current_node or last.choice is not None:
            raise InvalidState(
                "the last state.history entry must be the current node with choice null"
            )
        node = nodes[model.current_node]
        terminal = node.end or not node.choices
        if model.finished != terminal:
            raise InvalidState(
                f"state.finished is {str(model.finished).lower()} but node "
                f"{node.id!r} {'ends' if terminal else 'does not end'} the scene"
            )
        bad = first_non_finite(model.variables, "state.variables")
        if bad:
            raise InvalidState(f"{bad} is not a finite number (NaN and Infinity are not JSON)")
        povs = scene.metadata.povs
        if povs is not None and model.pov not in povs:
            raise InvalidState(f"state.pov {model.pov!r} is not one of the scene's povs {povs}")
        return cls(
            scene=scene,
            current_node=model.current_node,
            variables=model.variables,
            history=[(h.node, h.choice) for h in model.history],
            pov=model.pov,
            seed=model.rng.seed,
            draws=model.rng.draws,
            finished=model.finished,
        )
