"""Run a Beam pipeline to its end, and fail as soon as one of its worker processes dies.

Why: Beam's portable runner (the DirectRunner's multi-processing mode) notices a dead SDK
worker only through that worker's data channel, while a bundle still expects outputs from it.
A bundle of a stage whose outputs nobody reads (the shard writer after its GroupByKey) has
none, so the runner waited for the dead worker's reply for ever: the job hung. A worker killed
while idle went unnoticed instead, and the job ended as if nothing had happened.

What does not depend on the graph: Beam's own thread that watches each worker process raises
``Worker subprocess exited with return code N`` in that thread when the process ends badly.
That report and the run's end are the two events the caller waits on, whichever comes first.
The runner closes its workers (joining those threads) before ``run()`` returns, so a death
during the run is always seen before the run's end: the outcome does not depend on timing.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from vidfuse.errors import worker_died

_WATCHER_THREAD = "run_worker"  # apache_beam.runners.portability.fn_api_runner.worker_handlers


def run_to_end(pipeline, watch_workers: bool = True) -> Any:
    """``pipeline.run()`` then ``wait_until_finish()``: the result, or the first failure raised here.

    ``watch_workers``: the runner starts worker processes here (else the run stays in this
    thread: an interrupt then stops workers running inside this process). On a worker's death the job's other workers are stopped (they would wait for work) and
    Beam's report is raised: ``vidfuse.errors`` turns it into one line. The runner's own
    thread is left blocked, as a daemon: nothing more reaches the output folder.
    """
    if not watch_workers:
        result = pipeline.run()
        result.wait_until_finish()
        return result
    events: queue.SimpleQueue = queue.SimpleQueue()
    previous = threading.excepthook

    def report_deaths(args) -> None:
        if args.thread is not None and args.thread.name == _WATCHER_THREAD and worker_died(args.exc_value):
            events.put((False, args.exc_value))
        previous(args)

    def run() -> None:
        try:
            result = pipeline.run()
            result.wait_until_finish()
        except BaseException as exc:  # noqa: BLE001  raised again in the caller's thread
            events.put((False, exc))
        else:
            events.put((True, result))

    threading.excepthook = report_deaths
    try:
        threading.Thread(target=run, name="beam-job", daemon=True).start()
        finished, value = events.get()
    finally:
        threading.excepthook = previous
    if finished:
        return value
    if worker_died(value):
        from pipeline.job_lock import stop_workers

        stop_workers()
    raise value
