"""``comfyvn serve --workers N``: N server processes on one port, one data dir and one bus.

The supervisor (the process the user started) owns the data dir (its lock and
``server.json``), binds the listening socket once and starts N workers that inherit it: the
kernel spreads connections across the processes accepting on that socket. Each worker is a
whole server on the shared bus (its own fan-out, plugin host and streams), so a client may
talk to any of them. The supervisor prints the ready line once every worker is ready, restarts
a worker that dies, and stops them all on SIGINT/SIGTERM. Workers leave when it dies, however
it dies (they watch their parent).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["READY_PREFIX", "Supervisor", "watch_parent", "worker_argv"]

log = logging.getLogger("comfyvn.server")

READY_PREFIX = "ComfyVN Studio server ready at "
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 15.0, 30.0)  # a crash loop slows down to 30 s
_STABLE_S = 60.0


def worker_argv(argv: list[str], fd: int) -> list[str]:
    """The worker's command line: the user's ``serve`` arguments without ``--workers``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return [sys.executable, "-m", "comfyvn", *out, f"--worker-fd={fd}"]


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=2048)
    sock.set_inheritable(True)
    return sock


def watch_parent() -> None:
    """In a worker: stop when the supervisor is gone (even after a SIGKILL of it)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class _Worker:
    def __init__(self, index: int, argv: list[str], fd: int) -> None:
        self.index = index
        self.argv = argv
        self.fd = fd
        self.ready = threading.Event()
        self.ready_at = 0.0
        self.restarts = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.ready.clear()
        env = {**os.environ, "COMFYVN_WORKER_INDEX": str(self.index)}
        self.proc = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            text=True,
            pass_fds=(self.fd,),
            env=env,
        )
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()

    def _relay(self, proc: subprocess.Popen[str]) -> None:
        """The worker's stdout: its ready line is a signal for us, the rest goes through."""
        assert proc.stdout is not None
        for line in proc.stdout:  # read to the end, always: a full pipe would block the worker
            if line.startswith(READY_PREFIX):
                self.ready.set()
                self.ready_at = time.monotonic()
                continue
            try:
                sys.stdout.write(line)
                sys.stdout.flush()
            except (BrokenPipeError, ValueError):  # nobody reads our stdout any more
                pass


class Supervisor:
    def __init__(self, count: int, argv: list[str], sock: socket.socket) -> None:
        self.sock = sock
        self.workers = [
            _Worker(i, worker_argv(argv, sock.fileno()), sock.fileno()) for i in range(count)
        ]
        self._stop = threading.Event()

    def run(self, on_ready: Callable[[], None], ready_timeout_s: float = 60.0) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        for worker in self.workers:
            worker.start()
        deadline = time.monotonic() + ready_timeout_s
        while not all(w.ready.is_set() for w in self.workers):
            failed = [w for w in self.workers if w.proc and w.proc.poll() is not None]
            late = time.monotonic() > deadline
            if failed or self._stop.is_set() or late:
                if failed:
                    code = failed[0].proc.returncode if failed[0].proc else 1
                    print(
                        f"comfyvn serve: worker {failed[0].index} exited with {code} while "
                        "starting; stopping the others",
                        file=sys.stderr,
                    )
                elif late:
                    waiting = [str(w.index) for w in self.workers if not w.ready.is_set()]
                    print(
                        f"comfyvn serve: worker(s) {', '.join(waiting)} not ready after "
                        f"{ready_timeout_s:g} s; stopping them all (their log lines are above)",
                        file=sys.stderr,
                    )
                    failed = [self.workers[0]]
                self._stop_all()
                return 0 if self._stop.is_set() and not failed else 1
            time.sleep(0.05)
        on_ready()
        while not self._stop.wait(0.2):
            for worker in self.workers:
                proc = worker.proc
                if proc is not None and proc.poll() is not None:
                    self._restart(worker, proc.returncode)
        self._stop_all()
        return 0

    def _restart(self, worker: _Worker, code: int) -> None:
        if worker.ready_at and time.monotonic() - worker.ready_at > _STABLE_S:
            worker.restarts = 0  # it ran well for a while: this is a new failure, not a loop
        delay = _RESTART_BACKOFF_S[min(worker.restarts, len(_RESTART_BACKOFF_S) - 1)]
        log.error("worker %d exited with %s; restarting it in %.1f s", worker.index, code, delay)
        worker.restarts += 1
        if not self._stop.wait(delay):
            worker.start()

    def _stop_all(self, grace_s: float = 10.0) -> None:
        procs = [w.proc for w in self.workers if w.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(OSError):
            self.sock.close()
