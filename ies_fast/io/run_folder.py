"""Safe file IO inside a run folder, which is untrusted input (docs/security.md).

Writes never follow a symlink: a file is written to a new temporary file in the
same folder (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name), fsynced and
renamed over its name (``os.replace``) while the writer holds an ``flock`` on it; the
temporary files of killed writers (no lock held) are removed by
:func:`remove_stale_temps`, which the next checkpoint save or load in a run folder
and the next write to the data cache call. A name that holds a symlink, a folder, a
FIFO or anything but a regular file is refused (:class:`RunFolderError`), never
written through. Reads open regular files only (``O_NOFOLLOW | O_NONBLOCK``, so a
FIFO or a device cannot block, then ``fstat``), read at most a bounded number of
bytes, and parse JSON with size, depth and integer-length limits.
"""
from __future__ import annotations

import io
import json
import os
import re
import secrets
import stat

try:
    import fcntl
except ImportError:  # not POSIX: temporary files are then removed without the liveness check
    fcntl = None

#: the largest JSON file a run folder may hold (summary.json with thousands of epochs is ~1 MiB)
MAX_JSON_BYTES = 16 * 2**20
#: the deepest nesting of arrays and objects a run folder's JSON may have (ours: 3)
MAX_JSON_DEPTH = 32
#: integers in a run folder's JSON fit in int64
MAX_JSON_INT_DIGITS = 19

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
#: the names :func:`create_temp` gives: ``.<name>.<12 hex digits>.tmp``
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


class RunFolderError(RuntimeError):
    """A run folder holds something where a file is expected that is not a regular
    file (a symlink, folder, FIFO, device), or a file too large or malformed to read."""


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _check_kind(path, is_kind, expected: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not is_kind(mode):
        raise RunFolderError(f"{os.fspath(path)} is {_kind(mode)} where {expected} is expected: refused "
                             f"(remove it, or choose another --out)")


def check_slot(path) -> None:
    """Raise :class:`RunFolderError` when ``path`` exists and is not a regular file
    (a symlink is not followed: it is refused)."""
    _check_kind(path, stat.S_ISREG, "a file")


def check_folder(path) -> None:
    """Raise :class:`RunFolderError` when ``path`` exists and is not a real folder
    (a symlink to one included: a run's sub-folder is made by the run, never linked)."""
    _check_kind(path, stat.S_ISDIR, "a run folder")


def fsync_dir(directory) -> None:
    """Make a rename in ``directory`` durable (best effort: not every file system can)."""
    try:
        fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; ``False`` when another
    open file holds it. A writer holds one on its temporary file until the rename,
    and the kernel drops it when the writer dies."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def remove_stale_temp(tmp: str) -> bool:
    """Delete the temporary file ``tmp`` unless a live writer holds its lock (a FIFO,
    link or folder of that name is left alone, unopened). Returns whether it went."""
    try:
        fd, _ = open_regular(tmp)
    except (OSError, RunFolderError):
        return False
    try:
        if try_lock(fd):
            os.unlink(tmp)
            return True
    except OSError:
        pass
    finally:
        os.close(fd)
    return False


def remove_stale_temps(directory) -> list:
    """Delete the ``.<name>.<random>.tmp`` files in ``directory`` that killed writers
    left (no live process holds their lock). Returns the removed paths."""
    try:
        names = [e.name for e in os.scandir(directory) if _TEMP_NAME.match(e.name)]
    except OSError:
        return []
    paths = [os.path.join(directory, n) for n in names]
    return [p for p in paths if remove_stale_temp(p)]


def create_temp(path) -> tuple:
    """A new empty file ``.<name>.<random>.tmp`` next to ``path``, opened for writing
    (``O_EXCL | O_NOFOLLOW``: never an existing file or link) and locked (see
    :func:`try_lock`; keep ``fd`` open until the rename). Returns ``(fd, tmp)``."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
        except FileExistsError:
            continue
        try_lock(fd)
        if os.fstat(fd).st_nlink > 0:  # a cleaner may unlink it between the open and the lock
            return fd, tmp
        os.close(fd)


def replace_into(tmp: str, path, *, durable: bool = True) -> None:
    """Rename the written temporary file ``tmp`` over ``path`` (refused, ``tmp``
    removed, when ``path`` holds anything but a regular file); ``durable`` fsyncs
    the folder after the rename."""
    try:
        check_slot(path)
        os.replace(tmp, path)  # replaces a name, never writes through a link
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        fsync_dir(os.path.dirname(os.path.abspath(os.fspath(path))))


def write_bytes(path, data, *, durable: bool = True) -> str:
    """Write ``data`` to ``path`` atomically without following links (see the module doc).
    ``durable=False`` skips the two fsyncs (file and folder): still atomic and never
    through a link, but a power cut may lose the write; for files rewritten whole
    from state that is kept durably elsewhere (a run's per-epoch logs)."""
    path = os.fspath(path)
    check_slot(path)  # refuse before any work
    fd, tmp = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
            replace_into(tmp, path, durable=durable)  # still under the temporary file's lock
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path, text: str, *, durable: bool = True) -> str:
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path, obj, **kwargs) -> str:
    return write_text(path, json.dumps(obj, **kwargs))


