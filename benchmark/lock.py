"""One run at a time per results folder: an advisory lock on ``<results>/.gauntlet.lock``.

Two runs writing one folder would interleave records of different plans (one crashed on
mismatched shapes and printed a wrong worst case). The second run exits 2 naming the
holder. The lock is ``flock``-based, so it is released by the kernel when its holder dies,
even by SIGKILL: a stale lock file never blocks the next run.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".gauntlet.lock"


class ResultsLocked(ValueError):
    """Another run holds the results folder (one line naming it and the holder)."""


@contextmanager
def results_lock(results_dir: Path) -> Iterator[Path]:
    """Hold the results folder's lock for the block.

    Raises:
        ResultsLocked: another process holds it.
    """
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "an unknown process"
            raise ResultsLocked(f"{path}: results folder in use by {holder}; wait for it to finish "
                                f"or pass another --results") from None
        os.ftruncate(fd, 0)
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        os.pwrite(fd, f"gauntlet run pid {os.getpid()} on {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
