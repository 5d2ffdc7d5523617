"""Scene validation: every structural and semantic problem at once, each with a JSON path.

Structural problems (wrong types, missing fields, unknown operators) come from the pydantic
models; semantic ones (duplicate ids, dangling targets, ``in`` without a list...) from a pass over
the raw JSON that skips whatever is already structurally wrong, so both kinds are reported in a
single answer. Only a scene without errors is turned into a :class:`Scene` for the runner.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from comfyvn.core.json_input import json_depth

from .errors import SceneInvalid, ValidationIssue
from .logic import MAX_VARIABLE_DEPTH, json_kind, non_finite, path_problem, valid_path
from .model import OPERATORS, Choice, Node, Scene, SceneMetadata

__all__ = ["ValidationReport", "load_scene", "validate_scene"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ORDERED_OPS = ("gt", "gte", "lt", "lte")


@dataclass(slots=True)
class ValidationReport:
    errors: list[ValidationIssue] = field(default_factory=list)
    warnings: list[ValidationIssue] = field(default_factory=list)
    scene: Scene | None = None  # set only when there are no errors

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
        }


def load_scene(raw: Any) -> Scene:
    """The validated scene, or :class:`SceneInvalid` listing every error."""
    if isinstance(raw, Scene):
        return raw
    report = validate_scene(raw)
    if report.scene is None:
        scene_id = raw.get("id") if isinstance(raw, dict) else None
        raise SceneInvalid(scene_id if isinstance(scene_id, str) else None, report.errors)
    return report.scene


def validate_scene(raw: Any) -> ValidationReport:
    report = ValidationReport()
    if not isinstance(raw, dict):
        report.errors.append(
            ValidationIssue("$", f"a scene must be a JSON object, got {_kind(raw)}")
        )
        return report
    scene: Scene | None = None
    try:
        scene = Scene.model_validate(raw)
    except ValidationError as exc:
        report.errors.extend(_structural(exc))
    _Semantic(raw, report).run()
    report.errors.sort(key=_path_key)
    report.warnings.sort(key=_path_key)
    if not report.errors:
        report.scene = scene
    return report


# -- structural ------------------------------------------------------------------------------
def _structural(exc: ValidationError) -> list[ValidationIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        path = _path(*loc)
        kind = err["type"]
        if kind == "missing":
            message = f"{loc[-1]!r} is required"
        elif kind == "extra_forbidden":
            message = f"unknown field {loc[-1]!r}"
        elif kind == "literal_error":
            message = f"{err['input']!r} is not allowed: {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            message = f"{err['msg']}, got {_kind(err.get('input'))}"
        issues.append(ValidationIssue(path, message))
    return issues


# -- semantic --------------------------------------------------------------------------------
class _Semantic:
    """Cross-field and cross-node rules over the raw JSON; tolerant of wrong shapes."""

    def __init__(self, raw: dict[str, Any], report: ValidationReport) -> None:
        self.raw = raw
        self.report = report
        self.ids: dict[str, int] = {}
        self.povs: list[str] | None = None
        self.known_vars: set[str] = set()
        self.read_vars: list[tuple[str, str]] = []  # (key, path)

    def error(self, path: str, message: str) -> None:
        self.report.errors.append(ValidationIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.report.warnings.append(ValidationIssue(path, message))

    def run(self) -> None:
        raw = self.raw
        for path in non_finite(raw):
            self.error(_path(*path), "not a finite number: NaN and Infinity are not JSON")
        self._unknown_fields(raw, Scene.model_fields, "$")
        scene_id = raw.get("id")
        if isinstance(scene_id, str) and not scene_id.strip():
            self.error("$.id", "the scene id is empty")
        self._metadata(raw.get("metadata"))
        variables = raw.get("variables")
        if isinstance(variables, dict):
            if json_depth(variables) > MAX_VARIABLE_DEPTH:
                self.error(
                    "$.variables",
                    f"variables nest deeper than {MAX_VARIABLE_DEPTH} levels, so a run state "
                    "holding them could not be sent back",
                )
            else:
                self._variables(variables, "", "$.variables")
        nodes = raw.get("nodes")
        if not isinstance(nodes, list):
            return
        if not nodes:
            self.error("$.nodes", "a scene needs at least one node")
        self._collect_ids(nodes)
        start = raw.get("start")
        if isinstance(start, str) and nodes and start not in self.ids:
            self.error("$.start", f"start node {start!r} does not exist{self._hint(start)}")
        for i, node in enumerate(nodes):
            if isinstance(node, dict):
                self._node(node, _path("nodes", i))
        if isinstance(start, str) and start in self.ids:
            self._reachability(nodes, start)
        self._unknown_variables()

    def _hint(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self.ids), n=1, cutoff=0.6)
        return f" (did you mean {close[0]!r}?)" if close else ""

    def _unknown_fields(self, obj: dict[str, Any], known: Iterable[str], path: str) -> None:
        """Extra fields are allowed (author data) but a near-miss of a real field is a typo."""
        known = list(known)
        for key in obj:
            if key in known or not isinstance(key, str):
                continue
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            if close:
                self.warn(
                    _join(path, key),
                    f"unknown field {key!r} is kept as author data; did you mean {close[0]!r}?",
                )

    def _metadata(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            return
        self._unknown_fields(meta, SceneMetadata.model_fields, "$.metadata")
        povs = meta.get("povs")
        if isinstance(povs, list) and all(isinstance(p, str) for p in povs):
            if not povs:
                self.error("$.metadata.povs", "'povs' is empty; omit it or name the POVs")
            for k, pov in enumerate(povs):
                if not pov.strip():
                    self.error(_path("metadata", "povs", k), "a POV name is empty")
            self.povs = povs
        default = meta.get("default_pov")
        if isinstance(default, str):
            if not default.strip():
                self.error("$.metadata.default_pov", "'default_pov' is empty")
            elif self.povs is not None and default not in self.povs:
                self.error(
                    "$.metadata.default_pov",
                    f"default POV {default!r} is not one of the declared povs {self.povs}",
                )

    def _variables(self, variables: dict[str, Any], prefix: str, path: str) -> None:
        for name, value in variables.items():
            here = _join(path, name)
            if "." in name:
                self.warn(here, f"variable name {name!r} contains '.', so no dot path reaches it")
                continue
            full = f"{prefix}{name}"
            self.known_vars.add(full)
            if isinstance(value, dict):
                self._variables(value, f"{full}.", here)

    def _collect_ids(self, nodes: list[Any]) -> None:
        for i, node in enumerate(nodes):
            if not isinstance(node, dict):
                continue
            nid = node.get("id")
            if not isinstance(nid, str):
                continue
            if not nid.strip():
                self.error(_path("nodes", i, "id"), "the node id is empty")
            elif nid in self.ids:
                first = _path("nodes", self.ids[nid])
                self.error(_path("nodes", i, "id"), f"duplicate node id {nid!r} (first at {first})")
            else:
                self.ids[nid] = i

    def _node(self, node: dict[str, Any], path: str) -> None:
        self._unknown_fields(node, Node.model_fields, path)
        name = node.get("id") if isinstance(node.get("id"), str) else "?"
        self._actions(node.get("actions"), _join(path, "actions"))
        choices = node.get("choices", [])
        if not isinstance(choices, list):
            return
        if node.get("end") is True and choices:
            self.error(
                _join(path, "choices"),
                f"end node {name!r} has choices; an end node finishes the scene, "
                "remove 'end' or the choices",
            )
        if node.get("end") is not True and not choices:
            self.warn(
                path, f"node {name!r} has no choices and is not marked end: it ends the scene"
            )
        seen: dict[str, int] = {}
        for j, choice in enumerate(choices):
            if isinstance(choice, dict):
                self._choice(choice, _join(path, "choices", j), seen, j)

    def _choice(self, choice: dict[str, Any], path: str, seen: dict[str, int], j: int) -> None:
        self._unknown_fields(choice, Choice.model_fields, path)
        cid = choice.get("id")
        if isinstance(cid, str):
            if not cid.strip():
                self.error(_join(path, "id"), "the choice id is empty")
            elif cid in seen:
                self.error(
                    _join(path, "id"),
                    f"duplicate choice id {cid!r} in this node (first at choices[{seen[cid]}])",
                )
            else:
                seen[cid] = j
        target = choice.get("target")
        if isinstance(target, str) and target not in self.ids:
            self.error(
                _join(path, "target"),
                f"choice leads to unknown node {target!r}{self._hint(target)}",
            )
        conditions = choice.get("conditions")
        if isinstance(conditions, list):
            for k, cond in enumerate(conditions):
                if isinstance(cond, dict):
                    self._condition(cond, _join(path, "conditions", k))
        self._actions(choice.get("actions"), _join(path, "actions"))
        visible = choice.get("visible_to")
        if isinstance(visible, list):
            if not visible:
                self.error(
                    _join(path, "visible_to"),
                    "'visible_to' is empty, so no POV could ever see this choice; "
                    "omit it to show the choice to every POV",
                )
            for k, pov in enumerate(visible):
                if not isinstance(pov, str):
                    continue
                if not pov.strip():
                    self.error(_join(path, "visible_to", k), "a POV name is empty")
                elif self.povs is not None and pov not in self.povs:
                    self.error(
                        _join(path, "visible_to", k),
                        f"POV {pov!r} is not one of the declared povs {self.povs}",
                    )

    def _condition(self, cond: dict[str, Any], path: str) -> None:
        key = cond.get("key")
        if isinstance(key, str):
            if valid_path(key):
                self.read_vars.append((key, _join(path, "key")))
            else:
                self.error(_join(path, "key"), _bad_path(key))
        op = cond.get("operator")
        if not isinstance(op, str) or op not in OPERATORS:
            return  # reported by the model
        has_value = "value" in cond
        value = cond.get("value")
        if op in ("in", "not_in"):
            if not isinstance(value, list):
                self.error(
                    _join(path, "value"),
                    f"operator {op!r} needs a list 'value', got "
                    f"{_kind(value) if has_value else 'nothing'}",
                )
        elif op in _ORDERED_OPS:
            if not _is_number(value):
                self.error(
                    _join(path, "value"),
                    f"operator {op!r} needs a number 'value', got "
                    f"{_kind(value) if has_value else 'nothing'}",
                )
        elif op in ("eq", "neq"):
            if not has_value:
                self.error(path, f"operator {op!r} needs a 'value'")
        elif has_value:
            self.error(_join(path, "value"), f"operator {op!r} takes no 'value'")

    def _actions(self, actions: Any, path: str) -> None:
        if not isinstance(actions, list):
            return
        for k, action in enumerate(actions):
            if isinstance(action, dict):
                self._action(action, _join(path, k))

    def _action(self, action: dict[str, Any], path: str) -> None:
        key = action.get("key")
        if isinstance(key, str):
            if valid_path(key):
                self.known_vars.add(key)
            else:
                self.error(_join(path, "key"), _bad_path(key))
        kind = action.get("type")
        if kind == "set":
            if "value" not in action:
                self.error(path, "action 'set' needs a 'value'")
            elif isinstance(key, str) and valid_path(key):
                depth = key.count(".") + 1 + json_depth(action["value"])
                if depth > MAX_VARIABLE_DEPTH:
                    self.error(
                        _join(path, "value"),
                        f"this set would nest the variables {depth} levels deep; the limit is "
                        f"{MAX_VARIABLE_DEPTH}",
                    )
            if "amount" in action:
                self.error(_join(path, "amount"), "action 'set' takes 'value', not 'amount'")
        elif kind in ("increment", "decrement"):
            if "value" in action:
                self.error(_join(path, "value"), f"action {kind!r} takes 'amount', not 'value'")
        elif kind == "clear":
            for extra in ("value", "amount"):
                if extra in action:
                    self.error(_join(path, extra), f"action 'clear' takes no {extra!r}")

    def _reachability(self, nodes: list[Any], start: str) -> None:
        edges: dict[str, list[str]] = {}
        for node in nodes:
            if isinstance(node, dict) and isinstance(node.get("id"), str):
                choices = node.get("choices")
                targets = []
                if isinstance(choices, list):
                    targets = [
                        c["target"]
                        for c in choices
                        if isinstance(c, dict) and isinstance(c.get("target"), str)
                    ]
                edges.setdefault(node["id"], []).extend(targets)
        seen = {start}
        todo = [start]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        for nid, index in self.ids.items():
            if nid not in seen:
                self.warn(_path("nodes", index), f"node {nid!r} is unreachable from {start!r}")

    def _unknown_variables(self) -> None:
        known = self.known_vars
        for key, path in self.read_vars:
            if any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in known):
                continue
            self.warn(
                path,
                f"variable {key!r} is never set by the scene (starting variables passed to the "
                "runner can still provide it)",
            )


# -- helpers ---------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad_path(key: str) -> str:
    return path_problem(key) or f"{key!r} is not a dot path"


def _kind(value: Any) -> str:
    """``json_kind`` with its article: "a list", "an object", "null"."""
    kind = json_kind(value)
    if kind == "null":
        return kind
    return f"an {kind}" if kind == "object" else f"a {kind}"


def _join(path: str, *parts: str | int) -> str:
    out = path
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}"
        else:
            escaped = part.replace("\\", "\\\\").replace("'", "\\'")
            out += f"['{escaped}']"
    return out


def _path(*parts: str | int) -> str:
    return _join("$", *parts)


_TOKEN = re.compile(r"\[(\d+)\]|\.([A-Za-z_][A-Za-z0-9_]*)|\['((?:[^'\\]|\\.)*)'\]")


def _path_key(issue: ValidationIssue) -> list[tuple[int, int | str]]:
    """Sort issues in document order: indices numerically, names alphabetically."""
    key: list[tuple[int, int | str]] = []
    for index, name, quoted in _TOKEN.findall(issue.path):
        key.append((0, int(index)) if index else (1, name or quoted))
    return key