def save_figure(fig, path, **kwargs) -> str:
    """``fig.savefig`` into memory, then :func:`write_bytes` (savefig to a path follows links)."""
    buf = io.BytesIO()
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or None
    fig.savefig(buf, format=fmt, **kwargs)
    return write_bytes(path, buf.getvalue())


def open_regular(path, flags: int = os.O_RDONLY) -> tuple:
    """``(fd, stat)`` of the regular file at ``path``, opened without following a
    link and without blocking on a FIFO; :class:`RunFolderError` for anything else.
    ``FileNotFoundError`` passes through."""
    path = os.fspath(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            raise RunFolderError(f"{path} is {_kind(mode)} where a file is expected: refused") from None
        raise RunFolderError(f"{path} cannot be opened: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RunFolderError(f"{path} is {_kind(st.st_mode)} where a file is expected: refused")
    if _NONBLOCK:
        os.set_blocking(fd, True)
    return fd, st


def read_exactly(fd: int, n: int, path) -> bytes:
    """``n`` bytes from ``fd`` (fewer only at the end of the file)."""
    chunks, left = [], n
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_bytes(path, max_bytes: int) -> bytes:
    """The content of the regular file ``path``, refused when it holds more than ``max_bytes``."""
    fd, st = open_regular(path)
    try:
        if st.st_size > max_bytes:
            raise RunFolderError(f"{os.fspath(path)} holds {st.st_size} bytes, more than the {max_bytes} allowed")
        data = read_exactly(fd, max_bytes + 1, path)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise RunFolderError(f"{os.fspath(path)} holds more than the {max_bytes} bytes allowed")
    return data


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in the JSON ``text`` (strings skipped)."""
    depth = deepest = 0
    for c in re.sub(r"[^\[\]{}]", "", _STRING.sub("", text)):
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def parse_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH):
    """``json.loads`` with a nesting limit and integers of at most 19 digits
    (:class:`RunFolderError` naming ``where`` otherwise)."""
    depth = json_depth(text)
    if depth > max_depth:
        raise RunFolderError(f"{where} is nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(text, parse_int=_bounded_int)
    except (ValueError, RecursionError) as exc:
        raise RunFolderError(f"{where} is not valid JSON: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def read_json(path, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH):
    """The JSON in the regular file ``path`` (see :func:`read_bytes`, :func:`parse_json`)."""
    data = read_bytes(path, max_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RunFolderError(f"{os.fspath(path)} is not UTF-8 text") from None
    return parse_json(text, os.fspath(path), max_depth)
