"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
from typing import Iterator



def positive_int(text: str) -> int:
    """An ``int >= 1`` (argparse ``type=``): refused while parsing, before anything loads."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def comma_list(text: str) -> list[str]:
    """``"clip,x3d"`` -> ``["clip", "x3d"]`` (argparse ``type=``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


SET_EXAMPLES = {"extract": "output.shard_size=128", "train": "epochs=20"}  # keys each kind takes


def add_config_args(parser: argparse.ArgumentParser, kind: str, default: str) -> None:
    """``--config NAME|PATH`` and repeated ``--set key=value`` overrides (the file's twins)."""
    parser.add_argument(
        "--config",
        default=default,
        help=f"config file, or a name from configs/{kind}/ (default: {default})",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override one config value (repeatable), e.g. --set {SET_EXAMPLES[kind]}",
    )


def device_name(text: str) -> str:
    """``--device`` value, with ``gpu`` and ``cuda`` as names of the same thing (``gpu:1`` = ``cuda:1``)."""
    name = text.strip().lower()
    if name == "gpu" or name.startswith("gpu:"):
        name = "cuda" + name[3:]
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda (or gpu) or cuda:N, got {text!r}")


def add_training_run_args(parser: argparse.ArgumentParser, default_config: str, out_help: str) -> None:
    """The options every training command (train, finetune) shares: captions and splits, the run
    folder, the config, the device, resume and progress."""
    parser.add_argument("--captions", required=True, help="caption file (LAFF text, MSR-VTT JSON, CSV, JSONL)")
    parser.add_argument("--splits", default=None, help="folder of train/val/test.txt (default: beside --captions)")
    parser.add_argument("--out", required=True, help=out_help)
    add_config_args(parser, "train", default_config)
    add_device_arg(parser, default=None, what="override the config's device: ")
    parser.add_argument("--fresh", action="store_true", help="start over instead of resuming from RUN/last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (redirected output never gets them)")


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = "auto", what: str = "") -> None:
    parser.add_argument(
        "--device", default=default, type=device_name,
        help=f"{what}auto (cuda when present), cpu, cuda or cuda:N; gpu is cuda"
        + ("" if default else " (default: the config's)"),
    )


def _bookkeeping_names() -> set[str]:
    """Files a job writes before any output (its lock, the manifests of its feature sets)."""
    from pipeline.job_lock import LOCK_NAME
    from pipeline.manifest import MANIFEST_NAME

    return {LOCK_NAME, MANIFEST_NAME}


def _remove_if_unused(folder: str) -> None:
    """Remove ``folder`` when it holds nothing but empty folders, manifests and unheld job locks."""
    from pipeline.job_lock import LOCK_NAME

    if not os.path.isdir(folder):
        return
    locks, others = [], []
    bookkeeping = _bookkeeping_names()
    for root, _dirs, files in os.walk(folder):
        if any(name not in bookkeeping for name in files):
            return
        locks += [os.path.join(root, name) for name in files if name == LOCK_NAME]
        others += [os.path.join(root, name) for name in files if name != LOCK_NAME]
    held = []
    try:
        for lock in locks:  # another job took the folder meanwhile: leave it to that job
            handle = open(lock, "a")
            held.append(handle)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
        for path in others + locks:
            os.unlink(path)
        for root, _dirs, _files in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
            os.rmdir(root)
    except OSError:
        pass  # a file appeared meanwhile: the folder is in use, keep it
    finally:
        for handle in held:
            handle.close()


@contextlib.contextmanager
def no_new_folder_if_refused(*folders: str) -> Iterator[None]:
    """A run that fails (a refusal, a crash, an interrupt) leaves none of ``folders`` that it created
    holding no output.

    Why: a failure found after a job took its output folder (an extractor's weights missing,
    features that do not fit, a worker crash) must leave the disk as it was, not a folder with a
    lock file and manifests that looks like an output. Folders that existed before, or that hold
    any output of the run (shards a rerun resumes from), are kept.
    """
    created = [f for f in folders if "://" not in f and not os.path.lexists(f)]
    try:
        yield
    except BaseException:
        for folder in reversed(created):
            _remove_if_unused(folder)
        raise
