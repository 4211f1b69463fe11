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
import sys
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
    "finetune": ("finetune", "fine-tune a video extractor end to end (clip-ft, x3d-ft)"),
    "finetune-clip": ("finetune_clip", "fine-tune CLIP end to end (clip-ft; = finetune)"),
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
    # a library's deprecation notice the user cannot act on, here and in Beam's worker processes
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit._script")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning:torch.jit._script")


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
    try:
        return int(args.func(args) or 0)
    except VidfuseError as exc:
        print(f"vidfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vidfuse {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
