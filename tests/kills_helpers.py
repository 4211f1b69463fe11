"""Killing ``vidfuse`` commands (tests/test_kills.py): each command runs as a real child process
in its own session, so a SIGKILL to its process group also ends any Beam worker it started.

Children are forked from a multiprocessing fork server that imported the libraries once: a
fresh ``python -c 'vidfuse ...'`` (``stage_fixtures.cli_subprocess``) spends 5-15 s on two busy
cores importing torch, Beam and open_clip before the command does any work, so kill moments
drawn over its runtime would mostly land in imports, and three kills per stage would cost
minutes. A forked child runs ``vidfuse.cli.main(ARGS)`` like cli_subprocess (one torch thread,
the repository as working folder) and its clock starts once it has its own session.

A child can also kill itself right before (or after) its N-th ``os.rename``/``os.replace``:
every commit of an atomic write is such a call, so stepping N over a command's renames puts a
kill at each commit point.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[1]


# What the commands import (lazily, mostly): imported once, in the fork server.
PRELOAD = ["torch", "apache_beam", "faiss", "h5py", "open_clip", "pyarrow.parquet", "extractors.registry",
           "fusion.trainer", "index.benchmark", "pipeline.extract_job", "pipeline.training_set", "vidfuse.cli",
           "kills_helpers"]


def _kill_group() -> None:
    os.killpg(0, signal.SIGKILL)  # this child leads its own group: it and whatever it started


def _hook_renames(before: int | None, after: int | None, times: list[float],
                  group_after: tuple[int, float] | None = None) -> None:
    """Note when each rename happens; SIGKILL this process right before rename ``before`` (1 is
    the first) or right after ``after``; SIGKILL the process group ``group_after[1]`` s after
    rename ``group_after[0]`` (timed here: a test process polling for the rename reacts slower
    than the gap between two renames, e.g. the two of an index swap)."""
    start = time.monotonic()

    def after_rename(count: int) -> None:
        if count == after:
            os.kill(os.getpid(), signal.SIGKILL)
        if group_after is not None and count == group_after[0]:
            if group_after[1] <= 0:
                _kill_group()
            else:
                sys.setswitchinterval(1e-5)  # let the timer thread in promptly
                threading.Timer(group_after[1], _kill_group).start()

    def wrap(real):
        def rename(src, dst, *args, **kwargs):
            times.append(time.monotonic() - start)
            if len(times) == before:
                os.kill(os.getpid(), signal.SIGKILL)
            result = real(src, dst, *args, **kwargs)
            after_rename(len(times))
            return result
        return rename

    os.rename, os.replace = wrap(os.rename), wrap(os.replace)


def _child(args: list[str], log: str, ready: str, before: int | None, after: int | None, count: str | None,
           group_after: tuple[int, float] | None = None) -> None:
    os.setsid()  # its own process group: killpg(pid) reaches it and whatever it starts, nothing else
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.chdir(REPO)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    import torch

    torch.set_num_threads(1)
    times: list[float] = []
    from vidfuse.cli import main

    Path(ready).touch()
    _hook_renames(before, after, times, group_after)
    rc = main(args)
    if count:
        Path(count).write_text(json.dumps(times))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


_CONTEXT = None


def _context():
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(PRELOAD)
    return _CONTEXT


@dataclass
class Outcome:
    exitcode: int
    seconds: float  # from the child's start (own session) to its end
    log: str
    rename_times: list[float] | None = None  # when asked: seconds from the start to each rename

    @property
    def renames(self) -> int | None:
        return None if self.rename_times is None else len(self.rename_times)

    @property
    def killed(self) -> bool:
        return self.exitcode == -signal.SIGKILL


class Command:
    """``vidfuse ARGS`` running in a forked child, in its own session (see the module docstring)."""

    def __init__(self, args: Sequence[object], work: Path, before: int | None = None, after: int | None = None,
                 count: bool = False, timeout: float = 300, group_after: tuple[int, float] | None = None):
        work.mkdir(parents=True, exist_ok=True)
        self.log, self.ready, self.counted = work / "child.log", work / "child.ready", work / "child.renames"
        for path in (self.ready, self.counted):
            path.unlink(missing_ok=True)
        self.count = count
        self.proc = _context().Process(target=_child, args=(
            [str(a) for a in args], str(self.log), str(self.ready), before, after, str(self.counted) if count else None,
            group_after))
        self.proc.start()
        self.deadline = time.monotonic() + timeout
        while not self.ready.exists() and self.proc.exitcode is None and time.monotonic() < self.deadline:
            time.sleep(0.002)
        self.start = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.exitcode is None

    def kill(self) -> None:
        """SIGKILL the child's process group (it leads one once it is ready), if still running."""
        if self.proc.exitcode is None:
            if self.ready.exists():
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()

    def wait(self, kill_after: float | None = None) -> Outcome:
        """Wait for the end; with ``kill_after``, SIGKILL the group that many seconds after its start."""
        try:
            if kill_after is None:
                self.proc.join(max(0.0, self.deadline - time.monotonic()))
            else:
                self.proc.join(max(0.0, self.start + kill_after - time.monotonic()))
        finally:
            self.kill()
            self.proc.join()
        times = None
        if self.count and self.counted.exists():
            try:
                times = json.loads(self.counted.read_text())
            except ValueError:  # killed while writing it, after its command returned: not needed then
                assert self.proc.exitcode == -signal.SIGKILL, self.counted
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return Outcome(self.proc.exitcode, time.monotonic() - self.start, log, times)


def run_command(args: Sequence[object], work: Path, delay: float | None = None, after_renames: int = 0,
                **kwargs) -> Outcome:
    """Run ``vidfuse ARGS`` in a child to its end, or SIGKILL its process group ``delay`` s after
    it started (or after its ``after_renames``-th rename: then timed by the child itself)."""
    if after_renames and delay is not None:
        return Command(args, work, group_after=(after_renames, delay), **kwargs).wait()
    return Command(args, work, **kwargs).wait(kill_after=delay)
