"""Logging and progress settings of one ``vidfuse`` run, shared by the launcher and the Beam
worker processes it starts (they read the verbosity from the environment), so both print alike.

Normal: INFO from our packages, WARNING from libraries, errors only from Beam (it relays
every worker's INFO lines) and no library chatter on the root logger (Beam's "apitools not
found", open_clip's "no pretrained weights" for a random-init model): the terminal is for
progress. ``-v``: everything at DEBUG. ``-q``: warnings and errors only, no progress bars.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSITY_ENV = "VIDFUSE_VERBOSITY"  # "-1" quiet, "0" normal, "1" verbose; read by worker processes
OUR_PACKAGES = ("vidfuse", "pipeline", "extractors", "fusion", "index")
_OUR_PATHS = tuple(os.sep + name + os.sep for name in OUR_PACKAGES)


def verbosity() -> int:
    """This run's verbosity (the launcher's, in a worker process)."""
    try:
        return max(-1, min(1, int(os.environ.get(VERBOSITY_ENV, "0"))))
    except ValueError:
        return 0


class _NoLibraryRootChatter(logging.Filter):
    """Drops records below ERROR that libraries log on the root logger (``logging.warning(...)``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "root" or record.levelno >= logging.ERROR or any(p in record.pathname for p in _OUR_PATHS)


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was when logging was set up
    (a caller that swaps it, such as a test capturing output, would leave a closed stream here)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(level: int | None = None) -> None:
    """Set up logging for ``level`` (-1 quiet, 0 normal, 1 verbose; default: the environment's)
    and export it, so worker processes started from here follow it."""
    level = verbosity() if level is None else level
    os.environ[VERBOSITY_ENV] = str(level)
    root = logging.getLogger()
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    for old in list(root.handlers):  # ours from an earlier call, or what an import-time logging.warning() set up
        if isinstance(old, _StderrHandler) or (type(old) is logging.StreamHandler and old.stream in (sys.stderr, sys.__stderr__)):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if level > 0 else logging.WARNING)
    if level > 0:
        return
    handler.addFilter(_NoLibraryRootChatter())
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO if level == 0 else logging.WARNING)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    # a DoFn's exception is logged there with its traceback, then re-raised to this process,
    # which reports it (one line for a full disk): the log would say it twice, at length
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    # a worker that died: each of Beam's channels to it logs its own traceback; the job then
    # fails, and that is one line (vidfuse.errors.failure_as_error)
    for name in ("apache_beam.runners.worker.data_plane", "apache_beam.runners.portability.fn_api_runner"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # a library's deprecation notice the user cannot act on, here and in Beam's worker processes
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit._script")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:torch.jit._script")


def show_progress(requested: bool = True) -> bool:
    """Progress bars only on a terminal and not with ``-q``: redirected logs get no ``\\r`` frames."""
    return requested and verbosity() >= 0 and sys.stderr.isatty()
