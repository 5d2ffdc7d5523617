"""A stream client that never reads is dropped after the send timeout; nobody else notices.

The stuck clients are raw sockets with a tiny receive buffer that complete the WebSocket (or
SSE) handshake and then read nothing, the way a frozen tool or a dead laptop behaves. Large
envelopes fill the socket buffers quickly, so the server's sends really block.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect

from .support import ServerProcess, scene_enter_payload, wait_for

SEND_TIMEOUT_S = 2.0
EVENTS = 300
PAD = "x" * 16_000  # ~16 KB an envelope: 300 of them are far more than the socket buffers hold


@pytest.fixture
def srv(tmp_path) -> Iterator[ServerProcess]:
    env = {"COMFYVN_SEND_TIMEOUT_S": str(SEND_TIMEOUT_S)}
    proc = ServerProcess(tmp_path / "data", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


def _raw_socket(srv: ServerProcess) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: window stays small
    sock.connect(("127.0.0.1", srv.port))
    return sock


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, "connection closed during the handshake"
        head += chunk
    return head


def _stuck_websocket(srv: ServerProcess) -> socket.socket:
    sock = _raw_socket(srv)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/modder/hooks/ws?since=0&token={srv.token} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert _read_head(sock).startswith(b"HTTP/1.1 101")
    return sock


def _stuck_sse(srv: ServerProcess) -> socket.socket:
    sock = _raw_socket(srv)
    sock.sendall(
        (
            f"GET /api/modder/hooks/subscribe?since=0 HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
            f"Authorization: Bearer {srv.token}\r\n\r\n"
        ).encode()
    )
    assert _read_head(sock).startswith(b"HTTP/1.1 200")
    return sock


def _subscribers(api: httpx.Client) -> int:
    return api.get("/api/modder/hooks").json()["bus"]["subscribers"]


def _emit_all(api: httpx.Client) -> None:
    for i in range(EVENTS):
        payload = scene_enter_payload(f"n{i}", variables={"pad": PAD})
        response = api.post(
            "/api/modder/hooks/test", json={"event": "on_scene_enter", "payload": payload}
        )
        assert response.status_code == 200, response.text


def _drain_to_eof(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return bytes(data)
        data += chunk


def _close_frame(stream: bytes) -> tuple[int, str]:
    """The server's close frame at the end of a WebSocket byte stream (server frames are not
    masked, payload < 126 bytes for a close)."""
    at = stream.rfind(b"\x88")
    while at != -1:
        length = stream[at + 1]
        if length < 126 and at + 2 + length == len(stream):
            payload = stream[at + 2 : at + 2 + length]
            return struct.unpack("!H", payload[:2])[0], payload[2:].decode()
        at = stream.rfind(b"\x88", 0, at)
    raise AssertionError(f"no close frame at the end of the stream: {stream[-80:]!r}")


def test_stuck_websocket_reader_is_closed_and_healthy_clients_get_everything(
    srv: ServerProcess,
) -> None:
    api = srv.client()
    healthy_url = f"{srv.ws_url}/api/modder/hooks/ws?since=0&token={srv.token}"
    with connect(healthy_url, max_size=None) as healthy:
        assert json.loads(healthy.recv(timeout=10))["ok"] is True
        stuck = _stuck_websocket(srv)
        wait_for(lambda: _subscribers(api) == 2)
        seqs: list[int] = []

        def read_healthy() -> None:
            while len(seqs) < EVENTS:
                msg = json.loads(healthy.recv(timeout=60))
                if "seq" in msg:
                    seqs.append(msg["seq"])

        reader = threading.Thread(target=read_healthy)
        reader.start()
        started = time.monotonic()
        _emit_all(api)
        # The stuck client is dropped: generous bound, the timeout is 2 s.
        wait_for(lambda: _subscribers(api) == 1, timeout=60)
        dropped_after = time.monotonic() - started
        # Reading again now, it finds what was buffered, then the close frame, then the end.
        code, reason = _close_frame(_drain_to_eof(stuck, timeout=30))
        stuck.close()
        reader.join(60)
        assert seqs == list(range(1, EVENTS + 1))  # the healthy client got every envelope
    print(f"stuck WebSocket reader dropped {dropped_after:.1f} s after the emits began")
    assert (code, reason) == (1008, "send timeout")
    assert "accepted nothing for 2 s" in srv.log_text()

    # It resumes with `since` and loses nothing.
    with connect(healthy_url, max_size=None) as again:
        assert json.loads(again.recv(timeout=10))["ok"] is True
        resumed = [json.loads(again.recv(timeout=10))["seq"] for _ in range(EVENTS)]
    assert resumed == list(range(1, EVENTS + 1))
    assert "Traceback" not in srv.log_text()
    api.close()


def test_stuck_sse_reader_is_dropped(srv: ServerProcess) -> None:
    api = srv.client()
    stuck = _stuck_sse(srv)
    wait_for(lambda: _subscribers(api) == 1)
    _emit_all(api)
    wait_for(lambda: _subscribers(api) == 0, timeout=60)
    stuck.close()
    assert "SSE client accepted nothing for 2 s" in srv.log_text()
    assert "Traceback" not in srv.log_text()
    api.close()
