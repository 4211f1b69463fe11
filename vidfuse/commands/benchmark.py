"""``vidfuse benchmark --run RUN --index IDX --split test --out REPORT``: retrieval metrics."""

from __future__ import annotations

import argparse

from vidfuse.commands.common import positive_int


def register(subparsers, name: str, help_text: str) -> None:
    from index.metrics import TIES

    p = subparsers.add_parser(
        name,
        help=help_text,
        description=(
            "R@1/5/10, MedR, MeanR, mIR, mAP in both directions, through the index and exactly. "
            "Several runs benchmarked into one --out share its table.md and recall.png."
        ),
    )
    p.add_argument("--run", required=True, help="run folder written by `vidfuse train`")
    p.add_argument("--index", required=True, help="index folder written by `vidfuse index` for that run")
    p.add_argument("--captions", default=None, help="caption file (default: the run's)")
    p.add_argument("--split", default="test", help="split whose captions query the index (default test)")
    p.add_argument("--splits", default=None, help="folder of split files (default: beside the captions)")
    p.add_argument("--features", default=None, help="features folder (default: the run's)")
    p.add_argument("--out", required=True, help="report folder: metrics.json, table.md, recall.png")
    p.add_argument("--k", type=positive_int, default=100, help="index search depth (DLLFA re-ranks these), default 100")
    p.add_argument("--chunk-size", type=positive_int, default=None,
                   help="videos read, encoded and scored at a time, kept on disk beside the report between passes "
                        "(default 50000; 5000 for DLLFA, whose full score keeps per-frame keys)")
    p.add_argument("--name", default=None, help="row name in the table (default: the run folder's name)")
    p.add_argument("--device", default="auto", type=str.lower,
                   help="where the FAISS index searches: auto (the GPU when FAISS has one, the default), cpu, gpu or cuda")
    p.add_argument("--ties", default="optimistic", choices=TIES,
                   help="rank of a tied target: optimistic (default: 1 + candidates scored strictly higher), "
                        "pessimistic, average (exactly tied candidates earn no credit), or official (as the "
                        "official LAFF evaluation: ties by sort order, MedR floored; to compare with papers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from index.benchmark import run_benchmark

    result = run_benchmark(args.run, args.index, args.out, args.captions, args.split, args.splits,
                           args.features, args.k, args.name, args.device, args.ties,
                           chunk_size=args.chunk_size)
    with open(os.path.join(args.out, "table.md")) as handle:
        print(handle.read())
    lost = result["via_index"]["recall_lost"]  # exact - via index: below 0 when a re-rank never sees a competitor
    print(f"through the index ({result['factory']}, k={result['via_index']['k']}): "
          + ", ".join(f"{key} {result['via_index']['t2v'][key]:.1f} "
                      f"({'lost' if lost[key] >= 0 else 'gained'} {abs(lost[key]):.1f})" for key in lost))
    print(f"report: {os.path.join(args.out, 'metrics.json')}, table.md, recall.png")
    return 0
