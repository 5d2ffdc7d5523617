"""``comfyvn studio``: build the application, run the window, and stop what it started.

``--screenshot FILE`` renders the window offscreen once it has settled (first provider check
done, stream connected, scene shown) or after ``--wait`` seconds, writes a PNG and exits 0,
even when the server is unreachable: the picture then shows what went wrong.
``--check`` (or ``COMFYVN_STUDIO_CHECK=1``, for a ``comfyvn studio`` line you do not change)
finds or starts the server exactly as a normal start does, prints what it attached to and
exits: 0 once the hook stream is live, 1 when no server could be found, started or streamed
from within ``--wait`` seconds. It shows no window (offscreen unless ``QT_QPA_PLATFORM`` names
a platform) and leaves the saved layout alone.
``COMFYVN_STUDIO_HOOKS_TAB=plugins`` opens the Modder Hooks dock on its Plugins tab.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import PySide6
from PySide6.QtCore import QMessageLogContext, QSettings, QTimer, QtMsgType, qInstallMessageHandler
from PySide6.QtWidgets import QApplication

from comfyvn.core.env import EnvError, env_flag

from .main_window import StudioWindow
from .options import HOOK_TABS, WORKSPACES, StudioOptions
from .theme import apply_style

__all__ = ["SETTINGS_FILE", "options_from_args", "run_studio", "studio_command"]

SETTINGS_FILE = "studio.ini"  # per data dir: window geometry, dock layout per workspace
CHECK_ENV = "COMFYVN_STUDIO_CHECK"  # the same as --check, for a command line left unchanged
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SETTLE_MS = 600  # after the window settled: let the last paints and stream frames land


class UsageError(ValueError):
    pass


def options_from_args(args: argparse.Namespace) -> StudioOptions:
    """Check what argparse cannot (paths, ranges); errors name the problem."""
    workspace = getattr(args, "workspace", None)
    if workspace is not None and workspace not in WORKSPACES:
        raise UsageError(f"unknown workspace {workspace!r}; choose one of {', '.join(WORKSPACES)}")
    # --hooks-tab where the command line offers it, else COMFYVN_STUDIO_HOOKS_TAB
    hooks_tab = (
        getattr(args, "hooks_tab", None) or os.environ.get("COMFYVN_STUDIO_HOOKS_TAB") or None
    )
    if hooks_tab is not None and hooks_tab not in HOOK_TABS:
        raise UsageError(
            f"unknown Modder Hooks tab {hooks_tab!r}; choose one of {', '.join(HOOK_TABS)}"
        )
    raw_wait = getattr(args, "wait", None)
    wait = 20.0 if raw_wait is None else float(raw_wait)
    if not 0 < wait <= 600:
        raise UsageError(f"--wait must be between 0 and 600 seconds, got {wait:g}")
    screenshot = Path(args.screenshot).expanduser() if getattr(args, "screenshot", None) else None
    if screenshot is not None:
        if screenshot.suffix.lower() != ".png":
            raise UsageError(f"--screenshot writes a PNG; give a .png path, not {screenshot}")
        if screenshot.is_dir():
            raise UsageError(f"--screenshot: {screenshot} is a folder; give a .png file path")
        parent = screenshot.resolve().parent
        if not parent.is_dir():
            raise UsageError(f"--screenshot: folder {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise UsageError(f"--screenshot: folder {parent} is not writable")
    check = bool(getattr(args, "check", False))
    if check and screenshot is not None:
        raise UsageError("--check and --screenshot exclude each other; give one of them")
    if not check and screenshot is None:  # a screenshot run ends by itself already
        try:
            check = env_flag(CHECK_ENV)
        except EnvError as exc:
            raise UsageError(str(exc)) from None
    server = getattr(args, "server", None)
    if server is not None and not server.startswith(("http://", "https://")):
        raise UsageError(f"--server must be an http:// or https:// URL, got {server!r}")
    return StudioOptions(
        server=server,
        token=getattr(args, "token", None),
        data_dir=Path(args.data_dir) if getattr(args, "data_dir", None) else None,
        workspace=workspace,
        scene=getattr(args, "scene", None),
        hooks_tab=hooks_tab,
        screenshot=screenshot,
        check=check,
        wait_s=wait,
        remember_layout=screenshot is None and not check,
    )


def studio_command(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except UsageError as exc:
        print(f"comfyvn studio: {exc}", file=sys.stderr)
        return 2
    return run_studio(options)


_NOISE = ("propagateSizeHints",)  # the offscreen platform's harmless complaint, once per window


def _qt_messages(kind: QtMsgType, context: QMessageLogContext, message: str) -> None:
    if not any(noise in message for noise in _NOISE):
        print(f"qt: {message}", file=sys.stderr)


def _check_pyside() -> None:
    """PySide6 6.12.0 releases ``None`` once too often on Python < 3.12 (where ``None`` is not
    immortal), which crashes a long session; pyproject pins below it, this catches other envs."""
    if sys.version_info < (3, 12) and tuple(PySide6.__version_info__[:2]) >= (6, 12):
        print(
            f"comfyvn studio: warning: PySide6 {PySide6.__version__} on Python "
            f"{sys.version_info.major}.{sys.version_info.minor} can crash (None refcount bug); "
            "install 'PySide6-Essentials<6.12' or use Python 3.12+",
            file=sys.stderr,
        )


def run_studio(options: StudioOptions) -> int:
    _check_pyside()
    if options.screenshot is not None:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # never flashes a window on a desktop
        qInstallMessageHandler(_qt_messages)
    elif options.check:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # no window, unless one is asked for
        qInstallMessageHandler(_qt_messages)
    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "comfyvn"])
    assert isinstance(app, QApplication)
    app.setApplicationName("ComfyVN Studio")
    app.setOrganizationName("ComfyVN")
    apply_style(app)
    settings = None
    if options.remember_layout:
        data_dir = options.resolved_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        settings = QSettings(str(data_dir / SETTINGS_FILE), QSettings.Format.IniFormat)
    window = StudioWindow(options, settings)
    result = {"code": 0}
    # Ctrl+C or a SIGTERM closes the window cleanly (and stops a server we started).
    previous = {sig: signal.signal(sig, lambda *_: window.close()) for sig in _STOP_SIGNALS}
    heartbeat = QTimer()
    heartbeat.timeout.connect(lambda: None)  # lets Python run its signal handlers
    heartbeat.start(250)
    try:
        window.show()
        window.start()
        if options.screenshot is not None:
            _schedule_screenshot(app, window, options, result)
        elif options.check:
            _schedule_check(app, window, options, result)
        app.exec()
    finally:
        heartbeat.stop()
        window.hooks_panel.shutdown()
        window.stop_local_servers()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return result["code"]


def _schedule_screenshot(
    app: QApplication, window: StudioWindow, options: StudioOptions, result: dict[str, Any]
) -> None:
    deadline = time.monotonic() + options.wait_s
    poll = QTimer(window)
    path = options.screenshot
    assert path is not None

    def shoot() -> None:
        pixmap = window.grab()
        if pixmap.save(str(path), "PNG"):
            print(f"comfyvn studio: wrote {path} ({pixmap.width()}x{pixmap.height()})", flush=True)
        else:
            print(f"comfyvn studio: could not write {path}", file=sys.stderr, flush=True)
            result["code"] = 1
        window.close()
        app.quit()

    def check() -> None:
        timed_out = time.monotonic() >= deadline
        if window.settled() or timed_out:
            poll.stop()
            if timed_out:
                print(
                    f"comfyvn studio: still loading after {options.wait_s:g} s; "
                    "taking the screenshot as it is",
                    file=sys.stderr,
                    flush=True,
                )
            QTimer.singleShot(SETTLE_MS, shoot)

    poll.timeout.connect(check)
    poll.start(100)


def _schedule_check(
    app: QApplication, window: StudioWindow, options: StudioOptions, result: dict[str, Any]
) -> None:
    """``--check``: exit 0 once the window is attached and its hook stream is live, 1 when the
    discovery failed, the stream was refused, or ``--wait`` seconds passed first."""
    deadline = time.monotonic() + options.wait_s
    poll = QTimer(window)
    data_dir = options.resolved_data_dir()

    def finish(code: int, message: str) -> None:
        poll.stop()
        stream = sys.stdout if code == 0 else sys.stderr
        print(f"comfyvn studio: {message}", file=stream, flush=True)
        result["code"] = code
        window.close()
        app.quit()

    def check() -> None:
        if window.connect_problem is not None:
            finish(1, f"check failed: no server: {window.connect_problem}")
            return
        discovery = window.discovery
        if discovery is None:
            if time.monotonic() >= deadline:
                finish(1, f"check failed: still looking for a server after {options.wait_s:g} s")
            return
        where = f"{discovery.conn.server} ({discovery.origin}; data dir {data_dir})"
        state = window.hooks_panel.stream_state
        message = window.hooks_panel.stream_message
        if state == "live":
            finish(0, f"attached to {where}; hook stream live")
        elif state == "error":
            finish(1, f"check failed: attached to {where}, but the hook stream failed: {message}")
        elif time.monotonic() >= deadline:
            finish(
                1,
                f"check failed: attached to {where}, but the hook stream is not live after "
                f"{options.wait_s:g} s ({message})",
            )

    poll.timeout.connect(check)
    poll.start(100)
