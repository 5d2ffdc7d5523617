"""The modder's webhook receiver (``python -m comfyvn.tools.receive``) against the real server."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx

from comfyvn.webhooks.signing import generate_secret

from .support import ROOT, ServerProcess, emit_scene, wait_for


def _start_receiver(secret: str, count: int) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "comfyvn.tools.receive", "--port", "0", "--secret", secret,
         "--count", str(count)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert "verifying signatures" in first, first
    url = first.split(" at ", 1)[1].split(",", 1)[0]
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()  # type: ignore[arg-type]
    return proc, url, lines


def test_receiver_verifies_real_deliveries_and_refuses_forged_ones(server: ServerProcess) -> None:
    secret = generate_secret()
    proc, url, lines = _start_receiver(secret, count=1)
    try:
        # A forged delivery (wrong secret) is refused with 401 and named.
        forged = httpx.post(
            url,
            content=b'{"event": "on_scene_enter"}',
            headers={
                "webhook-id": "msg_forged",
                "webhook-timestamp": "1",
                "webhook-signature": "v1,AAAA",
            },
        )
        assert forged.status_code == 401
        with server.client() as client:
            created = client.post(
                "/api/modder/hooks/webhooks",
                json={"url": url, "events": ["on_scene_enter"], "secret": secret},
            )
            assert created.status_code == 201, created.text
        emit_scene(server, "hall")
        proc.wait(30)  # --count 1: exits after the first verified delivery
        wait_for(lambda: any(line.startswith("verified") for line in lines))
        text = "".join(lines)
        assert "REFUSED msg_forged" in text
        assert "verified" in text and "on_scene_enter" in text and "node=hall" in text
    finally:
        proc.kill()
