"""The real-socket scenario of ``tests/test_outbound_policy.py``, run inside a private network
namespace (and mount namespace) that only has loopback, so nothing can leave the machine.

Launched by the test as::

    unshare -n -m sh -c 'ip link set lo up; ip addr add 169.254.169.254/32 dev lo; ...;
                         mount --bind HOSTS /etc/hosts; mount --bind RESOLV /etc/resolv.conf;
                         exec python -m tests.outbound_netns REPORT HOSTS WORKDIR'

In the namespace the cloud metadata address and Alibaba's 100.100.100.200 are real local
addresses, and listeners there (and on 0.0.0.0 and [::]) count every connection they accept.
The scenario starts a real ``comfyvn serve``, tries to register providers and webhooks at every
refused spelling of those addresses, then points private host names (``/etc/hosts`` is a file
this process rewrites) at them after registration, and runs provider checks and webhook
deliveries. A positive control (a provider on 127.0.0.1) proves the server does send requests
from inside the namespace. The JSON report is asserted by the test.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from .support import ServerProcess, scene_enter_payload

PROVIDERS = "/api/providers"
WEBHOOKS = "/api/modder/hooks/webhooks"
BASE_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"


@dataclass
class Listener:
    """Accepts and counts connections until stopped (nothing should ever arrive)."""

    name: str
    family: int
    address: str
    sock: socket.socket | None = None
    accepted: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Listener:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        if self.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, 0))
        sock.listen(64)
        sock.settimeout(0.1)
        self.sock = sock
        threading.Thread(target=self._run, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.sock is not None
        return int(self.sock.getsockname()[1])

    def _run(self) -> None:
        assert self.sock is not None
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(str(peer))
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self.sock is not None:
            self.sock.close()


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def _ipv4_forms(address: str, port: int) -> list[str]:
    """Every spelling of ``address`` that ``getaddrinfo`` (or an IPv6 route) would reach."""
    a, b, c, d = (int(x) for x in address.split("."))
    number = (a << 24) | (b << 16) | (c << 8) | d
    hexes = ".".join(f"0x{x:x}" for x in (a, b, c, d))
    octal = ".".join(f"0{x:o}" for x in (a, b, c, d))
    mapped_hex = f"{(a << 8) | b:x}:{(c << 8) | d:x}"
    return [
        f"http://{address}:{port}/",
        f"http://{number}:{port}/",  # decimal
        f"http://0x{number:x}:{port}/",  # hex
        f"http://{hexes}:{port}/",  # dotted hex
        f"http://{octal}:{port}/",  # dotted octal
        f"http://{a}.{b}.{(c << 8) | d}:{port}/",  # shortened a.b.c
        f"http://{a}.{(b << 16) | (c << 8) | d}:{port}/",  # shortened a.b
        f"http://[::ffff:{address}]:{port}/",  # IPv4-mapped
        f"http://[::ffff:{mapped_hex}]:{port}/",  # IPv4-mapped, hex
        f"http://[64:ff9b::{mapped_hex}]:{port}/",  # NAT64
        f"http://[2002:{mapped_hex}::1]:{port}/",  # 6to4
        f"http://[::{mapped_hex}]:{port}/",  # IPv4-compatible
    ]


def _unspecified_forms(port4: int, port6: int) -> list[str]:
    return [
        f"http://0.0.0.0:{port4}/",
        f"http://0:{port4}/",
        f"http://0x0:{port4}/",
        f"http://00:{port4}/",
        f"http://0.0:{port4}/",
        f"http://[::ffff:0.0.0.0]:{port4}/",
        f"http://[::]:{port6}/",
        f"http://[::0]:{port6}/",
        f"http://[0:0:0:0:0:0:0:0]:{port6}/",
    ]


def _write_hosts(path: Path, names: dict[str, str]) -> None:
    """Rewrites the file in place: it is bind-mounted over /etc/hosts (same inode)."""
    lines = "".join(f"{address} {name}\n" for name, address in names.items())
    with path.open("r+", encoding="utf-8") as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(BASE_HOSTS + lines)


def main(report_path: Path, hosts_path: Path, workdir: Path) -> None:
    listeners = {
        "metadata": Listener("metadata", socket.AF_INET, "169.254.169.254").start(),
        "alibaba": Listener("alibaba", socket.AF_INET, "100.100.100.200").start(),
        "any4": Listener("any4", socket.AF_INET, "0.0.0.0").start(),
        "any6": Listener("any6", socket.AF_INET6, "::").start(),
    }
    # Control: each listener really accepts (so a count of zero later means something).
    control: dict[str, int] = {}
    for name, listener in listeners.items():
        target = {"any4": "127.0.0.1", "any6": "::1"}.get(name, listener.address)
        with socket.create_connection((target, listener.port), timeout=2):
            pass
        deadline = time.monotonic() + 2
        while not listener.accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        control[name] = len(listener.accepted)
        listener.accepted.clear()

    ok_server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=ok_server.serve_forever, daemon=True).start()

    meta, ali = listeners["metadata"].port, listeners["alibaba"].port
    any4, any6 = listeners["any4"].port, listeners["any6"].port
    forms = (
        _ipv4_forms("169.254.169.254", meta)
        + _ipv4_forms("100.100.100.200", ali)
        + _unspecified_forms(any4, any6)
    )
    # Stored before the rules existed: loaded as is, refused when checked, never contacted.
    data_dir = workdir / "data"
    data_dir.mkdir(parents=True)
    legacy = [
        {
            "id": "legacy-decimal",
            "name": "legacy",
            "kind": "http",
            "base_url": f"http://2852039166:{meta}",
        },
        {"id": "legacy-any", "name": "legacy", "kind": "comfyui", "base_url": f"http://0:{any4}"},
    ]
    (data_dir / "providers.json").write_text(json.dumps({"version": 1, "providers": legacy}))

    aliases = {
        "metadata-alias": ("169.254.169.254", meta),
        "alibaba-alias": ("100.100.100.200", ali),
        "zero-alias": ("0.0.0.0", any4),
    }
    _write_hosts(hosts_path, {name: "127.0.0.1" for name in aliases})  # harmless at creation

    report: dict[str, Any] = {"control": control, "creation": [], "connect_time": {}}
    server = ServerProcess(data_dir, env={"COMFYVN_PROVIDER_TIMEOUT": "3"}).start()
    try:
        with httpx.Client(
            base_url=server.url, headers=server.headers, timeout=30, trust_env=False
        ) as api:
            ok_url = f"http://127.0.0.1:{ok_server.server_address[1]}"
            made = api.post(PROVIDERS, json={"id": "control", "kind": "http", "base_url": ok_url})
            assert made.status_code == 201, made.text
            made = api.post(
                WEBHOOKS, json={"url": ok_url + "/hook", "events": ["on_asset_removed"]}
            )
            assert made.status_code == 201, made.text
            control_hook = made.json()["webhook"]["id"]
            for url in forms:
                prov = api.post(PROVIDERS, json={"kind": "http", "base_url": url, "name": "x"})
                hook = api.post(WEBHOOKS, json={"url": url})
                prov_put = api.put(f"{PROVIDERS}/control", json={"base_url": url})
                hook_patch = api.patch(f"{WEBHOOKS}/{control_hook}", json={"url": url})
                report["creation"].append(
                    {
                        "url": url,
                        "provider_status": prov.status_code,
                        "provider_body": prov.text,
                        "webhook_status": hook.status_code,
                        "webhook_body": hook.text,
                        "provider_update_status": prov_put.status_code,
                        "provider_update_body": prov_put.text,
                        "webhook_update_status": hook_patch.status_code,
                        "webhook_update_body": hook_patch.text,
                    }
                )

            # Registered while the names pointed at 127.0.0.1, then DNS "changes".
            hook_ids: dict[str, str] = {}
            for name, (_address, port) in aliases.items():
                made = api.post(
                    PROVIDERS,
                    json={"id": name, "kind": "http", "base_url": f"http://{name}:{port}"},
                )
                assert made.status_code == 201, made.text
                hook = api.post(
                    WEBHOOKS,
                    json={"url": f"http://{name}:{port}/hook", "events": ["on_scene_enter"]},
                )
                assert hook.status_code == 201, hook.text
                hook_ids[name] = hook.json()["webhook"]["id"]
            _write_hosts(hosts_path, {name: address for name, (address, _p) in aliases.items()})
            # Registering a name that resolves to a refused address now is refused at once.
            resolved: dict[str, Any] = {}
            for name, (_address, port) in aliases.items():
                prov = api.post(
                    PROVIDERS,
                    json={"kind": "http", "base_url": f"http://{name}:{port}", "name": "y"},
                )
                hook = api.post(WEBHOOKS, json={"url": f"http://{name}:{port}/again"})
                resolved[name] = {
                    "provider_status": prov.status_code,
                    "provider_body": prov.text,
                    "webhook_status": hook.status_code,
                    "webhook_body": hook.text,
                }
            report["creation_resolved"] = resolved

            health = api.get(PROVIDERS + "/health").json()
            report["connect_time"]["providers"] = {
                r["provider_id"]: {
                    "status": r["status"],
                    "reason_code": r["reason_code"],
                    "reason": r["reason"],
                    "details": r.get("details"),
                }
                for r in health["results"]
            }
            pings = {}
            for name, hook_id in hook_ids.items():
                ping = api.post(f"{WEBHOOKS}/{hook_id}/ping")
                pings[name] = {"status": ping.status_code, "body": ping.json()}
            report["connect_time"]["pings"] = pings
            emitted = api.post(
                "/api/modder/hooks/test",
                json={"event": "on_scene_enter", "payload": scene_enter_payload("netns")},
            )
            assert emitted.status_code == 200, emitted.text
            deliveries: dict[str, Any] = {}
            deadline = time.monotonic() + 20
            for name, hook_id in hook_ids.items():
                while True:
                    items = api.get(f"{WEBHOOKS}/{hook_id}/deliveries").json()["items"]
                    tried = [d for d in items if d["event"] != "ping" and d["attempts"] >= 1]
                    if tried or time.monotonic() > deadline:
                        deliveries[name] = tried
                        break
                    time.sleep(0.1)
            report["connect_time"]["deliveries"] = deliveries
        time.sleep(0.3)  # a connection in flight would have been accepted by now
    finally:
        server.stop()
        report["server_log"] = server.log_text()[-4000:]
        ok_server.shutdown()
        for listener in listeners.values():
            listener.stop()
    report["accepted"] = {name: list(lst.accepted) for name, lst in listeners.items()}
    report_path.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
