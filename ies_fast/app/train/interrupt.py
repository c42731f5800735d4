"""Stopping ``ies-fast train`` with Ctrl-C (SIGINT) or ``kill`` (SIGTERM): one line
saying where the run stopped and what ``--resume`` continues from, the run lock
released, exit ``128 + signal`` (130, 143).

While :func:`signals_raise` is active both signals raise :class:`Interrupted` in
the main thread; :func:`signals_deferred` holds them back while a checkpoint and
the logs of an epoch are written, so the checkpoint the line names is the one on
disk and the logs agree with it."""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. A KeyboardInterrupt: no ``except Exception``
    swallows it, and code that expects Ctrl-C (a DataLoader worker, which inherits
    this handler) treats it as one."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


#: while :func:`signals_deferred` runs: ``{"pending": signum or None}``; else None
_deferred = None


@contextlib.contextmanager
def signals_raise():
    """SIGINT and SIGTERM raise :class:`Interrupted` inside (main thread only)."""
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        if _deferred is not None:  # a checkpoint is being written: after it
            _deferred["pending"] = _deferred["pending"] or signum
            return
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def signals_deferred():
    """Under :func:`signals_raise`: a SIGINT or SIGTERM arriving inside is raised when
    the block ends (a block that fails raises its own error). (The handler, not a
    signal mask: any thread of the process may receive the signal.)"""
    global _deferred
    if _deferred is not None or not _main_thread():
        yield
        return
    _deferred = {"pending": None}
    try:
        yield
    finally:
        pending, _deferred = _deferred["pending"], None
    if pending:
        raise Interrupted(pending)


def interrupted_line(trainer, exc: BaseException) -> str:
    """What the CLI prints: the epoch running, the last checkpoint, what comes next."""
    name = exc.args[0] if isinstance(exc, Interrupted) else "SIGINT"
    if trainer is None:
        return f"interrupted ({name}) while the run was starting; nothing was trained or written"
    running, saved = trainer.epoch_running, trainer.saved_epochs
    if running is not None and running >= saved:
        where = f"in epoch {running + 1}"
    else:  # between a checkpoint and the next epoch, or while starting
        where = f"after epoch {saved}" if saved else "before its first epoch"
    if saved:
        return f"interrupted ({name}) {where}; the last checkpoint is epoch {saved}; `--resume` continues"
    return f"interrupted ({name}) {where}, before the first checkpoint: nothing to resume; run it again to start over"


def exit_code(exc: BaseException) -> int:
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT
