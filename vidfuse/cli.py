"""The ``vidfuse`` entry point: one subcommand per pipeline stage.

Each stage lives in ``vidfuse/commands/<name>.py`` exposing ``register(subparsers)``;
the module is imported only when its command runs, so ``vidfuse --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
import warnings
from typing import Sequence

from vidfuse import __version__
from vidfuse.errors import VidfuseError

# command name -> (module under vidfuse.commands, one-line help); order = order in --help
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a procedural text-video dataset (videos, captions, splits)"),
    "extract": ("extract", "Beam job: video folder -> feature shards"),
    "extract-text": ("extract_text", "caption features (clip, bow, w2v) and vocabularies"),
    "train": ("train", "fit a fusion head (LAFF, LAFF-ml, DLLFA, baselines)"),
    "finetune-clip": ("finetune_clip", "fine-tune CLIP end to end (clip-ft)"),
    "index": ("index", "fused video embeddings -> FAISS index"),
    "benchmark": ("benchmark", "retrieval metrics, both directions"),
    "search": ("search", "query an index with text"),
    "demo": ("demo", "the whole chain on a synthetic dataset"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this install."""
    return {
        name: entry
        for name, entry in COMMANDS.items()
        if importlib.util.find_spec(f"vidfuse.commands.{entry[0]}") is not None
    }


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidfuse", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vidfuse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = _available_commands()
    # Import only the module of the command being run; list the others by name.
    wanted = next((a for a in argv if a in commands), None)
    for name, (module, help_text) in commands.items():
        if name == wanted:
            importlib.import_module(f"vidfuse.commands.{module}").register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


OUR_PACKAGES = ("vidfuse", "pipeline", "extractors", "fusion", "index")


def _configure_logging(verbose: bool) -> None:
    """INFO from our packages, WARNING from libraries (open_clip logs each model build at INFO
    on the root logger), everything with ``-v``; Beam relays every worker's INFO lines, so it
    is kept to errors unless ``-v``: the terminal is for progress."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if verbose:
        return
    for name in OUR_PACKAGES:
        logging.getLogger(name).setLevel(logging.INFO)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler's stop, ``kill PID``) as an interruption, exactly like Ctrl-C."""


_STOPPING = threading.Event()


def _interrupt(signum, frame) -> None:
    from pipeline.job_lock import stop_workers

    _STOPPING.set()
    stop_workers()  # Beam's runner would wait for its worker processes for ever
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _quiet_when_stopping(args, _default=threading.excepthook) -> None:
    """Once interrupted, a background thread's error is the fallout of stopping (Beam's thread
    watching a worker it killed), not news: one line says the command was interrupted. So is
    a Beam thread's lost gRPC channel when a worker died: the job fails with one line saying so."""
    from vidfuse.errors import worker_died

    fallout = type(args.exc_value).__module__.startswith("grpc") or worker_died(args.exc_value)
    if _STOPPING.is_set() or (fallout and not logging.getLogger().isEnabledFor(logging.DEBUG)):
        return
    _default(args)


def _signals_as_interrupt() -> None:
    """SIGINT and SIGTERM unwind the command the same way: the job's worker processes are
    stopped, the folder lock released, one line printed. Why: Python's default SIGTERM ends
    the process at once, leaving Beam's workers to print gRPC tracebacks; and on either signal
    Beam's runner waited for workers that wait for work."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _interrupt)
        threading.excepthook = _quiet_when_stopping


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # Commands that run Beam pass unknown flags on as Beam pipeline options.
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    _configure_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _signals_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except VidfuseError as exc:
        print(f"vidfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the machine's failures (disk full, read-only, a dead worker): one line too
        from vidfuse.errors import failure_as_error

        known = failure_as_error(exc, getattr(args, "out", None))
        if known is None:
            raise
        print(f"vidfuse {args.command}: error: {known}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"vidfuse {args.command}: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
