"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse


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
