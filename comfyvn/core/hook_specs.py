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
    uid: str = Field(description="Content-derived asset id (SHA-256 based).")
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
        }


HOOK_SPECS: dict[str, HookSpec] = {}


def define_hook(
    name: str, description: str, payload_model: type[BaseModel], version: int = 1
) -> HookSpec:
    """Declare a hook; the API, WebSocket topics and generated docs pick it up from here."""
    if name in HOOK_SPECS:
        raise ValueError(f"hook {name!r} is already defined")
    if not name.isidentifier() or not name.startswith("on_"):
        raise ValueError(f"hook name {name!r} must be an identifier starting with 'on_'")
    spec = HookSpec(name, description, payload_model, version, payload_model.model_json_schema())
    HOOK_SPECS[name] = spec
    return spec


def hook_names() -> list[str]:
    return list(HOOK_SPECS)


define_hook(
    "on_scene_enter",
    "A scenario entered a node (the start node included: the initial state).",
    SceneEnterPayload,
)
define_hook(
    "on_choice_render",
    "A node's choices were rendered for the current POV (only the offered choices).",
    ChoiceRenderPayload,
)
define_hook(
    "on_asset_saved",
    "An asset file was saved and registered (also on identical re-registration).",
    AssetPayload,
)
define_hook(
    "on_asset_registered",
    "An asset row was written to the registry.",
    AssetPayload,
)
define_hook(
    "on_asset_sidecar_written",
    "An asset's sidecar JSON was written next to its file.",
    AssetPayload,
)
define_hook(
    "on_asset_meta_updated",
    "An asset's metadata was patched (sidecar rewritten).",
    AssetMetaUpdatedPayload,
)
define_hook(
    "on_asset_removed",
    "An asset was removed from the registry.",
    AssetRemovedPayload,
)
