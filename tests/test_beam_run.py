"""pipeline.beam_run: a worker process's death ends the run, whatever the runner is waiting on.

Beam's portable runner reports a worker process that exits badly only by raising in the
thread that watches it (``run_worker``); the runner itself may wait for that worker's reply
for ever (a stage with no outputs) or finish without it (the worker was idle). These stand-ins
do exactly that, with events (tests/test_signals.py kills a real worker under ``vidfuse extract``).
"""

from __future__ import annotations

import threading

import pytest

from pipeline.beam_run import run_to_end
from vidfuse.errors import describe_error

DEATH = "Worker subprocess exited with return code -9"


def _report_death() -> threading.Thread:
    def watch() -> None:
        raise RuntimeError(DEATH)

    watcher = threading.Thread(target=watch, name="run_worker")
    watcher.start()
    return watcher


class _Finished:
    def wait_until_finish(self) -> str:
        return "DONE"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_death_ends_a_run_that_waits_for_the_dead_worker_for_ever():
    never = threading.Event()

    class Pipeline:
        def run(self):
            _report_death()
            never.wait(300)  # the runner waiting for a reply that never comes (bounded: a broken
            # run_to_end fails the test instead of hanging it)

    try:
        with pytest.raises(RuntimeError, match=DEATH) as caught:
            run_to_end(Pipeline())
    finally:
        never.set()
    message, status = describe_error(caught.value)
    assert status == 2 and message.startswith("error: a Beam worker process died under the job (exit -9)"), message


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_death_during_a_run_that_still_finishes_fails_it():
    class Pipeline:
        def run(self):
            _report_death().join()  # the runner joins its watchers before run() returns
            return _Finished()

    with pytest.raises(RuntimeError, match=DEATH):
        run_to_end(Pipeline())


def test_a_run_without_deaths_returns_its_result_and_restores_the_hook():
    hook = threading.excepthook

    class Pipeline:
        def run(self):
            return _Finished()

    assert isinstance(run_to_end(Pipeline()), _Finished)
    assert threading.excepthook is hook
