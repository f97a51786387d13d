"""Atomic file writes: a reader (or a resumed run) never sees a half-written probe, shard or index; and
`exclusive_lock`, which keeps a second writer off the same files.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, then rename the temporary file onto `path` (same folder, so the rename is atomic)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared files unreadable to others
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LockedError(ValueError):
    """Another process holds the lock (a ValueError, so the CLI reports it as a usage error)."""


@contextmanager
def exclusive_lock(path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on file `path` while the block runs; a second holder fails at once.

    It is an `fcntl.flock` on the open file (a byte-range lock on Windows), which the system releases when
    the holder exits in any way (crash, kill -9), so a lock file left on disk is never stale: it only
    records the last holder (pid, host, time) for the error message, and the next writer simply takes it.
    On a network filesystem without locks between machines, run all writers of a folder on one machine.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd)
    except OSError as err:
        holder = _read_holder(fd)
        os.close(fd)
        if err.errno not in _HELD:
            raise OSError(err.errno, f"cannot lock {path} ({err.strerror}); this filesystem may not support locks: "
                                     "write the collection to a local folder") from None
        raise LockedError(f"{what} is being written by another process ({holder}; lock {path}). Two writers would "
                          "interleave their shards: wait for it to finish, stop it, or use another output folder "
                          "(several processes: launch them with torchrun / accelerate so each gets its own rank).") from None
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


# errno of "someone else holds it": flock's EWOULDBLOCK / EAGAIN, msvcrt's EACCES / EDEADLK
_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, errno.EDEADLK}


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 200).decode(errors="replace").strip() or "unknown process"
    except OSError:  # Windows refuses to read a locked range
        return "unknown process"


def _lock(fd: int) -> None:
    """Lock an open file without waiting (OSError when held): flock on POSIX, a byte-range lock on Windows."""
    try:
        import fcntl
    except ImportError:  # Windows: msvcrt's locks are also released when the process exits
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
