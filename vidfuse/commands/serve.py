"""``vidfuse serve --run RUN --index IDX``: the search API and a web page over one or two indexes."""

from __future__ import annotations

import argparse
import os
import sys

from vidfuse.commands.common import add_device_arg
from vidfuse.errors import VidfuseError

MAX_PAIRS = 2


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Serve text search over a run's index (JSON API, OpenAPI at /docs) and a web page at /. "
                    "Give --run/--index twice to compare two runs (or two indexes of one run) side by side. "
                    "POST /api/reload or SIGHUP loads the index folders again.",
    )
    p.add_argument("--run", action="append", required=True, help="trained run folder (repeat for a second run)")
    p.add_argument("--index", action="append", required=True, help="its index folder (one per --run)")
    p.add_argument("--features", action="append", default=None,
                   help="features folder of each run (default: the one the index records)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    p.add_argument("--thumbnail-cache", default=None,
                   help="folder for thumbnail strips (default $XDG_CACHE_HOME/vidfuse/thumbnails)")
    add_device_arg(p)
    p.set_defaults(func=run)


def engine_names(runs: list[str], indexes: list[str]) -> list[str]:
    """Run folder names; the index folder's name is added when two pairs share a run name."""
    names = [os.path.basename(os.path.normpath(r)) for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}:{os.path.basename(os.path.normpath(i))}" for n, i in zip(names, indexes)]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def run(args: argparse.Namespace) -> int:
    if len(args.run) != len(args.index):
        raise VidfuseError(f"give one --index per --run ({len(args.run)} --run, {len(args.index)} --index)")
    if len(args.run) > MAX_PAIRS:
        raise VidfuseError(f"at most {MAX_PAIRS} --run/--index pairs can be compared, got {len(args.run)}")
    features = args.features or [None] * len(args.run)
    if len(features) != len(args.run):
        raise VidfuseError(f"give one --features per --run or none ({len(features)} for {len(args.run)} runs)")
    if not 0 <= args.port <= 65535:
        raise VidfuseError(f"--port must be in 0..65535, got {args.port}")
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise VidfuseError(f"vidfuse serve needs the 'serve' extra ({exc.name} is not installed): "
                           "pip install 'vidfuse[serve]'") from None
    from vidfuse.serve.engine import Engine
    from vidfuse.serve.server import bind, serve

    sock = bind(args.host, args.port)  # a taken port is refused before minutes of loading
    try:
        engines = [Engine(name, r, i, f, args.device)
                   for name, r, i, f in zip(engine_names(args.run, args.index), args.run, args.index, features)]
    except BaseException:
        sock.close()
        raise
    return serve(engines, sock, args.host, args.thumbnail_cache, announce=sys.stdout)
