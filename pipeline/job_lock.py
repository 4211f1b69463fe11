"""One writer per output folder: a second job on the same folder refuses with a clear message.

``flock`` is released by the kernel when the holder dies (even by SIGKILL), so a killed job
never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

from vidfuse.errors import VidfuseError

LOCK_NAME = ".vidfuse.lock"


class FolderLockedError(VidfuseError):
    """Another vidfuse job is writing to the same folder."""


@contextlib.contextmanager
def exclusive_folder(path: str, what: str = "job") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (local folders; remote ones are not locked)."""
    if "://" in path:
        yield
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_NAME)
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            raise FolderLockedError(
                f"another {what} is writing to {path} ({holder}); wait for it to finish or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()
