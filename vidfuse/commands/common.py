"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
from typing import Iterator

from vidfuse.errors import VidfuseError


def comma_list(text: str) -> list[str]:
    """``"clip,x3d"`` -> ``["clip", "x3d"]`` (argparse ``type=``)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


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
        help="override one config value (repeatable), e.g. --set output.shard_size=128",
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N"
    )


def _remove_if_unused(folder: str) -> None:
    """Remove ``folder`` when it holds nothing but empty folders and unheld job locks."""
    from pipeline.job_lock import LOCK_NAME

    if not os.path.isdir(folder):
        return
    locks = []
    for root, _dirs, files in os.walk(folder):
        if any(name != LOCK_NAME for name in files):
            return
        locks += [os.path.join(root, name) for name in files]
    held = []
    try:
        for lock in locks:  # another job took the folder meanwhile: leave it to that job
            handle = open(lock, "a")
            held.append(handle)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
        for lock in locks:
            os.unlink(lock)
        for root, _dirs, _files in sorted(os.walk(folder), key=lambda entry: -len(entry[0])):
            os.rmdir(root)
    except OSError:
        pass  # a file appeared meanwhile: the folder is in use, keep it
    finally:
        for handle in held:
            handle.close()


@contextlib.contextmanager
def no_new_folder_if_refused(*folders: str) -> Iterator[None]:
    """A run refused with a :class:`VidfuseError` leaves none of ``folders`` that it created empty.

    Why: a refusal found after a job took its output folder (an extractor's weights missing,
    features that do not fit) must leave the disk as it was, not an empty folder with a lock
    file that looks like an output. Folders that existed before, or that hold any file of the
    run, are kept.
    """
    created = [f for f in folders if "://" not in f and not os.path.lexists(f)]
    try:
        yield
    except VidfuseError:
        for folder in reversed(created):
            _remove_if_unused(folder)
        raise
