"""One outbound address policy for webhooks and provider checks: the rules, every spelling of a
refused address, the env knobs, the guarded transport, and a real-socket proof (in a private
network namespace) that no refused address ever receives a connection."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfyvn.core.env import EnvError
from comfyvn.core.settings import Settings
from comfyvn.net import (
    AddressPolicy,
    GuardedTransport,
    RefusedAddress,
    Rule,
    host_address,
    parse_legacy_ipv4,
    policy_from_settings,
)
from comfyvn.providers.config import ProviderSettings
from comfyvn.providers.health import HealthService
from comfyvn.providers.models import ProviderCreate
from comfyvn.providers.registry import Invalid, ProviderRegistry

from .support import ROOT

# -- inet_aton-style numeric hosts -------------------------------------------------------------
META = ipaddress.IPv4Address("169.254.169.254")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("169.254.169.254", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),  # one decimal number
        ("0xa9fea9fe", "169.254.169.254"),  # one hex number
        ("0XA9FEA9FE", "169.254.169.254"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),  # dotted hex
        ("0251.0376.0251.0376", "169.254.169.254"),  # dotted octal
        ("0251.254.0xa9.254", "169.254.169.254"),  # mixed bases
        ("169.254.43518", "169.254.169.254"),  # a.b.c: c is 16 bits
        ("169.16689662", "169.254.169.254"),  # a.b: b is 24 bits
        ("0", "0.0.0.0"),
        ("00", "0.0.0.0"),
        ("0x0", "0.0.0.0"),
        ("0.0", "0.0.0.0"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("4294967295", "255.255.255.255"),
        ("00000000000000000000000001", "0.0.0.1"),  # leading zeros never overflow
        ("0x00000000000000a9fea9fe", "169.254.169.254"),
    ],
)
def test_legacy_ipv4_forms(text: str, expected: str) -> None:
    assert parse_legacy_ipv4(text) == ipaddress.IPv4Address(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0x",  # a hex prefix needs a digit
        "08",  # not octal
        "0389",
        "4294967296",  # 2**32
        "0x100000000",
        "1.2.3.256",
        "1.2.65536",
        "1.16777216",
        "256.1.1.1",
        "1.2.3.4.5",
        "1..2",
        ".1.2.3",
        "1.2.3.",
        "-1",
        "+1",
        "1e3",
        "0x1g",
        "\u0661\u0662\u0667.\u0660.\u0660.\u0661",  # Arabic-Indic digits: int() reads them
        "example.com",
    ],
)
def test_legacy_ipv4_non_forms(text: str) -> None:
    assert parse_legacy_ipv4(text) is None


def _aton(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def test_legacy_parser_agrees_with_the_c_library() -> None:
    """Exhaustive over short strings of the characters that matter, plus boundary numbers: the
    parser reads exactly what the platform's ``inet_aton`` reads (what ``getaddrinfo`` uses)."""
    alphabet = "0189ax."
    cases = {"".join(p) for n in range(1, 6) for p in itertools.product(alphabet, repeat=n)}
    for bits in (8, 16, 24, 32):
        for value in (2**bits - 1, 2**bits):
            cases.update({str(value), f"0x{value:x}", f"0{value:o}", f"1.{value}", f"1.2.{value}"})
    for text in sorted(cases):
        assert parse_legacy_ipv4(text) == _aton(text), text


