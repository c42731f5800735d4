"""One run per ``--out`` folder: an exclusive ``flock`` on ``OUT/run.lock`` held for the
run's lifetime.

The kernel drops an ``flock`` when its process dies, so a lock left by a killed run
never blocks the next one: its ``run.lock`` file remains, holding the dead run's
pid, and the next run takes it over and says so (:func:`stale_lock_line`). A
finished run removes the file while still holding the lock; a process that opened
the old file in that moment notices the file it locked is no longer the one at the
path and tries again, so two runs never both hold the lock.
"""
from __future__ import annotations

import os
import stat
from typing import Optional

from ...io.run_folder import RunFolderError, check_slot

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None

FILENAME = "run.lock"


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock."""


class RunLockError(RuntimeError):
    """The lock cannot be taken: ``run.lock`` is a folder, a symlink, a FIFO, a file
    this user cannot open, or the folder cannot hold it. A run never goes on unlocked."""


_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _pid(data: bytes) -> Optional[int]:
    text = data.decode(errors="replace").strip()
    return int(text) if text.isdigit() and len(text) < 10 else None


def stale_lock_line(lock: "RunLock") -> Optional[str]:
    """One line saying a stale lock was taken over (``None`` when it was not stale)."""
    if lock is None or lock.stale_holder is None:
        return None
    try:
        os.kill(lock.stale_holder, 0)
        gone = "has ended without releasing it"
    except ProcessLookupError:
        gone = "no longer exists"
    except OSError:
        gone = "has ended without releasing it"
    return f"{lock.path} was left by process {lock.stale_holder}, which {gone}: a stale lock, taken over"


class RunLock:
    """``RunLock(out).acquire()`` or ``with RunLock(out): ...``; :meth:`release` at the end."""

    def __init__(self, out: str):
        self.out = os.fspath(out)
        self.path = os.path.join(self.out, FILENAME)
        self._fd: Optional[int] = None
        #: the pid written in a ``run.lock`` whose holder ended without releasing it
        #: (killed): the lock was stale and is taken over; ``None`` otherwise
        self.stale_holder: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock (creating ``out`` if needed) or raise :class:`RunFolderBusy`
        naming the folder and the holder's pid, or :class:`RunLockError` when the
        lock file cannot be made, opened or is not a regular file."""
        if self._fd is not None or fcntl is None:
            return self
        os.makedirs(self.out, exist_ok=True)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderBusy(f"--out {self.out} is in use by another run (pid {holder} holds {self.path}): "
                                    f"wait for it to end or choose another --out") from None
            except BaseException:
                os.close(fd)
                raise
            if self._is_current(fd):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: again
        self.stale_holder = _pid(os.read(fd, 64))
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _open(self) -> int:
        """The lock file, opened without following a link or blocking on a FIFO."""
        def refuse(why: str) -> RunLockError:
            return RunLockError(f"--out {self.out}: cannot take the run lock {self.path}: {why}; remove it or "
                                f"choose another --out")
        try:
            check_slot(self.path)
            fd = os.open(self.path, _FLAGS, 0o644)
        except RunFolderError as exc:
            raise refuse("it is not a regular file (" + str(exc).split(" is ", 1)[-1].split(" where")[0] + ")") from None
        except OSError as exc:
            raise refuse(exc.strerror or str(exc)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped in after the check
            os.close(fd)
            raise refuse("it is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def _is_current(self, fd: int) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Remove the lock file (still locked, so nobody else holds this one) and unlock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()
