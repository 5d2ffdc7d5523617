"""Scenario routes: validate a scene, play it one stateless step at a time, list demo scenes.

``run/step`` is stateless: the client sends the scene and the state it got last. The hooks a
step emits are committed before it answers, so a client that got a 200 knows the events are
in the history (and on their way to WebSocket subscribers, plugins and webhooks).
"""

from __future__ import annotations

import logging
import os
from contextlib import AsyncExitStack
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from comfyvn.core.hook_bus import Emitted
from comfyvn.scenario.catalog import SceneCatalog
from comfyvn.scenario.errors import (
    ChoiceNotOffered,
    InvalidState,
    NoChoiceOffered,
    ScenarioError,
    ScenarioFinished,
    ScenarioRuntimeError,
    SceneInvalid,
    UnknownChoice,
)
from comfyvn.scenario.runner import InvalidStart, ScenarioRunner
from comfyvn.scenario.state import MAX_SEED, ScenarioState, StateModel
from comfyvn.scenario.validation import load_scene, validate_scene

from ..bodies import parse_json_body
from ..services import Services, commit_or_503, get_services

__all__ = ["router", "start"]

log = logging.getLogger("comfyvn.scenario")

router = APIRouter(prefix="/api/scenario", tags=["scenario"])

DEFAULT_MAX_BODY = 4 * 1024 * 1024

# 409: the request is well-formed but conflicts with where the run is; 422: it is malformed.
_STATUS: dict[type[ScenarioError], int] = {
    SceneInvalid: 422,
    InvalidState: 422,
    InvalidStart: 422,
    UnknownChoice: 422,
    ChoiceNotOffered: 409,
    ScenarioFinished: 409,
    NoChoiceOffered: 409,
    ScenarioRuntimeError: 409,
}


async def start(services: Services, stack: AsyncExitStack) -> None:
    """Create the scene catalogue; under ``--demo`` it holds the bundled demo scenes."""
    catalog = SceneCatalog()
    if services.settings.demo:
        ids = catalog.load_demo()
        log.info("demo scenes loaded: %s", ", ".join(ids))
    services.scenarios = catalog


# -- models ----------------------------------------------------------------------------------
class Issue(BaseModel):
    path: str = Field(description="JSONPath into the scene, e.g. '$.nodes[2].choices[0].target'.")
    message: str


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene: dict[str, Any] = Field(description="The scene JSON (see the modder docs).")


class ValidateResponse(BaseModel):
    valid: bool
    errors: list[Issue]
    warnings: list[Issue]


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene: dict[str, Any] = Field(description="The scene JSON; validated on every call.")
    state: dict[str, Any] | None = Field(
        default=None,
        description="The state from the previous answer; omit it to start (no step is taken).",
    )
    choice_id: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None, description="Choice to take; omit it for a seeded weighted auto-pick."
    )
    seed: Annotated[int, Field(strict=True, ge=0, le=MAX_SEED)] | None = Field(
        default=None,
        description="Seed for auto-picks when starting; with a state, the state's generator wins.",
    )
    pov: Annotated[str, Field(strict=True, min_length=1)] | None = Field(
        default=None, description="Point of view when starting (default: metadata.default_pov)."
    )
    variables: dict[str, Any] | None = Field(
        default=None, description="Starting variables merged over the scene's (top-level keys)."
    )


class StepResponse(BaseModel):
    ok: bool = True
    state: StateModel
    node: dict[str, Any] = Field(description="The current node with only the offered choices.")
    choices: list[dict[str, Any]] = Field(description="The offered choices, in order.")
    finished: bool


class SceneList(BaseModel):
    ok: bool = True
    items: list[dict[str, Any]]


class SceneResponse(BaseModel):
    ok: bool = True
    source: str
    scene: dict[str, Any]


M = TypeVar("M", bound=BaseModel)


def _max_body() -> int:
    raw = os.environ.get("COMFYVN_SCENARIO_MAX_BODY", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_MAX_BODY


async def _parse(request: Request, model: type[M]) -> M:
    return await parse_json_body(
        request,
        model,
        limit=_max_body(),
        empty="request body is empty; send a JSON object with a 'scene'",
    )


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": {"required": True, **schema}}


# -- routes ----------------------------------------------------------------------------------
@router.post(
    "/validate",
    summary="Validate a scene: every error and warning at once, each with a JSON path",
    response_model=ValidateResponse,
    responses={413: {"description": "Body too large"}, 422: {"description": "Malformed body"}},
    openapi_extra=_body_doc(ValidateRequest),
)
async def validate(request: Request) -> ValidateResponse:
    body = await _parse(request, ValidateRequest)
    report = validate_scene(body.scene)
    return ValidateResponse.model_validate(report.to_dict())


@router.post(
    "/run/step",
    summary="Start a run (no state) or take one step; answers after its hooks are committed",
    response_model=StepResponse,
    responses={
        409: {"description": "Finished run, choice not offered, or nothing to pick"},
        413: {"description": "Body too large"},
        422: {"description": "Malformed scene, state, seed, POV or unknown choice id"},
    },
    openapi_extra=_body_doc(StepRequest),
)
async def run_step(request: Request) -> StepResponse:
    body = await _parse(request, StepRequest)
    services = get_services(request)
    emitted: list[Emitted] = []

    def emit(event: str, payload: dict[str, Any]) -> None:
        emitted.append(services.bus.emit(event, payload))

    runner = ScenarioRunner(emit)
    try:
        scene = load_scene(body.scene)
        if body.state is None:
            if body.choice_id is not None:
                raise InvalidStart(
                    "'choice_id' needs the 'state' of the run it continues; without a state "
                    "the call starts the run at its start node"
                )
            state = runner.start(scene, seed=body.seed, pov=body.pov, variables=body.variables)
        else:
            if body.variables is not None:
                raise InvalidState(
                    "'variables' only applies when starting a run; the state carries its own"
                )
            state = ScenarioState.from_dict(body.state, scene)
            if body.pov is not None and body.pov != state.pov:
                raise HTTPException(
                    409,
                    f"this run is played from POV {state.pov!r}, not {body.pov!r}; "
                    "start a new run (no state) to change the POV",
                )
            state = runner.step(state, body.choice_id)
    except ScenarioError as exc:
        raise HTTPException(_STATUS.get(type(exc), 422), str(exc)) from None
    if emitted:
        await commit_or_503(services.bus, emitted[-1])
    view = runner.node_view(state)
    return StepResponse(
        state=StateModel.model_validate(state.to_dict()),
        node=view,
        choices=view["choices"],
        finished=state.finished,
    )


@router.get("/scenes", summary="Scenes this server can hand out (demo scenes under --demo)")
async def list_scenes(request: Request) -> SceneList:
    catalog: SceneCatalog | None = get_services(request).scenarios
    return SceneList(items=catalog.summaries() if catalog else [])


@router.get(
    "/scenes/{scene_id}",
    summary="One scene as authored, ready for validate / run/step",
    responses={404: {"description": "Unknown scene id"}},
)
async def get_scene(scene_id: str, request: Request) -> SceneResponse:
    catalog: SceneCatalog | None = get_services(request).scenarios
    entry = catalog.get(scene_id) if catalog else None
    if entry is None:
        known = ", ".join(repr(s["id"]) for s in catalog.summaries()) if catalog else ""
        raise HTTPException(404, f"no scene {scene_id!r}; known scenes: {known or 'none'}")
    return SceneResponse(source=entry.source, scene=entry.raw)
