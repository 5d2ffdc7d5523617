"""``comfyvn hooks tail`` against the real server, across a server restart."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading

from .support import ROOT, ServerProcess, emit_scene


def test_tail_prints_envelopes_and_resumes_after_a_restart(server: ServerProcess) -> None:
    before = emit_scene(server, "before")["seq"]  # history up to --since is not printed
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "comfyvn",
            "hooks",
            "tail",
            "--server",
            server.url,
            "--token",
            server.token,
            "--topics",
            "on_scene_enter",
            "--count",
            "4",
            "--since",
            str(before),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        seqs = []
        # The tail may connect after this emit: --since makes it replay from there.
        seqs.append(emit_scene(server, "a")["seq"])
        first = json.loads(lines.get(timeout=20))
        seqs.append(emit_scene(server, "b")["seq"])
        second = json.loads(lines.get(timeout=20))
        server.restart()
        # Emitted right after the restart, likely before the tail has reconnected: it must
        # still get them, by resuming from the last seq it printed.
        seqs += [emit_scene(server, "c")["seq"], emit_scene(server, "d")["seq"]]
        rest = [json.loads(lines.get(timeout=30)) for _ in range(2)]
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = [first, second, *rest]
    assert [p["seq"] for p in printed] == seqs
    assert before not in [p["seq"] for p in printed]
    assert [p["data"]["node"] for p in printed] == ["a", "b", "c", "d"]
    assert "reconnected" in proc.stderr.read()


def test_tail_with_a_bad_token_exits_with_a_message(server: ServerProcess) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "comfyvn",
            "hooks",
            "tail",
            "--server",
            server.url,
            "--token",
            "wrong",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "401" in result.stderr and "wrong" not in result.stderr
