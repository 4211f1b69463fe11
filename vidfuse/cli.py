"""The ``vidfuse`` entry point: one subcommand per pipeline stage.

Each stage lives in ``vidfuse/commands/<name>.py`` exposing ``register(subparsers)``;
the module is imported only when its command runs, so ``vidfuse --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import signal
import sys
import threading
from typing import Sequence

from vidfuse import __version__
from vidfuse.errors import Terminated, describe_error

# command name -> (module under vidfuse.commands, one-line help); order = order in --help
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a procedural text-video dataset (videos, captions, splits)"),
    "extract": ("extract", "Beam job: video folder -> feature shards"),
    "extract-text": ("extract_text", "caption features (clip, bow, w2v) and vocabularies"),
    "train": ("train", "fit a fusion head (LAFF, LAFF-ml, DLLFA, baselines)"),
    "finetune": ("finetune", "fine-tune a video extractor end to end (clip-ft, x3d-ft)"),
    "finetune-clip": ("finetune_clip", "fine-tune CLIP end to end (clip-ft; = finetune)"),
    "index": ("index", "fused video embeddings -> FAISS index"),
    "benchmark": ("benchmark", "retrieval metrics, both directions"),
    "search": ("search", "query an index with text"),
    "serve": ("serve", "search API and web page over one or two indexes"),
    "demo": ("demo", "the whole chain on a synthetic dataset"),
}


def _available_commands() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this install."""
    return {
        name: entry
        for name, entry in COMMANDS.items()
        if importlib.util.find_spec(f"vidfuse.commands.{entry[0]}") is not None
    }


def _add_verbosity_args(parser: argparse.ArgumentParser, default) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="debug logging, and the traceback of an error")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="warnings and errors only, no progress bars")


class _CommandParser(argparse.ArgumentParser):
    """A subcommand's parser: takes -v/-q too, so they work before or after the command name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _add_verbosity_args(self, argparse.SUPPRESS)  # SUPPRESS: absent here keeps the top level's


def _description() -> str:
    """The module docstring's first line as plain text (argparse shows no RST)."""
    return __doc__.splitlines()[0].replace("``", "")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidfuse", description=_description())
    parser.add_argument("--version", action="version", version=f"vidfuse {__version__}")
    _add_verbosity_args(parser, 0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_CommandParser)
    commands = _available_commands()
    # Import only the module of the command being run; list the others by name.
    wanted = next((a for a in argv if a in commands), None)
    for name, (module, help_text) in commands.items():
        if name == wanted:
            importlib.import_module(f"vidfuse.commands.{module}").register(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


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
    from vidfuse.logs import configure_logging, show_progress

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    # Commands that run Beam pass unknown flags on as Beam pipeline options (and check them).
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passes_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra_args = extra
    configure_logging(args.verbosity)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if hasattr(args, "no_progress") and not show_progress():
        args.no_progress = True  # no bars in redirected output, nor with -q
    _signals_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except BaseException as exc:  # noqa: BLE001  every failure ends as one line (-v: and its traceback)
        if isinstance(exc, SystemExit):
            raise
        message, status = describe_error(exc, getattr(args, "out", None))
        if args.verbosity > 0:
            import traceback

            traceback.print_exception(exc, file=sys.stderr)
        print(f"vidfuse {args.command}: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
