"""``vidfuse search --run RUN --index IDX "query" [-k 10]``: top videos for text queries."""

from __future__ import annotations

import argparse
import sys
import time


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Top-k videos for each QUERY; with no QUERY, reads one query per line from standard input.",
    )
    p.add_argument("queries", nargs="*", metavar="QUERY", help="text queries (none: one per line from standard input)")
    p.add_argument("--run", required=True, help="run folder written by `vidfuse train`")
    p.add_argument("--index", required=True, help="index folder written by `vidfuse index` for that run")
    p.add_argument("--features", default=None, help="features folder (default: the run's)")
    p.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--device", default="cpu",
                   help="query encoder and index: cpu (default), auto (the GPU when present), cuda, cuda:N or gpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from index.search import Searcher, format_hits

    searcher = Searcher(args.run, args.index, args.features, args.device)
    interactive = not args.queries
    if interactive and sys.stdin.isatty():
        print("type a query per line (Ctrl-D to quit)", file=sys.stderr)
    for query in args.queries or (line.strip() for line in sys.stdin):
        if not query:
            continue
        start = time.perf_counter()
        hits = searcher.search(query, args.k)
        print(format_hits(query, hits))
        print(f"({(time.perf_counter() - start) * 1000:.1f} ms)", file=sys.stderr)
    return 0
