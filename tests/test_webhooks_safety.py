"""Where webhooks may go: host allow/deny lists, loopback, checks at send time (DNS included)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comfyvn.net import AddressPolicy, RefusedAddress, guarded_transport
from comfyvn.webhooks.config import ConfigError, WebhookConfig

from .support import ServerProcess
from .test_webhooks_receiver import WEBHOOKS, Receiver, create, emit, wait_deliveries


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    rec = Receiver().start()
    yield rec
    rec.stop()


# -- the policy on its own ---------------------------------------------------------------------
def test_policy_lists() -> None:
    deny = AddressPolicy(deny_hosts=["evil.example", "*.bad.example", "10.0.0.0/8"])
    with pytest.raises(RefusedAddress, match="DENY"):
        deny.check_url("https://evil.example/hook")
    with pytest.raises(RefusedAddress, match="DENY"):
        deny.check_url("https://api.bad.example/hook")
    with pytest.raises(RefusedAddress, match="DENY"):
        deny.check_url("http://10.1.2.3:8080/hook")
    with pytest.raises(RefusedAddress, match="DENY"):
        deny.check_addresses("sneaky.example", ["10.9.9.9"])
    deny.check_url("https://good.example/hook")

    allow = AddressPolicy(allow_hosts=["hooks.example", "192.168.1.0/24"])
    allow.check_url("https://hooks.example/x")
    allow.check_url("http://192.168.1.20/x")
    allow.check_addresses("hooks.example", ["203.0.113.7"])  # allowed by name
    allow.check_addresses("lan.example", ["192.168.1.9"])  # allowed by address
    allow.check_addresses("lan.example", ["::ffff:192.168.1.9"])  # ...in any IPv6 form
    with pytest.raises(RefusedAddress, match="ALLOW"):
        allow.check_url("http://127.0.0.1/x")
    with pytest.raises(RefusedAddress, match="ALLOW"):
        allow.check_addresses("other.example", ["203.0.113.7"])
    # The allow list never re-admits what is always refused.
    with pytest.raises(RefusedAddress, match="metadata"):
        AddressPolicy(allow_hosts=["169.254.0.0/16"]).check_url("http://169.254.169.254/")

    no_loopback = AddressPolicy(allow_loopback=False)
    with pytest.raises(RefusedAddress, match="loopback"):
        no_loopback.check_url("http://[::1]:8000/")
    with pytest.raises(RefusedAddress, match="loopback"):
        no_loopback.check_addresses("localhost", ["127.0.0.1"])


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("::ffff:169.254.169.254", "metadata"),  # IPv4-mapped
        ("::ffff:0:a9fe:a9fe", "metadata"),  # IPv4-translated (SIIT)
        ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 well-known prefix
        ("64:ff9b:1::a9fe:a9fe", "metadata"),  # NAT64 local-use prefix
        ("2002:a9fe:a9fe::1", "metadata"),  # 6to4
        ("::a9fe:a9fe", "metadata"),  # IPv4-compatible (deprecated)
        ("64:ff9b::a9fe:101", "link-local"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b::a00:1", "DENY"),
        ("::ffff:10.1.2.3", "DENY"),
    ],
)
def test_ipv6_forms_of_a_refused_ipv4_address_are_refused(address: str, message: str) -> None:
    """On a NAT64 or 6to4 network these IPv6 addresses reach the IPv4 address they embed, so
    each is judged as that address too (literal in the URL, or as a DNS answer)."""
    policy = AddressPolicy(deny_hosts=["10.0.0.0/8"], allow_loopback=False)
    with pytest.raises(RefusedAddress, match=message):
        policy.check_url(f"http://[{address}]:8080/hook")
    with pytest.raises(RefusedAddress, match=message):
        policy.check_addresses("rebound.example", [address])
    # Ordinary global IPv6 addresses (and the unembedded :: forms) still pass.
    policy.check_addresses("v6.example", ["2001:db8::1", "2606:4700::6810:84e5", "::2"])


def test_config_from_env() -> None:
    cfg = WebhookConfig.from_env({})
    assert cfg.retry_schedule == (0, 5, 300, 1800, 7200, 18000, 36000)
    assert cfg.timeout_s == 15.0 and cfg.disable_after == 5
    cfg = WebhookConfig.from_env(
        {"COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0, 1,2", "COMFYVN_WEBHOOK_DENY_HOSTS": "A.example, "}
    )
    assert cfg.retry_schedule == (0, 1, 2) and cfg.deny_hosts == ("a.example",)
    for name, value in [
        ("COMFYVN_WEBHOOK_TIMEOUT", "soon"),
        ("COMFYVN_WEBHOOK_TIMEOUT", "0"),
        ("COMFYVN_WEBHOOK_RETRY_SCHEDULE", "0,-5"),
        ("COMFYVN_WEBHOOK_RETRY_SCHEDULE", "0,five"),
        ("COMFYVN_WEBHOOK_ALLOW_LOOPBACK", "perhaps"),
    ]:
        with pytest.raises(ConfigError, match=name):
            WebhookConfig.from_env({name: value})


class _FixedDns(AddressPolicy):
    """A policy whose DNS answers are fixed, standing in for a name that changed its records."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        super().__init__()
        self.answers = answers

    async def resolve(self, host: str, port: int) -> list[str]:
        return self.answers[host]


