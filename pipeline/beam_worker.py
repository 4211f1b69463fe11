"""Entry point of the DirectRunner's worker processes: Beam's SDK worker, logging as the launcher.

Beam's ``sdk_worker_main`` sets the root logger to INFO while it starts and prints its start-up
lines (handler created, pipeline options, "apitools not found") to the process's stderr, which
is the user's terminal. Setting up vidfuse's logging first makes them follow ``-v``/``-q``.
"""

from __future__ import annotations

import sys

from vidfuse.logs import configure_logging

configure_logging()

from apache_beam.runners.worker import sdk_worker_main  # noqa: E402  (after logging is set up)

if __name__ == "__main__":
    sdk_worker_main.main(sys.argv)
