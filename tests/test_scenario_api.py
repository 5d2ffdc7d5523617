"""The scenario routes, demo content, plugin and terminal player over a real server subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from comfyvn.core.hook_specs import ChoiceRenderPayload, SceneEnterPayload
from comfyvn.scenario.catalog import DEMO_DIR, read_scene_file

from .support import ROOT, ServerProcess

MODELS = {"on_scene_enter": SceneEnterPayload, "on_choice_render": ChoiceRenderPayload}
SCENE_EVENTS = "on_scene_enter,on_choice_render"
MAX_BODY = 200_000


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One dev-mode demo server for the module, with the example plugin loaded."""
    data = tmp_path_factory.mktemp("scenario") / "data"
    data.mkdir()
    proc = ServerProcess(
        data,
        extra_args=["--dev", "--demo"],
        env={
            "COMFYVN_MOD_PLUGIN_ROOT": str(ROOT / "dev" / "modder_hooks"),
            "COMFYVN_SCENARIO_MAX_BODY": str(MAX_BODY),
        },
    ).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as c:
        yield c


def demo(scene_id: str = "lighthouse") -> dict[str, Any]:
    """The demo scene under a fresh id, so each test can pick out its own events."""
    raw = read_scene_file(DEMO_DIR / "lighthouse.json")
    raw["id"] = scene_id
    return raw


