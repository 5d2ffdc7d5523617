"""Hook specifications: the single place where a modder-facing hook is declared.

Each spec carries a pydantic payload model. The model is the source of the field descriptions
and JSON Schema served by ``GET /api/modder/hooks``, of the generated modder docs, and of the
validation applied to payloads that come from outside (``POST /api/modder/hooks/test``).
In-process emitters are trusted and are not validated on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "HOOK_SPECS",
    "AssetMetaUpdatedPayload",
    "AssetPayload",
    "AssetRemovedPayload",
    "ChoiceRenderPayload",
    "HookSpec",
    "SceneEnterPayload",
    "define_hook",
    "hook_names",
]


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryEntry(BaseModel):
    node: str = Field(description="Id of a node the player went through.")
    choice: str | None = Field(description="Id of the choice taken at that node, or null.")


class RenderedChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str = Field(description="Choice id, unique within its node.")
    label: str = Field(description="Text shown to the player.")
    target: str = Field(description="Id of the node this choice leads to.")


class SceneEnterPayload(_Payload):
    scene_id: str = Field(description="Id of the scene being played.")
    node: str = Field(description="Id of the node just entered.")
    pov: str = Field(description="Point of view the scene is played from.")
    variables: dict[str, Any] = Field(description="Scenario variables after entering the node.")
    history: list[HistoryEntry] = Field(description="Nodes visited so far, oldest first.")
    finished: bool = Field(description="True when the node is an end node.")
    timestamp: float = Field(description="When the node was entered (UTC seconds).")


class ChoiceRenderPayload(SceneEnterPayload):
    choices: list[RenderedChoice] = Field(
        description="The choices offered to this POV, in display order (hidden ones never appear)."
    )


class AssetPayload(_Payload):
    uid: str = Field(description="Asset id: the first 32 hex digits of the file's SHA-256.")
    type: str = Field(description="Type bucket, e.g. 'character.portrait'.")
    path: str = Field(description="File path relative to the assets root.")
    meta: dict[str, Any] = Field(description="Asset metadata after the operation.")
    sidecar: str = Field(description="Sidecar JSON path relative to the assets root.")
    bytes: int = Field(description="File size in bytes.")
    hook_event: str = Field(description="Name of the hook this payload was emitted for.")
    timestamp: float = Field(description="When it happened (UTC seconds).")
    resaved: bool = Field(
        default=False, description="True when identical content was registered again."
    )


class AssetMetaUpdatedPayload(_Payload):
    uid: str = Field(description="Asset id.")
    type: str = Field(description="Type bucket.")
    path: str = Field(description="File path relative to the assets root.")
    meta: dict[str, Any] = Field(description="Metadata after the update.")
    changes: dict[str, Any] = Field(description="The patch that was applied.")
    sidecar: str = Field(description="Sidecar JSON path relative to the assets root.")
    hook_event: str = Field(description="Name of the hook this payload was emitted for.")
    timestamp: float = Field(description="When it happened (UTC seconds).")


class AssetRemovedPayload(_Payload):
    uid: str = Field(description="Asset id.")
    type: str = Field(description="Type bucket.")
    path: str = Field(description="File path relative to the assets root (may be gone).")
    deleted_files: bool = Field(description="True when the file and sidecar were deleted too.")
    hook_event: str = Field(description="Name of the hook this payload was emitted for.")
    timestamp: float = Field(description="When it happened (UTC seconds).")


@dataclass(frozen=True, slots=True)
class HookSpec:
    name: str
    description: str
    payload_model: type[BaseModel]
    version: int = 1
    schema: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    example: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def field_descriptions(self) -> dict[str, str]:
        return {
            name: (info.description or "") for name, info in self.payload_model.model_fields.items()
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "payload": self.field_descriptions(),
            "schema": self.schema,
            "example": self.example,
        }


HOOK_SPECS: dict[str, HookSpec] = {}


def define_hook(
    name: str,
    description: str,
    payload_model: type[BaseModel],
    version: int = 1,
    example: dict[str, Any] | None = None,
) -> HookSpec:
    """Declare a hook; the API, WebSocket topics and generated docs pick it up from here.

    ``example`` is validated against the model here, so a documented example cannot go stale.
    """
    if name in HOOK_SPECS:
        raise ValueError(f"hook {name!r} is already defined")
    if not name.isidentifier() or not name.startswith("on_"):
        raise ValueError(f"hook name {name!r} must be an identifier starting with 'on_'")
    if example is not None:
        payload_model.model_validate(example)
    spec = HookSpec(
        name, description, payload_model, version, payload_model.model_json_schema(), example or {}
    )
    HOOK_SPECS[name] = spec
    return spec


def hook_names() -> list[str]:
    return list(HOOK_SPECS)


_SCENE_EXAMPLE: dict[str, Any] = {
    "scene_id": "harbor_night",
    "node": "pier",
    "pov": "mira",
    "variables": {"trust": 2, "flags": {"met_captain": True}},
    "history": [{"node": "start", "choice": "walk_pier"}, {"node": "pier", "choice": None}],
    "finished": False,
    "timestamp": 1761050000.125,
}
_ASSET_EXAMPLE: dict[str, Any] = {
    "uid": "a3f1c2d4e5b6a7980123456789abcdef",
    "type": "character.portrait",
    "path": "character/portrait/mira-a3f1c2d4e5b6.png",
    "meta": {"character": "mira", "tags": ["smile"]},
    "sidecar": "character/portrait/mira-a3f1c2d4e5b6.png.asset.json",
    "bytes": 20480,
    "hook_event": "on_asset_saved",
    "timestamp": 1761050001.5,
    "resaved": False,
}


define_hook(
    "on_scene_enter",
    "A scenario entered a node (the start node included: the initial state).",
    SceneEnterPayload,
    example=_SCENE_EXAMPLE,
)
define_hook(
    "on_choice_render",
    "A node's choices were rendered for the current POV (only the offered choices).",
    ChoiceRenderPayload,
    example={
        **_SCENE_EXAMPLE,
        "choices": [
            {"id": "board", "label": "Board the ship", "target": "deck"},
            {"id": "wait", "label": "Wait for dawn", "target": "dawn"},
        ],
    },
)
define_hook(
    "on_asset_saved",
    "An asset file was saved and registered (also on identical re-registration).",
    AssetPayload,
    example=_ASSET_EXAMPLE,
)
define_hook(
    "on_asset_registered",
    "An asset row was written to the registry.",
    AssetPayload,
    example={**_ASSET_EXAMPLE, "hook_event": "on_asset_registered"},
)
define_hook(
    "on_asset_sidecar_written",
    "An asset's sidecar JSON was written next to its file.",
    AssetPayload,
    example={**_ASSET_EXAMPLE, "hook_event": "on_asset_sidecar_written"},
)
define_hook(
    "on_asset_meta_updated",
    "An asset's metadata was patched (sidecar rewritten).",
    AssetMetaUpdatedPayload,
    example={
        **{k: _ASSET_EXAMPLE[k] for k in ("uid", "type", "path", "sidecar")},
        "meta": {"character": "mira", "tags": ["smile", "night"]},
        "changes": {"tags": ["smile", "night"]},
        "hook_event": "on_asset_meta_updated",
        "timestamp": 1761050002.0,
    },
)
define_hook(
    "on_asset_removed",
    "An asset was removed from the registry.",
    AssetRemovedPayload,
    example={
        **{k: _ASSET_EXAMPLE[k] for k in ("uid", "type", "path")},
        "deleted_files": True,
        "hook_event": "on_asset_removed",
        "timestamp": 1761050003.0,
    },
)
