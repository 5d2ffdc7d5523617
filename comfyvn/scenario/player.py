"""``comfyvn scenario play|validate``: a terminal player with numbered choices.

With ``--server`` every step goes through ``POST /api/scenario/run/step``, so the hooks land on
the server's bus and show live on its WebSocket stream; without it the runner plays in-process
(``--show-hooks`` prints what it emits). At the prompt: a number takes that choice, Enter lets
the seeded generator pick by weight, ``q`` quits; ``--auto`` plays to the end unattended.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TextIO

from .catalog import demo_scene_paths, read_scene_file
from .errors import ScenarioError
from .runner import ScenarioRunner
from .state import ScenarioState
from .validation import validate_scene

__all__ = ["play_command", "validate_command"]


@dataclass(slots=True)
class Turn:
    """One answer, in the same shape whether it came from the server or the local runner."""

    state: Any  # a state dict (remote) or a ScenarioState (local)
    node: dict[str, Any]
    choices: list[dict[str, Any]]
    finished: bool
    variables: dict[str, Any]


class Backend(Protocol):
    def start(self, scene: dict[str, Any], seed: int | None, pov: str | None) -> Turn: ...
    def step(self, scene: dict[str, Any], state: Any, choice_id: str | None) -> Turn: ...


class LocalBackend:
    def __init__(self, hook_out: TextIO | None) -> None:
        emit: Callable[[str, dict[str, Any]], None] | None = None
        if hook_out is not None:

            def emit(event: str, payload: dict[str, Any]) -> None:
                extra = ""
                if "choices" in payload:
                    extra = " choices=" + ",".join(c["id"] for c in payload["choices"])
                print(f"  [hook] {event} node={payload['node']}{extra}", file=hook_out)

        self.runner = ScenarioRunner(emit)

    def _turn(self, state: ScenarioState) -> Turn:
        view = self.runner.node_view(state)
        return Turn(state, view, view["choices"], state.finished, state.variables)

    def start(self, scene: dict[str, Any], seed: int | None, pov: str | None) -> Turn:
        return self._turn(self.runner.start(scene, seed=seed, pov=pov))

    def step(self, scene: dict[str, Any], state: Any, choice_id: str | None) -> Turn:
        return self._turn(self.runner.step(state, choice_id))


class RemoteBackend:
    def __init__(self, server: str, token: str | None, data_dir: str | None) -> None:
        from comfyvn.client.api import ApiClient, resolve_connection

        self.client = ApiClient(resolve_connection(server, token, data_dir))

    @staticmethod
    def _turn(body: dict[str, Any]) -> Turn:
        return Turn(
            body["state"], body["node"], body["choices"], body["finished"],
            body["state"]["variables"],
        )  # fmt: skip

    def start(self, scene: dict[str, Any], seed: int | None, pov: str | None) -> Turn:
        body: dict[str, Any] = {"scene": scene}
        if seed is not None:
            body["seed"] = seed
        if pov is not None:
            body["pov"] = pov
        return self._turn(self.client.post("/api/scenario/run/step", json=body))

    def step(self, scene: dict[str, Any], state: Any, choice_id: str | None) -> Turn:
        body: dict[str, Any] = {"scene": scene, "state": state}
        if choice_id is not None:
            body["choice_id"] = choice_id
        return self._turn(self.client.post("/api/scenario/run/step", json=body))


def _load(file: str) -> dict[str, Any]:
    """A scene from a file path, or a bundled demo scene by name (e.g. 'lighthouse')."""
    path = Path(file)
    if not path.exists():
        demos = {p.stem: p for p in demo_scene_paths()}
        if file in demos:
            path = demos[file]
        else:
            names = ", ".join(sorted(demos)) or "none"
            raise ValueError(f"no scene file {file!r} (bundled demo scenes: {names})")
    raw = read_scene_file(path)
    if not isinstance(raw, dict):
        raise ValueError(f"scene file {str(path)!r} must hold a JSON object")
    return raw


def _show(turn: Turn, out: TextIO) -> None:
    node = turn.node
    text = node.get("text") or ""
    speaker = node.get("speaker")
    print(file=out)
    print(f"[{node['id']}] {speaker}: {text}" if speaker else f"[{node['id']}] {text}", file=out)
    for i, choice in enumerate(turn.choices, 1):
        print(f"  {i}) {choice['label']}", file=out)


def _ask(turn: Turn, inp: TextIO, out: TextIO) -> str | None:
    """The chosen choice id, None for a seeded pick; raises EOFError on 'q' or closed input."""
    n = len(turn.choices)
    while True:
        print("> ", end="", file=out, flush=True)
        line = inp.readline()
        if not line:
            raise EOFError
        answer = line.strip().lower()
        if not inp.isatty():
            print(answer, file=out)  # keep piped transcripts readable
        if answer in ("q", "quit"):
            raise EOFError
        if answer == "":
            return None
        if answer.isdigit() and 1 <= int(answer) <= n:
            return turn.choices[int(answer) - 1]["id"]
        print(f"  pick 1-{n}, Enter for a seeded pick, q to quit", file=out)


def play_command(
    args: argparse.Namespace, inp: TextIO | None = None, out: TextIO | None = None
) -> int:
    inp = inp or sys.stdin
    out = out or sys.stdout
    err = sys.stderr
    try:
        scene = _load(args.file)
    except ValueError as exc:
        print(f"error: {exc}", file=err)
        return 1
    backend: Backend
    if args.server:
        backend = RemoteBackend(args.server, args.token, args.data_dir)
    else:
        report = validate_scene(scene)
        if not report.valid:
            _print_report(report.to_dict(), err)
            return 1
        backend = LocalBackend(err if args.show_hooks else None)
    try:
        return _play(backend, scene, args, inp, out)
    except ScenarioError as exc:
        print(f"error: {exc}", file=err)
        return 1
    except Exception as exc:  # server errors and connection problems, named for the user
        from comfyvn.client.api import ApiError

        if isinstance(exc, ApiError):
            detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
            print(f"error: the server refused the step ({exc.status}): {detail}", file=err)
            return 1
        import httpx

        if isinstance(exc, httpx.HTTPError):
            print(f"error: cannot reach the server at {args.server}: {exc}", file=err)
            return 1
        raise


def _play(
    backend: Backend, scene: dict[str, Any], args: argparse.Namespace, inp: TextIO, out: TextIO
) -> int:
    turn = backend.start(scene, args.seed, args.pov)
    title = (scene.get("metadata") or {}).get("title") or scene.get("id")
    state = turn.state
    pov = state["pov"] if isinstance(state, dict) else state.pov
    seed = state["rng"]["seed"] if isinstance(state, dict) else state.seed
    where = f"server {args.server}" if args.server else "in-process"
    print(f"== {title} (pov {pov}, seed {seed}, {where}) ==", file=out)
    while True:
        _show(turn, out)
        if turn.finished:
            print(f"\n-- the end -- variables: {json.dumps(turn.variables)}", file=out)
            return 0
        if args.auto:
            choice_id = None
        else:
            try:
                choice_id = _ask(turn, inp, out)
            except EOFError:
                print("\n(stopped)", file=out)
                return 0
        previous = turn
        turn = backend.step(scene, turn.state, choice_id)
        if choice_id is None:
            taken = _taken(turn.state)
            label = next((c["label"] for c in previous.choices if c["id"] == taken), taken)
            print(f"  -> {label} (seeded pick)", file=out)


def _taken(state: Any) -> str | None:
    """The choice taken at the previous node, from the state's history."""
    if isinstance(state, dict):
        return state["history"][-2]["choice"]
    return state.history[-2][1]


def validate_command(args: argparse.Namespace) -> int:
    try:
        scene = _load(args.file)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    report = validate_scene(scene)
    _print_report(report.to_dict(), sys.stdout)
    return 0 if report.valid else 1


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    for issue in report["errors"]:
        print(f"error   {issue['path']}: {issue['message']}", file=out)
    for issue in report["warnings"]:
        print(f"warning {issue['path']}: {issue['message']}", file=out)
    verdict = "valid" if report["valid"] else "invalid"
    print(
        f"scene is {verdict}: {len(report['errors'])} error(s), "
        f"{len(report['warnings'])} warning(s)",
        file=out,
    )
