"""Atomic file writes: a reader (or a resumed run) never sees a half-written probe, shard or index; and
`exclusive_lock`, which keeps a second writer off the same files.
"""

from __future__ import annotations

import fcntl
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

    It is an `fcntl.flock` on the open file, which the kernel releases when the holder exits in any way
    (crash, kill -9), so a lock file left on disk is never stale: it only records the last holder (pid,
    host, time) for the error message, and the next writer simply takes it. On a network filesystem
    without flock support between machines, run each rank's writer on one machine.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
        os.close(fd)
        raise LockedError(f"{what} is being written by another process ({holder}; lock {path}). Two writers would "
                          "interleave their shards: wait for it to finish, stop it, or use another output folder "
                          "(several processes: launch them with torchrun / accelerate so each gets its own rank).") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
