"""The scenario model, validation and runner in-process: semantics, hooks, determinism, POV."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from comfyvn.core.hook_specs import ChoiceRenderPayload, SceneEnterPayload
from comfyvn.scenario import (
    ChoiceNotOffered,
    InvalidStart,
    InvalidState,
    NoChoiceOffered,
    ScenarioFinished,
    ScenarioRunner,
    ScenarioState,
    SceneInvalid,
    UnknownChoice,
    load_scene,
    validate_scene,
)
from comfyvn.scenario.catalog import DEMO_DIR, SceneCatalog, read_scene_file
from comfyvn.scenario.errors import ScenarioRuntimeError
from comfyvn.scenario.logic import apply_action, check_condition
from comfyvn.scenario.model import Action, Condition

MODELS = {"on_scene_enter": SceneEnterPayload, "on_choice_render": ChoiceRenderPayload}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append((event, payload))

    def seq(self) -> list[tuple[str, str]]:
        return [(e, p["node"]) for e, p in self.events]


@pytest.fixture
def demo() -> dict[str, Any]:
    return read_scene_file(DEMO_DIR / "lighthouse.json")


def tiny(**node_b: Any) -> dict[str, Any]:
    """A two-node scene whose second node can be customised."""
    return {
        "id": "tiny",
        "start": "a",
        "variables": {"n": 1, "s": "text", "obj": {"k": 2}},
        "nodes": [
            {"id": "a", "choices": [{"id": "go", "label": "Go", "target": "b"}]},
            {"id": "b", "end": True, **node_b},
        ],
    }


def assert_payloads_valid(events: list[tuple[str, dict[str, Any]]]) -> None:
    for event, payload in events:
        MODELS[event].model_validate(payload)


# -- the hook sequence -------------------------------------------------------------------------
MARA_PATH = ["open_door", "ask_boat", "turn_back", "offer_help", "signal"]


def test_full_playthrough_emits_exact_hook_sequence(demo: dict[str, Any]) -> None:
    rec = Recorder()
    runner = ScenarioRunner(rec)
    state = runner.start(demo, seed=1, pov="mara")
    for choice in MARA_PATH:
        state = runner.step(state, choice)
    assert state.finished
    nodes = ["arrival", "kitchen", "stairs", "kitchen", "lamp_room"]
    expected = [(ev, n) for n in nodes for ev in ("on_scene_enter", "on_choice_render")]
    expected.append(("on_scene_enter", "dawn_together"))
    assert rec.seq() == expected
    assert_payloads_valid(rec.events)
    first = rec.events[0][1]
    assert first["history"] == [{"node": "arrival", "choice": None}]
    assert first["variables"] == {"trust": 0, "storm": 3, "flags": {"lamp_lit": False}}
    last = rec.events[-1][1]
    assert last["finished"] is True
    assert last["variables"] == {
        "trust": 2,
        "storm": 2,
        "flags": {"lamp_lit": True, "helper": True},
    }
    assert [h["choice"] for h in last["history"]] == [*MARA_PATH, None]
    # The render payload carries the same snapshot as its scene entry, plus the offered choices.
    enter, render = rec.events[6][1], rec.events[7][1]
    assert {k: v for k, v in render.items() if k != "choices"} == enter
    assert [c["id"] for c in render["choices"]] == ["ask_boat", "offer_help", "go_up"]
    assert state.history[-1] == ("dawn_together", None)


def test_payloads_validate_against_the_hook_models_for_many_runs(demo: dict[str, Any]) -> None:
    rec = Recorder()
    runner = ScenarioRunner(rec)
    for pov in ("mara", "theo"):
        for seed in range(25):
            state = runner.start(demo, seed=seed, pov=pov)
            while not state.finished:
                state = runner.step(state)
    assert len(rec.events) > 200
    assert_payloads_valid(rec.events)
    enters = sum(1 for e, _ in rec.events if e == "on_scene_enter")
    renders = sum(1 for e, p in rec.events if e == "on_choice_render")
    assert enters - renders == 50  # every node renders except the 50 end nodes


def test_payloads_are_copies(demo: dict[str, Any]) -> None:
    rec = Recorder()
    runner = ScenarioRunner(rec)
    state = runner.start(demo, seed=1)
    enter, render = rec.events[0][1], rec.events[1][1]
    snapshot = copy.deepcopy((enter, render))
    state.variables["flags"]["lamp_lit"] = "mutated"
    state.history.append(("x", None))
    assert (enter, render) == snapshot
    enter["variables"]["trust"] = 99
    render["choices"].clear()
    assert state.variables["trust"] == 0
    assert render["variables"]["trust"] == 0  # the two payloads share nothing mutable
    assert runner.visible_choices(state)


def test_step_does_not_touch_the_given_state(demo: dict[str, Any]) -> None:
    runner = ScenarioRunner()
    first = runner.start(demo, seed=1, pov="mara")
    before = json.dumps(first.to_dict())
    second = runner.step(first, "open_door")
    assert json.dumps(first.to_dict()) == before
    assert second.variables["trust"] == 1 and first.variables["trust"] == 0


def test_runner_accepts_a_hook_bus_like_object(demo: dict[str, Any]) -> None:
    class Bus:
        def __init__(self) -> None:
            self.got: list[str] = []

        def emit(self, event: str, payload: dict[str, Any]) -> None:
            self.got.append(event)

    bus = Bus()
    ScenarioRunner(bus).start(demo, seed=1)
    assert bus.got == ["on_scene_enter", "on_choice_render"]


# -- determinism -------------------------------------------------------------------------------
def auto_play(runner: ScenarioRunner, scene: Any, seed: int, pov: str = "mara") -> list[Any]:
    state = runner.start(scene, seed=seed, pov=pov)
    while not state.finished:
        state = runner.step(state)
    return [state.history, state.variables, state.draws]


def test_same_seed_same_run_and_seeds_differ(demo: dict[str, Any]) -> None:
    runner = ScenarioRunner()
    for seed in range(10):
        assert auto_play(runner, demo, seed) == auto_play(runner, demo, seed)
    paths = {json.dumps(auto_play(runner, demo, seed)[0]) for seed in range(30)}
    assert len(paths) > 1


def test_resumed_json_state_continues_like_an_uninterrupted_run(demo: dict[str, Any]) -> None:
    runner = ScenarioRunner()
    scene = load_scene(demo)
    for pov in ("mara", "theo"):
        for seed in (3, 11, 2**40):
            straight = auto_play(runner, scene, seed, pov)
            state = runner.start(scene, seed=seed, pov=pov)
            while not state.finished:
                wire = json.loads(json.dumps(state.to_dict()))
                state = runner.step(ScenarioState.from_dict(wire, scene))
            assert [state.history, state.variables, state.draws] == straight


def test_random_seed_is_recorded_for_replay(demo: dict[str, Any]) -> None:
    runner = ScenarioRunner()
    state = runner.start(demo)
    assert isinstance(state.seed, int) and state.seed >= 0
    first = auto_play(runner, demo, state.seed)
    assert auto_play(runner, demo, state.seed) == first


def test_weights_steer_the_auto_pick() -> None:
    scene = tiny()
    scene["nodes"][0]["choices"] = [
        {"id": "never", "label": "N", "target": "b", "weight": 0},
        {"id": "always", "label": "A", "target": "b", "weight": 2.5},
    ]
    runner = ScenarioRunner()
    for seed in range(40):
        assert runner.step(runner.start(scene, seed=seed)).history[0][1] == "always"
    for c in scene["nodes"][0]["choices"]:
        c["weight"] = 0  # all zero: uniform among the offered
    picked = {runner.step(runner.start(scene, seed=s)).history[0][1] for s in range(40)}
    assert picked == {"never", "always"}


# -- POV filtering -----------------------------------------------------------------------------
def test_pov_filtering_hides_choices_everywhere(demo: dict[str, Any]) -> None:
    hidden_from_mara = {"knock_again", "wait", "tell_truth", "confess"}
    rec = Recorder()
    runner = ScenarioRunner(rec)
    state = runner.start(demo, seed=4, pov="mara")
    assert [c.id for c in runner.visible_choices(state)] == ["open_door", "peek"]
    assert [c["id"] for c in runner.node_view(state)["choices"]] == ["open_door", "peek"]
    while not state.finished:
        view = json.dumps(runner.node_view(state))
        assert not any(h in view for h in hidden_from_mara)
        state = runner.step(state)
    dumped = json.dumps([p for _, p in rec.events])
    assert not any(h in dumped for h in hidden_from_mara)

    theo = runner.start(demo, seed=4, pov="theo")
    assert [c.id for c in runner.visible_choices(theo)] == ["knock_again", "wait"]
    with pytest.raises(ChoiceNotOffered, match="not offered"):
        runner.step(theo, "open_door")


def test_rendered_choices_carry_no_mechanics(demo: dict[str, Any]) -> None:
    rec = Recorder()
    ScenarioRunner(rec).start(demo, seed=1, pov="theo")
    choice = rec.events[1][1]["choices"][0]
    assert set(choice) == {"id", "label", "target", "weight"}


def test_default_pov_then_narrator(demo: dict[str, Any]) -> None:
    runner = ScenarioRunner()
    assert runner.start(demo, seed=1).pov == "mara"
    assert runner.start(tiny(), seed=1).pov == "narrator"
    assert runner.start(tiny(), seed=1, pov="ava").pov == "ava"


# -- runner refusals ---------------------------------------------------------------------------
def test_step_refusals_name_the_problem_and_emit_nothing(demo: dict[str, Any]) -> None:
    rec = Recorder()
    runner = ScenarioRunner(rec)
    state = runner.start(demo, seed=1, pov="mara")
    count = len(rec.events)
    with pytest.raises(UnknownChoice, match="no choice 'nope'; offered choices: 'open_door'"):
        runner.step(state, "nope")
    with pytest.raises(ChoiceNotOffered, match="'wait' is not offered at node 'arrival'"):
        runner.step(state, "wait")
    for choice in ["open_door", "go_up", "climb", "watch"]:
        state = runner.step(state, choice)
    assert state.finished
    count = len(rec.events)
    with pytest.raises(ScenarioFinished, match="already finished at node 'dawn_alone'"):
        runner.step(state)
    assert len(rec.events) == count


def test_no_offered_choice_is_a_clear_error() -> None:
    scene = tiny()
    scene["nodes"][0]["choices"][0]["conditions"] = [{"key": "n", "operator": "gt", "value": 5}]
    runner = ScenarioRunner()
    state = runner.start(scene, seed=1)
    assert runner.visible_choices(state) == [] and not state.finished
    with pytest.raises(NoChoiceOffered, match="offers no choice"):
        runner.step(state)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
        ({"seed": "5"}, "seed must be an integer"),
        ({"seed": 2**63}, "seed must be an integer"),
        ({"pov": "ghost"}, "POV 'ghost' is not one of the scene's povs"),
        ({"variables": ["x"]}, "variables must be an object"),
    ],
)
def test_bad_start_parameters(demo: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidStart, match=message):
        ScenarioRunner().start(demo, **kwargs)


def test_start_variables_override_scene_variables(demo: dict[str, Any]) -> None:
    state = ScenarioRunner().start(demo, seed=1, variables={"trust": 5})
    assert state.variables == {"trust": 5, "storm": 3, "flags": {"lamp_lit": False}}
    ids = [c.id for c in ScenarioRunner().visible_choices(ScenarioRunner().step(state, "peek"))]
    assert ids == ["let_in"]


def test_invalid_scene_never_reaches_the_runner(demo: dict[str, Any]) -> None:
    rec = Recorder()
    demo["start"] = "missing"
    with pytest.raises(SceneInvalid, match=r"\$\.start: start node 'missing' does not exist"):
        ScenarioRunner(rec).start(demo)
    assert rec.events == []


def test_runtime_action_errors_are_named() -> None:
    scene = tiny(actions=[{"type": "increment", "key": "s"}])
    runner = ScenarioRunner()
    state = runner.start(scene, seed=1)
    with pytest.raises(ScenarioRuntimeError, match="cannot increment 's': its value is a string"):
        runner.step(state, "go")
    scene = tiny(actions=[{"type": "set", "key": "n.deeper", "value": 1}])
    with pytest.raises(ScenarioRuntimeError, match="'n' is a number, not an object"):
        runner.step(runner.start(scene, seed=1), "go")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.pop("rng"), "malformed state: state.rng: Field required"),
        (lambda s: s["rng"].update(seed=-3), "state.rng.seed"),
        (lambda s: s.update(scene_id="other"), "belongs to scene 'other'"),
        (lambda s: s.update(current_node="zzz"), "must be the current node"),
        (lambda s: s["history"].append({"node": "zzz", "choice": None}), "unknown node 'zzz'"),
        (lambda s: s.update(finished=True), "state.finished is true"),
        (lambda s: s.update(pov="ghost"), "state.pov 'ghost'"),
        (lambda s: s.update(extra=1), "state.extra"),
    ],
)
def test_bad_states_are_refused(demo: dict[str, Any], mutate: Any, message: str) -> None:
    scene = load_scene(demo)
    wire = ScenarioRunner().start(scene, seed=1).to_dict()
    mutate(wire)
    with pytest.raises(InvalidState, match=message):
        ScenarioState.from_dict(wire, scene)


# -- conditions and actions --------------------------------------------------------------------
VARS = {"n": 3, "f": 1.5, "s": "x", "b": True, "none": None, "obj": {"deep": {"k": 1}}}


@pytest.mark.parametrize(
    ("key", "op", "value", "expected"),
    [
        ("n", "eq", 3, True),
        ("n", "eq", 4, False),
        ("b", "eq", 1, False),  # JSON: true is not 1
        ("b", "eq", True, True),
        ("missing", "eq", None, False),
        ("none", "eq", None, True),
        ("n", "neq", 4, True),
        ("missing", "neq", 4, True),
        ("n", "gt", 2, True),
        ("n", "gt", 3, False),
        ("n", "gte", 3, True),
        ("f", "lt", 2, True),
        ("n", "lte", 2, False),
        ("s", "gt", 1, False),  # wrong type: the test fails, never raises
        ("missing", "lt", 1, False),
        ("s", "in", ["x", "y"], True),
        ("n", "in", [1, 2], False),
        ("missing", "in", [1], False),
        ("n", "not_in", [1, 2], True),
        ("missing", "not_in", [1], True),
        ("obj.deep.k", "eq", 1, True),
        ("obj.deep", "exists", None, True),
        ("none", "exists", None, True),
        ("obj.nope", "exists", None, False),
        ("s.sub", "exists", None, False),
        ("obj.nope", "not_exists", None, True),
        ("n", "not_exists", None, False),
    ],
)
def test_condition_operators(key: str, op: str, value: Any, expected: bool) -> None:
    cond = Condition(key=key, operator=op, value=value)
    assert check_condition(cond, VARS) is expected


def test_actions_over_dot_paths() -> None:
    variables: dict[str, Any] = {"n": 1}
    for action in [
        Action(type="set", key="a.b.c", value={"x": [1]}),
        Action(type="increment", key="n"),
        Action(type="increment", key="counters.new", amount=2.5),
        Action(type="decrement", key="n", amount=3),
        Action(type="clear", key="a.b.c"),
        Action(type="clear", key="nothing.here"),
    ]:
        apply_action(action, variables)
    assert variables == {"n": -1, "a": {"b": {}}, "counters": {"new": 2.5}}
    assert isinstance(variables["n"], int)


# -- validation --------------------------------------------------------------------------------
def choice(**kw: Any) -> dict[str, Any]:
    return {"id": "c", "label": "C", "target": "b", **kw}


def scene_with(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "v",
        "start": "a",
        "variables": {"n": 0},
        "nodes": [{"id": "a", "choices": choices}, {"id": "b", "end": True}],
        **extra,
    }


def cond(**kw: Any) -> dict[str, Any]:
    return scene_with([choice(conditions=[{"key": "n", **kw}])])


def act(**kw: Any) -> dict[str, Any]:
    return scene_with([choice(actions=[{"key": "n", **kw}])])


ERROR_CASES = [
    ("not an object", ["nodes"], "$", "must be a JSON object"),
    ("missing fields", {"id": "x"}, "$.nodes", "'nodes' is required"),
    ("missing start field", {"id": "x", "nodes": []}, "$.start", "'start' is required"),
    ("no nodes", {"id": "x", "start": "a", "nodes": []}, "$.nodes", "at least one node"),
    ("wrong type", {**scene_with([]), "id": 5}, "$.id", "valid string, got a number"),
    ("empty scene id", {**scene_with([]), "id": " "}, "$.id", "scene id is empty"),
    (
        "duplicate node id",
        {"id": "x", "start": "a", "nodes": [{"id": "a", "end": True}, {"id": "a", "end": True}]},
        "$.nodes[1].id",
        "duplicate node id 'a' (first at $.nodes[0])",
    ),
    ("missing start node", {**scene_with([choice()]), "start": "b2"}, "$.start", "'b2'"),
    (
        "unknown target",
        scene_with([choice(target="bb")]),
        "$.nodes[0].choices[0].target",
        "unknown node 'bb' (did you mean 'b'?)",
    ),
    (
        "duplicate choice id",
        scene_with([choice(), choice()]),
        "$.nodes[0].choices[1].id",
        "duplicate choice id 'c'",
    ),
    (
        "bad operator",
        cond(operator="like", value=1),
        "$.nodes[0].choices[0].conditions[0].operator",
        "'like' is not allowed",
    ),
    (
        "in without a list",
        cond(operator="in", value=3),
        "$.nodes[0].choices[0].conditions[0].value",
        "'in' needs a list 'value', got a number",
    ),
    (
        "not_in without value",
        cond(operator="not_in"),
        "$.nodes[0].choices[0].conditions[0].value",
        "got nothing",
    ),
    (
        "gt without a number",
        cond(operator="gt", value="3"),
        "$.nodes[0].choices[0].conditions[0].value",
        "'gt' needs a number 'value', got a string",
    ),
    (
        "eq without value",
        cond(operator="eq"),
        "$.nodes[0].choices[0].conditions[0]",
        "'eq' needs a 'value'",
    ),
    (
        "exists with value",
        cond(operator="exists", value=1),
        "$.nodes[0].choices[0].conditions[0].value",
        "takes no 'value'",
    ),
    (
        "unknown condition field",
        cond(operator="exists", vale=1),
        "$.nodes[0].choices[0].conditions[0].vale",
        "unknown field 'vale'",
    ),
    (
        "bad dot path",
        scene_with([choice(conditions=[{"key": "a..b", "operator": "exists"}])]),
        "$.nodes[0].choices[0].conditions[0].key",
        "not a dot path",
    ),
    (
        "bad action type",
        act(type="multiply", value=2),
        "$.nodes[0].choices[0].actions[0].type",
        "'multiply' is not allowed",
    ),
    ("set without value", act(type="set"), "$.nodes[0].choices[0].actions[0]", "needs a 'value'"),
    (
        "increment with value",
        act(type="increment", value=2),
        "$.nodes[0].choices[0].actions[0].value",
        "takes 'amount', not 'value'",
    ),
    (
        "amount not a number",
        act(type="increment", amount="2"),
        "$.nodes[0].choices[0].actions[0].amount",
        "got a string",
    ),
    (
        "clear with value",
        act(type="clear", value=1),
        "$.nodes[0].choices[0].actions[0].value",
        "takes no 'value'",
    ),
    (
        "negative weight",
        scene_with([choice(weight=-1)]),
        "$.nodes[0].choices[0].weight",
        "greater than or equal to 0",
    ),
    (
        "empty visible_to",
        scene_with([choice(visible_to=[])]),
        "$.nodes[0].choices[0].visible_to",
        "no POV could ever see",
    ),
    (
        "undeclared POV",
        scene_with([choice(visible_to=["bob"])], metadata={"povs": ["ava"]}),
        "$.nodes[0].choices[0].visible_to[0]",
        "POV 'bob' is not one of the declared povs",
    ),
    (
        "default POV not declared",
        scene_with([choice()], metadata={"povs": ["ava"], "default_pov": "bob"}),
        "$.metadata.default_pov",
        "not one of the declared povs",
    ),
    (
        "end node with choices",
        {"id": "x", "start": "a", "nodes": [{"id": "a", "end": True, "choices": [choice()]}]},
        "$.nodes[0].choices",
        "end node 'a' has choices",
    ),
]


@pytest.mark.parametrize(
    ("raw", "path", "message"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_each_validation_error_class(raw: Any, path: str, message: str) -> None:
    report = validate_scene(raw)
    assert not report.valid and report.scene is None
    matches = [e for e in report.errors if e.path == path and message in e.message]
    assert matches, [str(e) for e in report.errors]


def test_validation_reports_structural_and_semantic_errors_together() -> None:
    raw = {
        "id": "many",
        "start": "nowhere",
        "nodes": [
            {"id": "a", "choices": [choice(target="zz"), {"id": 7, "label": "L", "target": "a"}]},
            {"id": "a", "end": "yes"},
            {"id": "c", "choices": [choice(conditions=[{"key": "n", "operator": "in"}])]},
        ],
    }
    report = validate_scene(raw)
    paths = [e.path for e in report.errors]
    assert paths == [
        "$.nodes[0].choices[0].target",
        "$.nodes[0].choices[1].id",
        "$.nodes[1].end",
        "$.nodes[1].id",
        "$.nodes[2].choices[0].conditions[0].value",
        "$.nodes[2].choices[0].target",
        "$.start",
    ]
    with pytest.raises(SceneInvalid) as info:
        load_scene(raw)
    assert len(info.value.errors) == 7 and "and 2 more" in str(info.value)


def test_validation_warnings() -> None:
    raw = {
        "id": "w",
        "start": "a",
        "nodes": [
            {
                "id": "a",
                "choices": [
                    {
                        "id": "c",
                        "label": "C",
                        "target": "b",
                        "condition": [],
                        "conditions": [{"key": "trsut", "operator": "exists"}],
                    }
                ],
            },
            {"id": "b"},
            {"id": "island", "end": True, "image": "x.png"},
        ],
    }
    report = validate_scene(raw)
    assert report.valid and report.scene is not None
    got = {(w.path, w.message.split(" ")[0]) for w in report.warnings}
    assert got == {
        ("$.nodes[0].choices[0].condition", "unknown"),
        ("$.nodes[0].choices[0].conditions[0].key", "variable"),
        ("$.nodes[1]", "node"),
        ("$.nodes[2]", "node"),
    }
    messages = " | ".join(w.message for w in report.warnings)
    assert "did you mean 'conditions'?" in messages
    assert "'island' is unreachable" in messages
    assert "no choices and is not marked end" in messages


def test_demo_scene_is_valid_and_rich_enough() -> None:
    catalog = SceneCatalog()
    assert catalog.load_demo() == ["lighthouse"]
    entry = catalog.get("lighthouse")
    assert entry is not None
    report = validate_scene(entry.raw)
    assert report.valid and report.warnings == []
    scene = entry.scene
    assert len(scene.nodes) >= 6 and scene.metadata.povs == ["mara", "theo"]
    ops = {c.operator for n in scene.nodes for ch in n.choices for c in ch.conditions}
    assert len(ops) >= 3 and scene.variables


# -- numbers JSON cannot carry: refused instead of coming back as null --------------------------
NAN = float("nan")
INF = float("inf")


def _tiny(**extra: Any) -> dict[str, Any]:
    return {
        "id": "num",
        "start": "a",
        "nodes": [
            {"id": "a", "choices": [{"id": "go", "label": "Go", "target": "b"}]},
            {"id": "b", "end": True},
        ],
        **extra,
    }


def test_non_finite_numbers_in_a_scene_are_validation_errors() -> None:
    raw = _tiny(variables={"v": NAN, "deep": {"list": [1, INF]}})
    raw["nodes"][0]["choices"][0]["weight"] = INF
    report = validate_scene(raw)
    found = {(e.path, "finite" in e.message) for e in report.errors}
    assert ("$.variables.v", True) in found and ("$.variables.deep.list[1]", True) in found
    assert ("$.nodes[0].choices[0].weight", True) in found


def test_non_finite_start_or_state_variables_are_refused() -> None:
    runner = ScenarioRunner(Recorder())
    with pytest.raises(InvalidStart, match=r"variables\.x is not a finite number"):
        runner.start(_tiny(), seed=1, variables={"x": NAN})
    data = runner.start(_tiny(), seed=1).to_dict()
    data["variables"] = {"x": [-INF]}
    with pytest.raises(InvalidState, match=r"state\.variables\.x\[0\] is not a finite number"):
        ScenarioState.from_dict(data, load_scene(_tiny()))


def test_an_action_that_overflows_is_a_runtime_error() -> None:
    with pytest.raises(ScenarioRuntimeError, match="not a finite number"):
        apply_action(Action(type="increment", key="x", amount=1e308), {"x": 1e308})
    with pytest.raises(ScenarioRuntimeError, match="not a finite number"):
        apply_action(Action(type="decrement", key="x", amount=1e308), {"x": -1e308})