# -- the rules, every spelling -----------------------------------------------------------------
FULL_WIDTH_METADATA = "".join(
    chr(0xFF10 + int(ch)) if ch.isdigit() else ch for ch in "169.254.169.254"
)
REFUSED: list[tuple[str, str, str]] = [
    # (host as written in a URL, rule, words the message must contain)
    ("169.254.169.254", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("2852039166", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("0xa9fea9fe", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("0xa9.0xfe.0xa9.0xfe", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("0251.0376.0251.0376", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("169.254.43518", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("169.16689662", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    ("169.254.169.254.", Rule.CLOUD_METADATA, "is a cloud metadata address"),
    (FULL_WIDTH_METADATA, Rule.CLOUD_METADATA, "cloud metadata"),
    ("169\u3002254\u3002169\u3002254", Rule.CLOUD_METADATA, "cloud metadata"),  # ideographic dots
    ("[::ffff:169.254.169.254]", Rule.CLOUD_METADATA, "which embeds 169.254.169.254"),
    ("[::ffff:a9fe:a9fe]", Rule.CLOUD_METADATA, "cloud metadata"),
    ("[::ffff:0:a9fe:a9fe]", Rule.CLOUD_METADATA, "cloud metadata"),  # SIIT
    ("[64:ff9b::a9fe:a9fe]", Rule.CLOUD_METADATA, "cloud metadata"),  # NAT64
    ("[64:ff9b:1::a9fe:a9fe]", Rule.CLOUD_METADATA, "cloud metadata"),  # NAT64 local-use
    ("[2002:a9fe:a9fe::1]", Rule.CLOUD_METADATA, "cloud metadata"),  # 6to4
    ("[::a9fe:a9fe]", Rule.CLOUD_METADATA, "cloud metadata"),  # IPv4-compatible
    ("[2001:0:4136:e378:8000:63bf:5601:5601]", Rule.CLOUD_METADATA, "cloud metadata"),  # Teredo
    ("[fd00:ec2::254]", Rule.CLOUD_METADATA, "cloud metadata"),
    ("100.100.100.200", Rule.CLOUD_METADATA, "cloud metadata"),
    ("1684301000", Rule.CLOUD_METADATA, "cloud metadata"),  # 100.100.100.200 in decimal
    ("0x646464c8", Rule.CLOUD_METADATA, "cloud metadata"),
    ("0144.0144.0144.0310", Rule.CLOUD_METADATA, "cloud metadata"),
    ("[::ffff:100.100.100.200]", Rule.CLOUD_METADATA, "cloud metadata"),
    ("168.63.129.16", Rule.CLOUD_METADATA, "cloud metadata"),
    ("169.254.170.2", Rule.CLOUD_METADATA, "cloud metadata"),
    ("metadata.google.internal", Rule.CLOUD_METADATA, "cloud metadata endpoint"),
    ("METADATA.google.internal.", Rule.CLOUD_METADATA, "cloud metadata endpoint"),
    ("169.254.10.1", Rule.LINK_LOCAL, "is a link-local address"),
    ("2851998209", Rule.LINK_LOCAL, "is a link-local address"),  # 169.254.10.1
    ("[fe80::1]", Rule.LINK_LOCAL, "is a link-local address"),
    ("[fe80::1%25eth0]", Rule.LINK_LOCAL, "is a link-local address"),
    ("[::ffff:169.254.10.1]", Rule.LINK_LOCAL, "is a link-local address"),
    ("0.0.0.0", Rule.UNSPECIFIED, "is an unspecified address"),
    ("0", Rule.UNSPECIFIED, "is an unspecified address"),
    ("0x0", Rule.UNSPECIFIED, "is an unspecified address"),
    ("0.0", Rule.UNSPECIFIED, "is an unspecified address"),
    ("0.1.2.3", Rule.UNSPECIFIED, "is an unspecified address"),
    ("[::]", Rule.UNSPECIFIED, "is an unspecified address"),
    ("[::ffff:0.0.0.0]", Rule.UNSPECIFIED, "is an unspecified address"),
    ("224.0.0.1", Rule.MULTICAST, "is a multicast address"),
    ("0xe0000001", Rule.MULTICAST, "is a multicast address"),
    ("[ff02::1]", Rule.MULTICAST, "is a multicast address"),
    ("255.255.255.255", Rule.BROADCAST, "is the broadcast address"),
    ("4294967295", Rule.BROADCAST, "is the broadcast address"),
]


@pytest.mark.parametrize(("host", "rule", "words"), REFUSED)
def test_every_spelling_is_refused_and_named(host: str, rule: str, words: str) -> None:
    with pytest.raises(RefusedAddress, match=words) as caught:
        AddressPolicy().check_url(f"http://{host}:8080/x")
    assert caught.value.rule == rule


@pytest.mark.parametrize(("host", "rule", "words"), REFUSED)
def test_every_spelling_is_refused_at_connect_time_too(host: str, rule: str, words: str) -> None:
    """What the transport checks before resolving: the host exactly as httpx hands it over."""
    raw = host.strip("[]")
    if raw.startswith("fe80::1%25"):
        raw = "fe80::1%eth0"
    with pytest.raises(RefusedAddress) as caught:
        asyncio.run(_NoDns().addresses_for_connect(raw, 8080))
    assert caught.value.rule == rule


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "[::1]", "[::ffff:127.0.0.1]"]
)
def test_loopback_is_allowed_by_default_in_any_spelling(host: str) -> None:
    AddressPolicy().check_url(f"http://{host}:8188/")
    with pytest.raises(RefusedAddress, match="loopback") as caught:
        AddressPolicy(allow_loopback=False).check_url(f"http://{host}:8188/")
    assert caught.value.rule == Rule.LOOPBACK


def test_ordinary_destinations_pass() -> None:
    policy = AddressPolicy()
    for url in (
        "https://api.openai.com/v1",
        "http://comfy.lan:8188",
        "http://192.168.1.20:8188",
        "http://[2001:db8::1]:80/",
        "http://10.0.0.5/",
    ):
        policy.check_url(url)
    assert host_address("example.com") is None


def test_urls_that_parse_differently_are_judged_as_sent() -> None:
    """urllib and httpx disagree on a backslash before '@'; either reading is checked."""
    with pytest.raises(RefusedAddress, match="cloud metadata"):
        AddressPolicy().check_url("http://127.0.0.1\\@169.254.169.254/")
    with pytest.raises(RefusedAddress, match="only http and https"):
        AddressPolicy().check_url("gopher://127.0.0.1/")


def test_lists_match_every_spelling_and_never_readmit_the_hard_rules() -> None:
    deny = AddressPolicy(deny_hosts=["10.0.0.0/8", "*.bad.example", "2130706434"])
    for url in ("http://167772161/", "http://0x0a000001/", "http://[::ffff:10.0.0.1]/"):
        with pytest.raises(RefusedAddress, match="COMFYVN_OUTBOUND_DENY") as caught:
            deny.check_url(url)
        assert caught.value.rule == Rule.DENY_LIST
    with pytest.raises(RefusedAddress, match="COMFYVN_OUTBOUND_DENY"):
        deny.check_url("http://127.0.0.2/")  # the decimal entry is 127.0.0.2
    with pytest.raises(RefusedAddress, match="COMFYVN_OUTBOUND_DENY"):
        deny.check_url("http://API.Bad.Example./")
    allow = AddressPolicy(allow_hosts=["169.254.0.0/16", "0.0.0.0/0", "::/0"])
    for url in ("http://169.254.169.254/", "http://169.254.1.1/", "http://0/", "http://[::]/"):
        with pytest.raises(RefusedAddress):
            allow.check_url(url)
    only = AddressPolicy(allow_hosts=["comfy.example"])
    with pytest.raises(RefusedAddress, match="is not in COMFYVN_OUTBOUND_ALLOW") as caught:
        only.check_url("http://other.example/")
    assert caught.value.rule == Rule.ALLOW_LIST


def test_settings_read_the_new_variables_and_the_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMFYVN_OUTBOUND_DENY", "10.0.0.0/8, *.bad.example")
    monkeypatch.setenv("COMFYVN_WEBHOOK_DENY_HOSTS", "evil.example")
    monkeypatch.setenv("COMFYVN_OUTBOUND_ALLOW", "*.example, 10.0.0.0/8")
    monkeypatch.setenv("COMFYVN_WEBHOOK_ALLOW_HOSTS", "hooks.test")
    settings = Settings()
    assert settings.outbound_deny == {
        "COMFYVN_OUTBOUND_DENY": ("10.0.0.0/8", "*.bad.example"),
        "COMFYVN_WEBHOOK_DENY_HOSTS": ("evil.example",),
    }
    policy = policy_from_settings(settings)
    with pytest.raises(RefusedAddress, match="is in COMFYVN_OUTBOUND_DENY"):
        policy.check_url("http://10.1.2.3/")
    with pytest.raises(RefusedAddress, match="is in COMFYVN_WEBHOOK_DENY_HOSTS"):
        policy.check_url("http://evil.example/")
    policy.check_url("http://hooks.test/")  # admitted by the alias
    policy.check_url("http://good.example/")
    with pytest.raises(
        RefusedAddress, match="COMFYVN_OUTBOUND_ALLOW / COMFYVN_WEBHOOK_ALLOW_HOSTS"
    ):
        policy.check_addresses("elsewhere.test", ["203.0.113.9"])
    monkeypatch.setenv("COMFYVN_WEBHOOK_ALLOW_LOOPBACK", "0")
    with pytest.raises(RefusedAddress, match="COMFYVN_WEBHOOK_ALLOW_LOOPBACK=0"):
        AddressPolicy(allow_loopback=Settings().outbound_allow_loopback).check_url(
            "http://127.0.0.1/"
        )


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("COMFYVN_OUTBOUND_DENY", "10.0.0.0/33", "not a valid CIDR"),
        ("COMFYVN_OUTBOUND_ALLOW", "http://x.example/", "not a host name"),
        ("COMFYVN_WEBHOOK_DENY_HOSTS", "*", "not a host name"),
        ("COMFYVN_OUTBOUND_DENY", "a..b", "not a host name"),
    ],
)
def test_a_malformed_entry_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, words: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(EnvError, match=f"{variable}: .*{words}"):
        policy_from_settings(Settings())


# -- connect time ------------------------------------------------------------------------------
class _NoDns(AddressPolicy):
    """Fails the test if a name is resolved: refused hosts must be refused before any lookup."""

    async def resolve(self, host: str, port: int) -> list[str]:
        raise AssertionError(f"{host!r} was looked up")


class _FixedDns(AddressPolicy):
    """DNS answers the test controls, standing in for a name whose records changed."""

    def __init__(self, answers: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        if host not in self.answers:
            raise OSError(f"{host} does not resolve")
        return self.answers[host]


def _get(policy: AddressPolicy, url: str) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = GuardedTransport(policy, httpx.Limits(max_connections=2))
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            return await client.get(url)

    return asyncio.run(run())


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback socket that would show any connection made to it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    yield sock
    sock.close()


def _accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_transport_refuses_names_before_resolving_them() -> None:
    for url in ("http://metadata.google.internal/", "http://2852039166/", "http://[::]:80/"):
        with pytest.raises(RefusedAddress):
            _get(_NoDns(), url)


def test_transport_refuses_a_name_that_now_resolves_to_a_refused_address(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    for answer, words in (
        (["169.254.169.254"], "cloud metadata"),
        (["::ffff:a9fe:a9fe"], "cloud metadata"),
        (["127.0.0.1", "fe80::1"], "link-local"),  # one refused address refuses the host
        (["0.0.0.0"], "unspecified"),
    ):
        with pytest.raises(RefusedAddress, match=words):
            _get(_FixedDns({"svc.example": answer}), f"http://svc.example:{port}/")
    assert _accepted(listener) == 0


def test_transport_maps_transport_errors_to_httpx(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()  # nothing listens on the port any more
    with pytest.raises(httpx.ConnectError):
        _get(AddressPolicy(), f"http://127.0.0.1:{port}/")
    with pytest.raises(httpx.ConnectError, match="cannot resolve"):
        _get(_FixedDns({}), "http://nowhere.example/")


def test_the_health_client_never_follows_redirects(tmp_path: Path) -> None:
    async def run(tmp: Path) -> tuple[bool, bool]:
        registry = ProviderRegistry(tmp)
        service = HealthService(registry, ProviderSettings(), tmp)
        await service.start()
        try:
            client = service._client
            assert client is not None
            return client.follow_redirects, client.trust_env
        finally:
            await service.aclose()

    follow, trust_env = asyncio.run(run(tmp_path))
    assert follow is False and trust_env is False


# -- providers in process: creation and check ---------------------------------------------------
def test_provider_creation_and_checks_use_the_policy(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        policy = _FixedDns({"comfy.example": ["127.0.0.1"]})
        registry = ProviderRegistry(tmp_path, policy=policy)
        registry.load()
        refused: dict[str, str] = {}
        for url in ("http://0xa9fea9fe:8188", "http://[::ffff:169.254.169.254]", "http://0:80"):
            with pytest.raises(Invalid) as caught:
                await registry.create(ProviderCreate(kind="http", base_url=url, name="x"))
            assert caught.value.status == 422
            [error] = caught.value.detail
            assert error["loc"] == ["body", "base_url"]
            refused[url] = error["msg"]
        spec = await registry.create(
            ProviderCreate(id="comfy", kind="comfyui", base_url="http://comfy.example:1")
        )
        policy.answers["comfy.example"] = ["169.254.169.254"]  # DNS changed after creation
        service = HealthService(registry, ProviderSettings(timeout_s=2), tmp_path)
        await service.start()
        try:
            [check] = await service.check([spec])
        finally:
            await service.aclose()
        return {"refused": refused, "check": check.result.to_dict()}

    outcome = asyncio.run(run())
    assert all("is a cloud metadata address" in m for m in list(outcome["refused"].values())[:2])
    assert "is an unspecified address" in outcome["refused"]["http://0:80"]
    check = outcome["check"]
    assert (check["status"], check["reason_code"]) == ("red", "refused_address")
    assert "cloud metadata" in check["reason"] and check["details"]["rule"] == "cloud_metadata"


# -- the real thing: a loopback-only network namespace -----------------------------------------
def _netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [
            "unshare",
            "-n",
            "-m",
            "sh",
            "-c",
            "ip link set lo up && ip addr add 169.254.1.1/32 dev lo",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare -n -m is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


@pytest.fixture(scope="module")
def netns_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(f"real-socket outbound test skipped: {reason}")
    work = tmp_path_factory.mktemp("netns")
    hosts, resolv, report = work / "hosts", work / "resolv.conf", work / "report.json"
    hosts.write_text("127.0.0.1 localhost\n")
    # No resolver in the namespace: an unknown name fails at once, and no query can leave.
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = (
        "set -e; ip link set lo up; "
        "ip addr add 169.254.169.254/32 dev lo; ip addr add 100.100.100.200/32 dev lo; "
        f"mount --bind {hosts} /etc/hosts; mount --bind {resolv} /etc/resolv.conf; "
        f'exec "{sys.executable}" -m tests.outbound_netns {report} {hosts} {work}'
    )
    proc = subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report.read_text())


def test_netns_listeners_work(netns_report: dict[str, Any]) -> None:
    """The control connections arrived, so a count of zero below is meaningful."""
    assert netns_report["control"] == {"metadata": 1, "alibaba": 1, "any4": 1, "any6": 1}


RULE_NAMED = ("is a cloud metadata address", "is an unspecified address")


def test_netns_every_refused_form_is_refused_at_creation(netns_report: dict[str, Any]) -> None:
    """Provider create (POST) and update (PUT), webhook create (POST) and update (PATCH)."""
    creation = netns_report["creation"]
    assert len(creation) >= 30
    for row in creation:
        for action, status in (
            ("provider", 422),
            ("webhook", 400),
            ("provider_update", 422),
            ("webhook_update", 400),
        ):
            assert row[f"{action}_status"] == status, (action, row)
            assert any(words in row[f"{action}_body"] for words in RULE_NAMED), (action, row)


def test_netns_a_name_resolving_to_a_refused_address_is_refused_at_creation(
    netns_report: dict[str, Any],
) -> None:
    for name, row in netns_report["creation_resolved"].items():
        assert row["provider_status"] == 422 and row["webhook_status"] == 400, row
        for body in (row["provider_body"], row["webhook_body"]):
            assert name in body and any(words in body for words in RULE_NAMED), row


def test_netns_connect_time_refusal_for_providers(netns_report: dict[str, Any]) -> None:
    providers = netns_report["connect_time"]["providers"]
    assert providers["control"]["status"] == "green", providers["control"]  # the server does send
    for pid in ("metadata-alias", "alibaba-alias", "zero-alias", "legacy-decimal", "legacy-any"):
        result = providers[pid]
        assert (result["status"], result["reason_code"]) == ("red", "refused_address"), result
    assert "is a cloud metadata address" in providers["metadata-alias"]["reason"]
    assert "is an unspecified address" in providers["zero-alias"]["reason"]
    assert providers["alibaba-alias"]["details"]["rule"] == "cloud_metadata"


def test_netns_connect_time_refusal_for_webhooks(netns_report: dict[str, Any]) -> None:
    for name, ping in netns_report["connect_time"]["pings"].items():
        assert ping["status"] == 200, ping
        attempt = ping["body"]["attempt"]
        assert ping["body"]["delivered"] is False and attempt["error"].startswith("refused:"), name
    for name, rows in netns_report["connect_time"]["deliveries"].items():
        assert rows, f"no delivery attempt for {name}"
        assert all(r["last_error"].startswith("refused:") for r in rows), rows


def test_netns_no_refused_address_received_a_connection(netns_report: dict[str, Any]) -> None:
    assert netns_report["accepted"] == {"metadata": [], "alibaba": [], "any4": [], "any6": []}, (
        netns_report["server_log"]
    )
