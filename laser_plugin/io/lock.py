"""One writer per directory: an exclusive advisory lock held while a run, resume or export writes.

The lock is ``fcntl.flock`` on ``DIR/.laser.lock``. The kernel drops it when the holding process
ends, however it ends (kill -9 included), so a stale lock never blocks the next run and there is
nothing to clean up by hand. A second process that finds the directory locked fails at once with
one line (no waiting: two runs writing one directory is a mistake to report, not to queue).

Within one process the lock is re-entrant per directory: ``laser run --resume`` claims the same
directory twice (resume, then start over when no state was saved), and tests call the CLI
in-process many times. :func:`release` (or process exit) gives it back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import warnings
from pathlib import Path

from laser_plugin.errors import OutputError

LOCK_NAME = ".laser.lock"

# resolved directory -> open file descriptor holding its flock
_HELD: dict[Path, int] = {}


def acquire(directory: Path, what: str = "directory") -> None:
    """Lock ``directory`` (which must exist) for this process; raise a one-line
    :class:`OutputError` if another process holds it."""
    key = Path(directory).resolve()
    if key in _HELD:
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not protected against each other there
        return
    lock_path = key / LOCK_NAME
    # O_NOFOLLOW: a lock file replaced by a symbolic link must not make us truncate its target.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(lock_path, flags, 0o644)
    except OSError as exc:
        raise OutputError(
            f"cannot write to output directory {directory}: {exc.strerror or exc}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(
                f"{what} {directory} is in use by another laser process{holder}; "
                "wait for it to finish or choose another directory"
            ) from None
        # A file system without flock (some network mounts): go on, but say so once.
        warnings.warn(
            f"cannot lock {directory} ({exc.strerror or exc}): nothing stops a second "
            "laser process from writing it at the same time",
            stacklevel=2,
        )
        return
    # The holder's pid, for the message another process prints (advisory text only).
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:  # never rewrite a file linked elsewhere
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # a full disk: the lock itself still holds
    _HELD[key] = fd


def release(directory: Path) -> None:
    """Give back this process's lock on ``directory`` (no-op if it holds none)."""
    fd = _HELD.pop(Path(directory).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def holds(directory: Path) -> bool:
    return Path(directory).resolve() in _HELD


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
    if not pid.isdigit():
        return ""
    # The file holds the last writer's pid; a reader (shared lock) writes none. So name the pid
    # only while that process is alive.
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return ""
    except OSError:
        pass  # alive, but another user's
    return f" (pid {pid})"


@contextlib.contextmanager
def reading(directory: Path, what: str = "run directory"):
    """Hold a shared lock on ``directory`` while reading it (an export): a laser process writing
    it (run, resume, overwrite) holds the exclusive lock, so the two never overlap; readers do
    not exclude each other. A directory where the lock file cannot be created (read-only media)
    is read without one: nothing can write it there either."""
    key = Path(directory).resolve()
    if key in _HELD:  # this process writes it: reading its own output is fine
        yield
        return
    try:
        import fcntl
    except ImportError:
        yield
        return
    nofollow = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(key / LOCK_NAME, os.O_RDONLY | nofollow)
    except FileNotFoundError:
        try:
            fd = os.open(key / LOCK_NAME, os.O_RDWR | os.O_CREAT | nofollow, 0o644)
        except OSError:
            fd = None
    except OSError:
        fd = None
    if fd is None:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(
                    f"{what} {directory} is being written by another laser process"
                    f"{_holder(fd)}; wait for it to finish"
                ) from None
        yield
    finally:
        os.close(fd)
