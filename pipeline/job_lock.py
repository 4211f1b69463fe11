"""One writer per output folder: a second job on the same folder refuses with a clear message.

``flock`` is released by the kernel when the holder dies (even by SIGKILL), so a killed job
never leaves a stale lock behind. What can outlive a killed job is its worker processes: Beam's
DirectRunner starts them as separate processes, and when only the launcher is killed (``kill -9
PID``, the OOM killer) a worker goes on with the bundle it holds and writes shards seconds later,
into a folder whose lock is already free. A job started then would extract the same videos
again (the same id in two shards: seen in a test, the folder was then refused). So the holder
marks its environment with the lock path (the workers inherit it) and writes its pid into the
lock file, clearing it when it ends; a holder that finds a pid there (its predecessor was killed)
waits for processes still carrying the mark before it reads the folder, and after
``ORPHAN_WAIT_S`` refuses, naming them.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from typing import Iterator

from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)

LOCK_NAME = ".vidfuse.lock"
ENV_MARK = "VIDFUSE_WRITING"  # lock path of the job that started this process (inherited by workers)
ORPHAN_WAIT_S = 120.0
_POLL_S = 0.2


class FolderLockedError(VidfuseError):
    """Another vidfuse job is writing to the same folder."""


def leftover_writers(lock_path: str) -> list[int]:
    """Live processes other than this one that a job holding ``lock_path`` started.

    Read from ``/proc/<pid>/environ`` (the environment a process started with, so the mark a
    launcher sets for its workers is not seen on the launcher itself); empty where there is no
    /proc, and processes of other users are not readable (they cannot write our folder's lock).
    """
    mark = f"{ENV_MARK}={lock_path}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    me, found = os.getpid(), []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read()  # empty for a zombie: it writes nothing any more
        except OSError:
            continue
        if mark in environ.split(b"\0"):
            found.append(int(entry))
    return sorted(found)


def stop_workers() -> list[int]:
    """Kill the processes the job holding a folder in this process started (they carry its mark).

    Why: interrupted (Ctrl-C, SIGTERM), Beam's runner waits for its worker processes to end,
    and they wait for work: the job hung, or the workers printed tracebacks once it was gone.
    Killed, they write nothing more; what a killed worker left (temp files, a shard missing its
    twin) the rerun removes, as after any kill.
    """
    lock_path = os.environ.get(ENV_MARK)
    if not lock_path:
        return []
    pids = leftover_writers(lock_path)
    # Parents first: a shell (Beam starts each worker through ``sh -c``) whose child died before
    # it prints "Killed", after the command's own last line.
    for pid in sorted(pids, key=lambda pid: _parent(pid) in pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return int(handle.read().rsplit(b")", 1)[1].split()[1])  # the field after the state
    except (OSError, ValueError, IndexError):
        return None


def _wait_for_leftovers(lock_path: str, path: str, what: str, wait_s: float) -> None:
    pids = leftover_writers(lock_path)
    if not pids:
        return
    log.warning("%s: waiting up to %.0f s for %d process(es) of an earlier %s that was killed (pids %s)",
                path, wait_s, len(pids), what, pids)
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        pids = leftover_writers(lock_path)
    if pids:
        raise FolderLockedError(
            f"{path}: {len(pids)} process(es) of an earlier {what} that was killed still run and may write "
            f"there (pids {' '.join(map(str, pids))}); wait for them to end or stop them (kill PID), then rerun"
        )


@contextlib.contextmanager
def exclusive_folder(path: str, what: str = "job", wait: bool = False,
                     orphan_wait_s: float | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (local folders; remote ones are not locked).

    A held lock is refused (FolderLockedError), or with ``wait`` waited for (short write
    sections that several jobs share, e.g. one report folder). Processes started while it is
    held inherit a mark naming the lock, so a later holder can wait for those of a killed job
    (``orphan_wait_s``, default ``ORPHAN_WAIT_S``).
    """
    if "://" in path:
        yield
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.realpath(os.path.join(path, LOCK_NAME))
    handle = open(lock_path, "a+")
    previous_mark, held = os.environ.get(ENV_MARK), False
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown pid"
            if not wait:
                raise FolderLockedError(
                    f"another {what} is writing to {path} ({holder}); wait for it to finish or use another --out"
                ) from None
            log.info("%s: waiting for another %s to finish writing (%s)", path, what, holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        if handle.read().strip():  # the last holder did not get to clear it: killed
            _wait_for_leftovers(lock_path, path, what, ORPHAN_WAIT_S if orphan_wait_s is None else orphan_wait_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        held = True
        os.environ[ENV_MARK] = lock_path
        yield
    finally:
        if previous_mark is None:
            os.environ.pop(ENV_MARK, None)
        else:
            os.environ[ENV_MARK] = previous_mark
        if held:  # a clean end (errors included) clears the holder: only a killed job leaves its pid
            handle.seek(0)
            handle.truncate()
        handle.close()