def _post_through_guard(policy: AddressPolicy, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = guarded_transport(policy, httpx.Limits(max_connections=2))
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            return await client.post(url, content=b"{}")

    return asyncio.run(run())


def test_connect_time_check_uses_the_addresses_it_connects_to(receiver: Receiver) -> None:
    # A name that passed at subscription time but now resolves to the metadata service.
    rebound = _FixedDns({"hooks.example": ["169.254.169.254"]})
    with pytest.raises(RefusedAddress, match="metadata"):
        _post_through_guard(rebound, "http://hooks.example/x")
    # A refused address anywhere in the answer refuses the host.
    mixed = _FixedDns({"hooks.example": ["127.0.0.1", "fe80::1"]})
    with pytest.raises(RefusedAddress, match="link-local"):
        _post_through_guard(mixed, f"http://hooks.example:{receiver.port}/guard")
    # A safe answer connects to the checked address; an address that refuses the connection
    # is skipped for the next one. The Host header keeps the name.
    fine = _FixedDns({"hooks.example": ["127.0.0.2", "127.0.0.1"]})
    response = _post_through_guard(fine, f"http://hooks.example:{receiver.port}/guard")
    assert response.status_code == 200
    [req] = receiver.at("/guard")
    assert req.headers["host"] == f"hooks.example:{receiver.port}"


# -- through the real server -------------------------------------------------------------------
def test_deny_and_allow_lists_on_the_server(tmp_path: Path, receiver: Receiver) -> None:
    deny = ServerProcess(
        tmp_path / "deny", env={"COMFYVN_WEBHOOK_DENY_HOSTS": "localhost,127.0.0.2/32"}
    ).start()
    try:
        with deny.client() as client:
            for url in (f"http://localhost:{receiver.port}/d", "http://127.0.0.2/d"):
                response = client.post(WEBHOOKS, json={"url": url})
                assert response.status_code == 400, response.text
                assert "COMFYVN_WEBHOOK_DENY_HOSTS" in response.json()["detail"]
            create(client, receiver.url("/d"))  # 127.0.0.1 itself is not denied
    finally:
        deny.stop()
    allow = ServerProcess(
        tmp_path / "allow",
        env={"COMFYVN_WEBHOOK_ALLOW_HOSTS": "hooks.example", "COMFYVN_WEBHOOK_ALLOW_LOOPBACK": "1"},
    ).start()
    try:
        with allow.client() as client:
            response = client.post(WEBHOOKS, json={"url": receiver.url("/a")})
            assert response.status_code == 400
            assert "COMFYVN_WEBHOOK_ALLOW_HOSTS" in response.json()["detail"]
    finally:
        allow.stop()


def test_send_time_check_refuses_after_the_rules_change(tmp_path: Path, receiver: Receiver) -> None:
    server = ServerProcess(tmp_path / "data", env={"COMFYVN_WEBHOOK_RETRY_SCHEDULE": "0,60"})
    server.start()
    try:
        with server.client() as client:
            hook = create(client, receiver.url("/later-refused"))
        # Same data dir, restarted with loopback receivers switched off.
        server.stop()
        server.env = {**server.env, "COMFYVN_WEBHOOK_ALLOW_LOOPBACK": "0"}
        server.start()
        with server.client() as client:
            emit(client, "refused")
            [row] = wait_deliveries(client, hook["id"], lambda d: d and d[0]["attempts"] == 1)
            assert row["status"] == "pending"  # retried later, in case the rules change back
            assert row["last_error"].startswith("refused:") and "loopback" in row["last_error"]
            ping = client.post(f"{WEBHOOKS}/{hook['id']}/ping").json()
            assert ping["delivered"] is False and "loopback" in ping["attempt"]["error"]
        assert receiver.at("/later-refused") == []
    finally:
        server.stop()


def test_bad_webhook_env_stops_the_server_with_a_named_error(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", env={"COMFYVN_WEBHOOK_RETRY_SCHEDULE": "soon"})
    with pytest.raises(RuntimeError, match="COMFYVN_WEBHOOK_RETRY_SCHEDULE"):
        server.start()
    server.stop()


def test_the_database_holding_secrets_is_private(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        mode = (server.data_dir / "events.sqlite3").stat().st_mode & 0o777
        assert mode == 0o600
    finally:
        server.stop()
