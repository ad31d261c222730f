"""Crash-safe file writes, shared by every part that writes a file.

A reader — k3s, systemd-modules-load, wgagent after a kill -9 — only ever sees the old
complete file or the new complete file: the data goes to a temporary file in the same
directory, is fsynced, renamed over the target, and the directory is fsynced. Writing
the same content again does nothing (no rename, no mtime change), so callers can write
on every pass and learn from the result whether anything changed.

The temporary file is ``.<name>.wgagent-tmp-<pid>``: hidden, and ending in digits, so
readers of a directory by suffix (k3s reads ``config.yaml.d/*.yaml``, systemd-modules-load
``*.conf``) never pick it up. One left behind by a killed writer is removed by the next
write to the same file once its process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os

from wgagent.errors import WriteError

TYPE_CHECKING = False  # not typing's: ``wgagent status`` reads its config through here (cli.py)
if TYPE_CHECKING:
    from typing import Any

_TMP_MARK = ".wgagent-tmp-"


class FileTooLarge(OSError):
    """A file larger than the caller's cap; ``strerror`` says so, as for any OSError."""

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {max_bytes} bytes", path)


def read_bytes(path: str) -> bytes | None:
    """The file's content, or None when it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def read_capped(path: str, max_bytes: int) -> bytes | None:
    """The file's content, or None when it does not exist; :class:`FileTooLarge` when it is
    larger than ``max_bytes`` (never read whole), other OSErrors as they come.

    >>> read_capped("/nonexistent/file", 10) is None
    True
    """
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        return None
    if len(data) > max_bytes:
        raise FileTooLarge(path, max_bytes)
    return data


def peek_text(path: str, max_bytes: int) -> str | None:
    """At most the first ``max_bytes`` bytes of a file as text (undecodable bytes replaced),
    or None when it cannot be read: for small files that are advice, not input (sysfs, DMI,
    unit files)."""
    try:
        with open(path, "rb") as f:
            return f.read(max_bytes).decode("utf-8", "replace")
    except OSError:
        return None


def atomic_write(path: str, data: bytes, *, mode: int = 0o600, make_dirs: bool = True) -> bool:
    """Replace ``path`` with ``data`` atomically; return whether the content changed.

    On any failure (ENOSPC, EROFS, EACCES, ...) the old file is left as it was, the
    temporary file is removed, and WriteError says what went wrong.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.yaml")
    >>> atomic_write(path, b"a: 1\\n"), atomic_write(path, b"a: 1\\n")   # written, then nothing to do
    (True, False)
    >>> import shutil; shutil.rmtree(os.path.dirname(path))
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        current = read_bytes(path)
    except OSError as exc:
        raise WriteError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if current == data and _mode_of(path) == mode:
        return False
    prefix = f".{os.path.basename(path)}{_TMP_MARK}"
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}")
    try:
        if make_dirs:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        _remove_stale_temps(directory, prefix)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by an earlier process with our PID that was killed
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # the umask must not widen or narrow it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException as exc:  # also KeyboardInterrupt: never leave the temp file behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    _fsync_dir(directory)
    return current != data


def _remove_stale_temps(directory: str, prefix: str) -> None:
    """Remove temp files of ``prefix`` whose writer process no longer exists (kill -9, power loss).

    A live writer's file is left alone: it is about to be renamed. Best effort only.
    """
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :]
        if not name.startswith(prefix) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (maybe another wgagent writing right now)
        except ProcessLookupError:
            pass
        except OSError:
            continue  # EPERM: alive, someone else's
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _mode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return None


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # the rename happened; only its durability is in doubt
        _warn("fsync of directory %s failed: %s", directory, exc.strerror)
    finally:
        os.close(fd)


def load_json(path: str) -> Any | None:
    """A JSON state file's content; None when missing or unreadable (logged, never fatal).

    State files are caches of what wgagent learnt; a corrupt one must not stop the daemon.
    """
    try:
        data = read_bytes(path)
    except OSError as exc:
        _warn("cannot read state file %s: %s; starting without it", path, exc.strerror)
        return None
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError:
        _warn("state file %s is not valid JSON; starting without it", path)
        return None


def save_json(path: str, value: Any) -> bool:
    """Atomically write ``value`` as JSON (sorted keys, so unchanged state is not rewritten)."""
    return atomic_write(path, json.dumps(value, sort_keys=True, indent=1).encode() + b"\n")


def _warn(message: str, *args: object) -> None:
    # logging is imported here, not above: a command reading its config logs nothing
    import logging

    logging.getLogger(__name__).warning(message, *args)
