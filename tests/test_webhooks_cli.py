"""``comfyvn webhooks list | add | deliveries | redeliver | ping | rm`` against a real server and
a real receiver on 127.0.0.1, and finding the server with no flags at all (server.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .support import ROOT, ServerProcess
from .test_webhooks_receiver import (
    Receiver,
    Reply,
    cleaning_client,
    emit,
    wait_deliveries,
)


def comfyvn(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m comfyvn ...`` without the outer COMFYVN_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COMFYVN_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "comfyvn", *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(Path(tmp_path_factory.mktemp("webhooks-cli"))).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[httpx.Client]:
    yield from cleaning_client(srv)


def wh(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return comfyvn("webhooks", *args, f"--server={srv.url}", f"--token={srv.token}")


def added_id_and_secret(done: subprocess.CompletedProcess[str]) -> tuple[str, str]:
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    hook_id = lines[0].removeprefix("added webhook ").strip()
    secret = next(x.split()[-1] for x in lines if x.strip().startswith("secret:"))
    return hook_id, secret


def test_every_subcommand(srv: ServerProcess, client: httpx.Client, receiver: Receiver) -> None:
    empty = wh(srv, "list")
    assert empty.returncode == 0, empty.stderr
    assert "no webhooks" in empty.stdout

    added = wh(
        srv, "add", receiver.url("/cli"), "--events", "on_scene_enter,on_choice_render",
        "--description", "from the CLI",
    )  # fmt: skip
    hook_id, secret = added_id_and_secret(added)
    assert secret.startswith("whsec_")
    assert "store the secret now" in added.stdout and "only this once" in added.stdout
    assert "on_scene_enter,on_choice_render" in added.stdout

    listed = wh(srv, "list")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:4] == ["ID", "STATE", "EVENTS", "URL"]
    assert row.split()[:4] == [hook_id, "enabled", "on_scene_enter,on_choice_render",
                               receiver.url("/cli")]  # fmt: skip
    assert "from the CLI" in row and "1 webhook(s): 1 enabled" in listed.stdout
    assert secret not in listed.stdout and secret[6:] not in listed.stdout
    as_json = json.loads(wh(srv, "list", "--json").stdout)
    [item] = as_json["items"]
    assert item["id"] == hook_id and item["secret"] == f"whsec_****{secret[-4:]}"

    # A delivery shows up in the log, newest first.
    ack = emit(client, "cli-1")
    receiver.wait_for("/cli", 1)
    [row_d] = wait_deliveries(client, hook_id, lambda d: d and d[0]["status"] == "delivered")
    log = wh(srv, "deliveries", hook_id)
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "EVENT", "SEQ", "STATUS"]
    assert lines[1].split()[:6] == [
        str(row_d["id"]), "on_scene_enter", str(ack["seq"]), "delivered", "1", "200",
    ]  # fmt: skip
    assert "1 delivery, newest first" in log.stdout
    log_json = json.loads(wh(srv, "deliveries", hook_id, "--json").stdout)
    assert [d["id"] for d in log_json["items"]] == [row_d["id"]]
    assert "no deliveries" in wh(srv, "deliveries", hook_id, "--status", "failed").stdout

    # Redeliver sends the same event again now.
    again = wh(srv, "redeliver", hook_id, str(row_d["id"]))
    assert again.returncode == 0, again.stderr
    assert f"redeliver {row_d['id']}: delivered (HTTP 200" in again.stdout
    first, second = receiver.wait_for("/cli", 2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == ack["id"]
    again_json = json.loads(wh(srv, "redeliver", hook_id, str(row_d["id"]), "--json").stdout)
    assert again_json["delivered"] is True and again_json["delivery"]["attempts"] == 3

    # Ping: 0 when the receiver takes it, 1 (with the reason) when it does not.
    ping = wh(srv, "ping", hook_id)
    assert ping.returncode == 0, ping.stderr
    assert f"ping {hook_id}: delivered (HTTP 200" in ping.stdout
    assert receiver.wait_for("/cli", 4)[-1].envelope["event"] == "ping"
    receiver.plan("/cli", Reply(503, body=b"maintenance"))
    failed = wh(srv, "ping", hook_id)
    assert failed.returncode == 1
    assert "not delivered: HTTP 503" in failed.stdout and "response: maintenance" in failed.stdout
    ping_json = wh(srv, "ping", hook_id, "--json")
    assert ping_json.returncode == 0 and json.loads(ping_json.stdout)["delivered"] is True

    # Nothing of it ever printed the secret again.
    for done in (listed, log, again, ping, failed):
        assert secret not in done.stdout + done.stderr

    removed = wh(srv, "rm", hook_id)
    assert removed.returncode == 0, removed.stderr
    assert f"removed webhook {hook_id}" in removed.stdout
    assert "no webhooks" in wh(srv, "list").stdout
    gone = wh(srv, "rm", hook_id, "--json")
    assert gone.returncode == 2 and "404" in gone.stderr and not gone.stdout


def test_add_json_and_errors(srv: ServerProcess, client: httpx.Client, receiver: Receiver) -> None:
    done = wh(srv, "add", receiver.url("/cli-json"), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["webhook"]["secret"].startswith("whsec_") and body["webhook"]["events"] == ["*"]
    assert "store the secret" in body["note"]
    removed = json.loads(wh(srv, "rm", body["webhook"]["id"], "--json").stdout)
    assert removed["deleted"] == [body["webhook"]["id"]]

    refused = wh(srv, "add", "ftp://127.0.0.1/x")
    assert refused.returncode == 2 and "only http and https" in refused.stderr
    assert wh(srv, "deliveries", "nope").returncode == 2
    assert wh(srv, "ping", "nope").returncode == 2
    unreachable = comfyvn("webhooks", "list", "--server=http://127.0.0.1:9", "--token=-x")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr
    bad_token = comfyvn("webhooks", "list", f"--server={srv.url}", "--token=-not-the-token")
    assert bad_token.returncode == 2 and "refused the API token" in bad_token.stderr


def test_passwords_in_urls_are_masked(
    srv: ServerProcess, client: httpx.Client, receiver: Receiver
) -> None:
    url = f"http://robot:hunter2-pass@127.0.0.1:{receiver.port}/auth"
    added = wh(srv, "add", url)
    hook_id, _secret = added_id_and_secret(added)
    masked = f"http://robot:****@127.0.0.1:{receiver.port}/auth"
    assert masked in added.stdout
    listed = wh(srv, "list")
    assert masked in listed.stdout
    for done in (added, listed, wh(srv, "list", "--json"), wh(srv, "ping", hook_id)):
        assert "hunter2-pass" not in done.stdout + done.stderr


def test_no_flags_find_the_server_through_server_json(tmp_path: Path, receiver: Receiver) -> None:
    """The `make run` checkout: the server serves ./var/studio; no flag, no COMFYVN_* variable,
    an empty home: only ./var/studio/server.json can lead the CLI to it (on a random port)."""
    checkout = tmp_path / "checkout"
    home = tmp_path / "home"
    home.mkdir()
    srv = ServerProcess(checkout / "var" / "studio").start()
    try:
        assert srv.port != 8001
        env = {"HOME": str(home)}
        added = comfyvn("webhooks", "add", receiver.url("/found"), cwd=checkout, env=env)
        hook_id, _ = added_id_and_secret(added)
        listed = comfyvn("webhooks", "list", "--json", cwd=checkout, env=env)
        assert listed.returncode == 0, listed.stderr
        assert [h["id"] for h in json.loads(listed.stdout)["items"]] == [hook_id]

        with srv.client() as api:
            ack = emit(api, "found")
        tail = comfyvn(
            "hooks", "tail", "--since", "0", "--count", "1", cwd=checkout, env=env, timeout=60
        )
        assert tail.returncode == 0, tail.stderr
        assert json.loads(tail.stdout.splitlines()[0])["id"] == ack["id"]

        # COMFYVN_DATA_DIR (what `comfyvn serve` itself uses) works from anywhere.
        elsewhere = comfyvn(
            "webhooks", "list", cwd=tmp_path,
            env={**env, "COMFYVN_DATA_DIR": str(srv.data_dir)},
        )  # fmt: skip
        assert elsewhere.returncode == 0 and hook_id in elsewhere.stdout
        by_flag = comfyvn("webhooks", "rm", hook_id, f"--data-dir={srv.data_dir}", cwd=tmp_path,
                          env=env)  # fmt: skip
        assert by_flag.returncode == 0, by_flag.stderr
    finally:
        srv.stop()
    # Stopped: the file is gone, so the CLI falls back to the default URL (and says so).
    assert not (srv.data_dir / "server.json").exists()
    after = comfyvn("webhooks", "list", cwd=checkout, env={"HOME": str(home)})
    assert after.returncode == 2 and "http://127.0.0.1:8001" in after.stderr
