"""``vidfuse search --run RUN --index IDX "query" [-k 10]``: top videos for text queries."""

from __future__ import annotations

import argparse
import sys
import time

from vidfuse.commands.common import add_device_arg, positive_int

QUERY_ENCODERS = ("auto", "onnx", "torch")  # what index.search.open_searcher takes (listed here: --help imports nothing)


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Top-k videos for each QUERY; with no QUERY, reads one query per line from standard input.",
    )
    p.add_argument("queries", nargs="*", metavar="QUERY", help="query text (quote it); none: one per line from stdin")
    p.add_argument("--run", required=True, help="run folder written by `vidfuse train`")
    p.add_argument("--index", required=True, help="index folder written by `vidfuse index` for that run")
    p.add_argument("--features", default=None, help="features folder (default: the run's)")
    p.add_argument("-k", type=positive_int, default=10, help="results per query (default 10)")
    add_device_arg(p, default="cpu", what="where the query encoder and the index run (default cpu): ")
    p.add_argument("--query-encoder", choices=QUERY_ENCODERS, default="auto",
                   help="how queries are encoded: onnx, the head's text side `vidfuse index` exported beside the "
                        "index (no torch: starts in a fraction of the time; CPU only, heads that read no CLIP text "
                        "and need no re-rank); torch, the run's head; auto (default), onnx where the index has a "
                        "current one and onnxruntime is installed, else torch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from index.search import format_hits, open_searcher
    from vidfuse.errors import VidfuseError

    if any(not q.strip() for q in args.queries):  # checked before the index loads: nothing to search for
        raise VidfuseError("an empty QUERY: give the words to search for")
    searcher = open_searcher(args.run, args.index, args.features, args.device, args.query_encoder)
    interactive = not args.queries
    if interactive and sys.stdin.isatty():
        print("type a query per line (Ctrl-D to quit)", file=sys.stderr)
    searched = 0
    for query in args.queries or (line.strip() for line in sys.stdin):
        if not query:
            continue  # a blank line typed or piped between queries
        start = time.perf_counter()
        hits = searcher.search(query, args.k)
        print(format_hits(query, hits))
        print(f"({(time.perf_counter() - start) * 1000:.1f} ms)", file=sys.stderr)
        searched += 1
    if not searched and not sys.stdin.isatty():
        raise VidfuseError("no query: standard input held no line with words to search for")
    return 0