def step(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/api/scenario/run/step", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def events_since(client: httpx.Client, seq: int, scene_id: str) -> list[dict[str, Any]]:
    items = client.get(
        "/api/modder/hooks/history", params={"since": seq, "limit": 1000, "event": SCENE_EVENTS}
    ).json()["items"]
    return [e for e in items if e["data"]["scene_id"] == scene_id]


def latest_seq(client: httpx.Client) -> int:
    return client.get("/health").json()["seq"]


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


# -- validate ----------------------------------------------------------------------------------
def test_validate_route(client: httpx.Client) -> None:
    ok = client.post("/api/scenario/validate", json={"scene": demo()})
    assert ok.status_code == 200
    assert ok.json() == {"valid": True, "errors": [], "warnings": []}
    broken = demo()
    broken["start"] = "nowhere"
    broken["nodes"][0]["choices"][0]["conditions"] = [{"key": "trust", "operator": "in"}]
    body = client.post("/api/scenario/validate", json={"scene": broken}).json()
    assert body["valid"] is False
    assert [e["path"] for e in body["errors"]] == [
        "$.nodes[0].choices[0].conditions[0].value",
        "$.start",
    ]
    assert all(e["message"] for e in body["errors"])


@pytest.mark.parametrize(
    "body",
    [b"", b"{not json", b'{"scene": []}', b"{}", b'{"scene": {}, "extra": 1}'],
    ids=["empty", "not json", "scene not an object", "no scene", "unknown field"],
)
def test_validate_rejects_malformed_requests(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/api/scenario/validate", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"]


def test_json_body_is_read_whatever_the_content_type(client: httpx.Client) -> None:
    body = json.dumps({"scene": demo(), "seed": 1}).encode()
    form = {"content-type": "application/x-www-form-urlencoded"}  # what `curl -d` sends
    assert client.post("/api/scenario/run/step", content=body, headers=form).status_code == 200
    check = client.post("/api/scenario/validate", content=json.dumps({"scene": demo()}))
    assert check.json()["valid"] is True


@pytest.mark.parametrize("route", ["/api/scenario/validate", "/api/scenario/run/step"])
def test_oversized_body_is_413(client: httpx.Client, route: str) -> None:
    scene = demo()
    scene["metadata"]["padding"] = "x" * MAX_BODY
    response = client.post(route, json={"scene": scene})
    assert response.status_code == 413
    assert f"the limit is {MAX_BODY} bytes" in response.json()["detail"]


# -- run/step ----------------------------------------------------------------------------------
MARA_PATH = ["open_door", "ask_boat", "turn_back", "offer_help", "signal"]


def test_full_playthrough_over_rest_emits_exact_committed_hooks(client: httpx.Client) -> None:
    scene = demo("rest-play")
    before = latest_seq(client)
    turn = step(client, scene=scene, seed=9, pov="mara")
    assert turn["state"]["current_node"] == "arrival" and turn["state"]["history"] == [
        {"node": "arrival", "choice": None}
    ]
    assert turn["node"]["choices"] == turn["choices"]
    assert [c["id"] for c in turn["choices"]] == ["open_door", "peek"]
    # Answered after the commit: the start node's events are already in the history.
    assert [e["event"] for e in events_since(client, before, "rest-play")] == [
        "on_scene_enter",
        "on_choice_render",
    ]
    for choice in MARA_PATH:
        turn = step(client, scene=scene, state=turn["state"], choice_id=choice)
    assert turn["finished"] is True and turn["choices"] == []
    assert turn["state"]["finished"] is True
    assert turn["state"]["variables"]["flags"] == {"lamp_lit": True, "helper": True}

    events = events_since(client, before, "rest-play")
    nodes = ["arrival", "kitchen", "stairs", "kitchen", "lamp_room"]
    expected = [(ev, n) for n in nodes for ev in ("on_scene_enter", "on_choice_render")]
    expected.append(("on_scene_enter", "dawn_together"))
    assert [(e["event"], e["data"]["node"]) for e in events] == expected
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for envelope in events:
        MODELS[envelope["event"]].model_validate(envelope["data"])
    assert events[-1]["data"]["history"] == turn["state"]["history"]


def test_seeded_auto_play_is_deterministic_over_rest(client: httpx.Client) -> None:
    def play(seed: int, pov: str) -> dict[str, Any]:
        turn = step(client, scene=demo("det"), seed=seed, pov=pov)
        while not turn["finished"]:
            turn = step(client, scene=demo("det"), state=turn["state"], seed=12345)
        return turn["state"]

    for pov in ("mara", "theo"):
        first = play(77, pov)
        assert play(77, pov) == first
        assert first["rng"] == {"seed": 77, "draws": len(first["history"]) - 1}


def test_pov_filtering_over_rest(client: httpx.Client) -> None:
    scene = demo("pov")
    before = latest_seq(client)
    theo = step(client, scene=scene, pov="theo", seed=1)
    assert [c["id"] for c in theo["choices"]] == ["knock_again", "wait"]
    mara = step(client, scene=scene, seed=1)  # metadata.default_pov
    assert mara["state"]["pov"] == "mara"
    render = [e for e in events_since(client, before, "pov") if e["event"] == "on_choice_render"]
    assert [[c["id"] for c in e["data"]["choices"]] for e in render] == [
        ["knock_again", "wait"],
        ["open_door", "peek"],
    ]
    assert "knock_again" not in json.dumps(mara) and "open_door" not in json.dumps(theo)


def bad_step(client: httpx.Client, status: int, **body: Any) -> str:
    response = client.post("/api/scenario/run/step", json=body)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else json.dumps(detail)


@pytest.mark.parametrize(
    ("seed", "fragment"),
    [
        (-1, "greater than or equal to 0"),
        ("5", "valid integer"),
        (1.5, "valid integer"),
        (True, "valid integer"),
        (2**63, "less than or equal to"),
    ],
)
def test_bad_seed_is_422(client: httpx.Client, seed: Any, fragment: str) -> None:
    detail = bad_step(client, 422, scene=demo(), seed=seed)
    assert fragment in detail and "seed" in detail


def test_step_4xx_paths(client: httpx.Client) -> None:
    scene = demo("errors")
    start = step(client, scene=scene, seed=3, pov="mara")
    state = start["state"]
    before = latest_seq(client)
    # A choice without the state it continues is refused, not silently ignored.
    assert "needs the 'state'" in bad_step(client, 422, scene=scene, choice_id="open_door")
    # Numbers JSON cannot carry (they would come back as null) are refused.
    for body in (
        b'{"scene": %s, "variables": {"x": NaN}}' % json.dumps(scene).encode(),
        b'{"scene": %s, "variables": {"x": 1e999}}' % json.dumps(scene).encode(),
    ):
        raw_nan = client.post("/api/scenario/run/step", content=body)
        assert raw_nan.status_code == 422 and "finite" in raw_nan.text, raw_nan.text
    # Unknown choice id and a choice hidden from this POV.
    assert "no choice 'nope'" in bad_step(client, 422, scene=scene, state=state, choice_id="nope")
    hidden = bad_step(client, 409, scene=scene, state=state, choice_id="knock_again")
    assert "not offered" in hidden
    # Malformed scenes and states.
    broken = demo("errors")
    broken["nodes"][1]["choices"][0]["target"] = "nowhere"
    assert "$.nodes[1].choices[0].target" in bad_step(client, 422, scene=broken, seed=1)
    assert "'nodes' is required" in bad_step(client, 422, scene={"id": "x", "start": "a"})
    assert "state.rng" in bad_step(
        client, 422, scene=scene, state={k: v for k, v in state.items() if k != "rng"}
    )
    assert "belongs to scene 'errors'" in bad_step(client, 422, scene=demo("other"), state=state)
    assert "must be the current node" in bad_step(
        client, 422, scene=scene, state={**state, "current_node": "kitchen"}
    )
    # Start-only parameters with a state; a POV outside the scene's povs.
    assert "start a new run" in bad_step(client, 409, scene=scene, state=state, pov="theo")
    assert "only applies when starting" in bad_step(
        client, 422, scene=scene, state=state, variables={"trust": 9}
    )
    assert "not one of the scene's povs" in bad_step(client, 422, scene=scene, pov="ghost")
    assert "choice" in bad_step(client, 422, scene=scene, choice=1)  # unknown field
    # Nothing offered to pick, and an action that cannot apply.
    stuck = {
        "id": "stuck",
        "start": "a",
        "variables": {"s": "x"},
        "nodes": [
            {
                "id": "a",
                "choices": [
                    {
                        "id": "go",
                        "label": "Go",
                        "target": "b",
                        "conditions": [{"key": "s", "operator": "eq", "value": "y"}],
                    },
                    {
                        "id": "bump",
                        "label": "Bump",
                        "target": "b",
                        "actions": [{"type": "increment", "key": "s"}],
                    },
                ],
            },
            {"id": "b", "end": True},
        ],
    }
    assert latest_seq(client) == before  # no refused step emitted anything
    first = step(client, scene=stuck, seed=1)
    before = latest_seq(client)
    assert "cannot increment 's'" in bad_step(
        client, 409, scene=stuck, state=first["state"], choice_id="bump"
    )
    hidden_state = {**first["state"], "variables": {"s": 1}}  # 'go' hidden, 'bump' offered
    stuck["nodes"][0]["choices"][1]["visible_to"] = ["nobody"]
    assert "offers no choice" in bad_step(client, 409, scene=stuck, state=hidden_state)
    # A malformed JSON body is a 422 and a missing token a 401, never a 500.
    raw = client.post(
        "/api/scenario/run/step", content=b"{", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 422
    assert httpx.post(f"{client.base_url}/api/scenario/run/step", json={}).status_code == 401
    assert latest_seq(client) == before  # no refused step emitted anything


def test_step_on_a_finished_state_is_409_without_emitting(client: httpx.Client) -> None:
    scene = demo("finished")
    turn = step(client, scene=scene, seed=2)
    while not turn["finished"]:
        turn = step(client, scene=scene, state=turn["state"])
    before = latest_seq(client)
    detail = bad_step(client, 409, scene=scene, state=turn["state"])
    assert "already finished" in detail
    assert latest_seq(client) == before


# -- demo content, live stream, plugin ---------------------------------------------------------
def test_demo_scenes_are_listed_and_served(client: httpx.Client) -> None:
    listing = client.get("/api/scenario/scenes").json()
    assert listing["ok"] is True
    item = next(i for i in listing["items"] if i["id"] == "lighthouse")
    assert item["source"] == "demo" and item["nodes"] >= 6 and item["povs"] == ["mara", "theo"]
    body = client.get("/api/scenario/scenes/lighthouse").json()
    assert body["scene"] == demo()
    assert step(client, scene=body["scene"], seed=1)["state"]["current_node"] == "arrival"
    missing = client.get("/api/scenario/scenes/nope")
    assert missing.status_code == 404 and "no scene 'nope'" in missing.json()["detail"]


def test_websocket_shows_scenario_hooks_live(srv: ServerProcess, client: httpx.Client) -> None:
    url = f"{srv.ws_url}/api/modder/hooks/ws?topics={SCENE_EVENTS}"
    with connect(url, additional_headers=srv.headers) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["ok"] is True
        turn = step(client, scene=demo("live"), seed=4)
        step(client, scene=demo("live"), state=turn["state"])
        got = []
        while len(got) < 4:
            msg = json.loads(ws.recv(timeout=10))
            if not msg.get("ping") and msg["data"]["scene_id"] == "live":
                got.append((msg["event"], msg["data"]["node"]))
    assert got[0] == ("on_scene_enter", "arrival") and got[1] == ("on_choice_render", "arrival")
    assert got[2][0] == "on_scene_enter" and got[3][0] == "on_choice_render"


def test_example_plugin_receives_scene_enter_while_a_scenario_runs(
    srv: ServerProcess, client: httpx.Client
) -> None:
    scene = demo("plugin-run")
    turn = step(client, scene=scene, seed=6, pov="theo")
    entered = [turn["state"]["current_node"]]
    while not turn["finished"]:
        turn = step(client, scene=scene, state=turn["state"])
        entered.append(turn["state"]["current_node"])
    out = srv.data_dir / "example_plugin.jsonl"

    def lines() -> list[dict[str, Any]]:
        if not out.exists():
            return []
        rows = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        return [r for r in rows if r["scene_id"] == "plugin-run"]

    wait_for(lambda: len(lines()) == len(entered))
    assert [r["node"] for r in lines()] == entered
    assert {r["pov"] for r in lines()} == {"theo"}


def test_server_without_demo_lists_no_scenes(data_dir: Path) -> None:
    server = ServerProcess(data_dir).start()
    try:
        with server.client() as c:
            assert c.get("/api/scenario/scenes").json()["items"] == []
            assert c.get("/api/scenario/scenes/lighthouse").status_code == 404
    finally:
        server.stop()


# -- terminal player ---------------------------------------------------------------------------
def comfyvn(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_player_through_the_server(srv: ServerProcess, client: httpx.Client) -> None:
    before = latest_seq(client)
    done = comfyvn(
        "scenario", "play", "lighthouse", "--seed", "5", "--auto",
        "--server", srv.url, "--token", srv.token,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "-- the end --" in done.stdout and "server " in done.stdout
    events = events_since(client, before, "lighthouse")
    assert events[0]["event"] == "on_scene_enter" and events[0]["data"]["node"] == "arrival"
    assert events[-1]["data"]["finished"] is True
    bad = comfyvn("scenario", "play", "lighthouse", "--seed", "-4", "--server", srv.url,
                  "--token", srv.token)  # fmt: skip
    assert bad.returncode == 1 and "seed" in bad.stderr and "422" in bad.stderr


def test_player_in_process_with_numbered_choices(tmp_path: Path) -> None:
    done = comfyvn(
        "scenario", "play", "lighthouse", "--pov", "theo", "--seed", "2", "--show-hooks",
        stdin="2\n1\n7\n1\n\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "pov theo, seed 2, in-process" in out
    assert "1) Knock again, louder" in out and "Open the door" not in out
    assert "pick 1-2" in out  # '7' was refused and asked again
    assert "(seeded pick)" in out and "(stopped)" in out
    assert "[hook] on_scene_enter node=arrival" in done.stderr
    assert "[hook] on_choice_render node=arrival choices=knock_again,wait" in done.stderr

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"id": "b", "start": "x", "nodes": [{"id": "a", "end": True}]}))
    invalid = comfyvn("scenario", "play", str(broken))
    assert invalid.returncode == 1 and "error   $.start" in invalid.stderr
    check = comfyvn("scenario", "validate", str(broken))
    assert check.returncode == 1 and "scene is invalid: 1 error(s)" in check.stdout
    missing = comfyvn("scenario", "play", str(tmp_path / "nope.json"))
    assert missing.returncode == 1 and "bundled demo scenes: lighthouse" in missing.stderr
