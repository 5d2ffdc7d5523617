"""The scene file format (DESIGN.md section 5) as pydantic models.

The models only check shapes and types; cross-field and cross-node rules (targets exist, ``in``
takes a list, no duplicate ids...) live in :mod:`comfyvn.scenario.validation`, which reports
every problem at once with a JSON path. Nodes and choices keep unknown fields (authors attach
their own data, e.g. an image), conditions and actions refuse them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, PrivateAttr, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "ACTION_TYPES",
    "OPERATORS",
    "Action",
    "Choice",
    "Condition",
    "Node",
    "Scene",
    "SceneMetadata",
]

Operator = Literal["eq", "neq", "gt", "gte", "lt", "lte", "in", "not_in", "exists", "not_exists"]
ActionType = Literal["set", "increment", "decrement", "clear"]
OPERATORS: tuple[str, ...] = Operator.__args__
ACTION_TYPES: tuple[str, ...] = ActionType.__args__

DEFAULT_POV = "narrator"


def _number(value: Any) -> int | float:
    """A JSON number, kept as int or float (``true`` is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number")
    return value


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key: str = Field(description="Variable to test, as a dot path (e.g. 'stats.trust').")
    operator: Operator = Field(description="Comparison to apply.")
    value: Any = Field(
        default=None,
        description="Operand; a list for in/not_in, a number for gt/gte/lt/lte, absent for "
        "exists/not_exists.",
    )


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    type: ActionType = Field(description="What to do to the variable.")
    key: str = Field(description="Variable to change, as a dot path.")
    value: Any = Field(default=None, description="New value, for 'set'.")
    amount: Number | None = Field(
        default=None, description="Step for increment/decrement (default 1)."
    )


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(description="Choice id, unique within its node.")
    label: str = Field(description="Text shown to the player.")
    target: str = Field(description="Id of the node this choice leads to.")
    conditions: list[Condition] = Field(
        default_factory=list, description="All must hold for the choice to be offered."
    )
    actions: list[Action] = Field(
        default_factory=list, description="Applied when the choice is taken."
    )
    weight: float = Field(default=1.0, ge=0, description="Relative odds when auto-picking.")
    visible_to: list[str] | None = Field(
        default=None, description="POVs that may see the choice; absent means every POV."
    )


class Node(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(description="Node id, unique within the scene.")
    type: str = Field(default="dialogue", description="Free text, e.g. 'dialogue' or 'narration'.")
    text: str | None = Field(default=None, description="What is shown or said.")
    speaker: str | None = Field(default=None, description="Who says it.")
    actions: list[Action] = Field(
        default_factory=list, description="Applied when the node is entered."
    )
    choices: list[Choice] = Field(default_factory=list, description="Ways out of the node.")
    end: bool = Field(default=False, description="The scene finishes here.")


class SceneMetadata(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    title: str | None = None
    default_pov: str | None = Field(default=None, description="POV used when none is given.")
    povs: list[str] | None = Field(
        default=None, description="Declared POVs; when present, visible_to may only name these."
    )


class Scene(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    id: str = Field(description="Scene id.")
    start: str = Field(description="Id of the first node.")
    nodes: list[Node] = Field(description="The scene graph.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Starting variables.")
    metadata: SceneMetadata = Field(default_factory=SceneMetadata)
    _nodes: dict[str, Node] | None = PrivateAttr(default=None)

    def node_map(self) -> dict[str, Node]:
        """Nodes by id, built once (validated scenes have unique ids and are not mutated)."""
        if self._nodes is None:
            self._nodes = {node.id: node for node in self.nodes}
        return self._nodes

    def resolve_pov(self, pov: str | None) -> str:
        """The given POV, else ``metadata.default_pov``, else ``"narrator"``."""
        return pov or self.metadata.default_pov or DEFAULT_POV
