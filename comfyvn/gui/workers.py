"""Run blocking calls off the GUI thread and hand their results back to it.

Each call runs on its own daemon thread; results come back through a queued Qt signal, so the
callbacks always run on the GUI thread. Daemon threads (rather than a QThreadPool, whose
teardown waits for every running task) mean a request stuck on a hung server never delays
closing the window.

Worker threads never hold a reference to a widget: callbacks stay in a registry that only the
GUI thread touches, and the thread carries just their numbers. (If a worker dropped the last
reference to a Python-owned widget, Qt would destroy it on the wrong thread and crash.) The
functions given to :func:`run_async` must therefore capture plain data only (an API client,
a request body), never ``self`` of a widget.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot

__all__ = [
    "Dispatcher",
    "call_gui",
    "dispatcher",
    "drop_gui_callback",
    "gui_callback",
    "post_to_gui",
    "run_async",
]

log = logging.getLogger("comfyvn.gui")


class Dispatcher(QObject):
    """Lives on the GUI thread; runs what worker threads post, in order."""

    posted = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.callbacks: dict[int, Callable[..., None]] = {}  # GUI thread only
        self.posted.connect(self._run, Qt.ConnectionType.QueuedConnection)

    @Slot(object)
    def _run(self, item: Any) -> None:
        try:
            if isinstance(item, _Invoke):
                callback = self.callbacks.get(item.callback_id)
                if item.once:
                    for cid in item.drop:
                        self.callbacks.pop(cid, None)
                if callback is not None:
                    callback(*item.args)
            else:
                item()
        except RuntimeError as exc:
            if "already deleted" not in str(exc):  # else: the widget was closed meanwhile
                log.exception("GUI callback failed")
        except Exception:
            log.exception("GUI callback failed")


class _Invoke:
    __slots__ = ("args", "callback_id", "drop", "once")

    def __init__(
        self, callback_id: int, args: tuple[Any, ...], once: bool, drop: tuple[int, ...]
    ) -> None:
        self.callback_id = callback_id
        self.args = args
        self.once = once
        self.drop = drop


_dispatcher: Dispatcher | None = None
_lock = threading.Lock()
_ids = itertools.count(1)


def dispatcher() -> Dispatcher:
    """The process-wide dispatcher; created on first use, which must be on the GUI thread."""
    global _dispatcher
    with _lock:
        if _dispatcher is None:
            app = QCoreApplication.instance()
            if app is None:
                raise RuntimeError("create the QApplication before using comfyvn.gui.workers")
            _dispatcher = Dispatcher()
            _dispatcher.moveToThread(app.thread())
        return _dispatcher


def post_to_gui(fn: Callable[[], None]) -> None:
    """Run ``fn`` on the GUI thread. Safe from any thread, also during shutdown. ``fn`` must
    not hold a widget (see the module docstring); use :func:`call_gui` for widget callbacks."""
    with contextlib.suppress(RuntimeError):  # the dispatcher or the application is gone
        dispatcher().posted.emit(fn)


def gui_callback(fn: Callable[..., None]) -> int:
    """Keep ``fn`` on the GUI side (call from the GUI thread); workers get only the number."""
    callback_id = next(_ids)
    dispatcher().callbacks[callback_id] = fn
    return callback_id


def drop_gui_callback(callback_id: int) -> None:
    """GUI thread only."""
    dispatcher().callbacks.pop(callback_id, None)


def call_gui(callback_id: int, *args: Any) -> None:
    """From any thread: run a registered callback on the GUI thread (if it still exists)."""
    with contextlib.suppress(RuntimeError):
        dispatcher().posted.emit(_Invoke(callback_id, args, False, ()))


def run_async(
    fn: Callable[[], Any],
    on_done: Callable[[Any], None],
    on_error: Callable[[BaseException], None],
    *,
    name: str = "comfyvn-gui-call",
) -> threading.Thread:
    """Run ``fn`` on a worker thread; ``on_done(result)`` or ``on_error(exc)`` runs on the GUI.

    Call from the GUI thread. ``fn`` must capture plain data only, never a widget."""
    done_id, error_id = gui_callback(on_done), gui_callback(on_error)
    both = (done_id, error_id)
    relay = dispatcher()

    def work() -> None:
        try:
            result: Any = fn()
            item = _Invoke(done_id, (result,), True, both)
        except BaseException as exc:
            item = _Invoke(error_id, (exc,), True, both)
        with contextlib.suppress(RuntimeError):
            relay.posted.emit(item)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    return thread
