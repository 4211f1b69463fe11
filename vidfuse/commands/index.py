"""``vidfuse index --run RUN --out IDX``: fused video embeddings -> FAISS."""

from __future__ import annotations

import argparse

from vidfuse.commands.common import add_device_arg


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(
        name,
        help=help_text,
        description="Encode the videos of a split with a trained head and index them with FAISS.",
    )
    p.add_argument("--run", required=True, help="run folder written by `vidfuse train`")
    p.add_argument("--out", required=True, help="index folder (index.faiss, ids.parquet, meta.json)")
    p.add_argument("--features", default=None, help="features folder (default: the one the run trained on)")
    p.add_argument("--split", default="test", help="train, val, test, or all (every extracted video); default test")
    p.add_argument("--captions", default=None, help="caption file whose split files to use (default: the run's)")
    p.add_argument("--splits", default=None, help="folder of split files (default: beside the captions)")
    p.add_argument("--factory", default=None, help="FAISS index_factory string: Flat (the default), IVF4096,Flat, HNSW32, IVF1024,PQ32 ...")
    p.add_argument("--max-index-memory", default=None, metavar="SIZE",
                   help="instead of --factory: the most faithful index that fits SIZE (4G, 512M ...), its code the one of "
                        "that size that keeps the most neighbours of the training sample, its nprobe/efSearch tuned "
                        "against exact search; meta.json records the recalls measured")
    p.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the tuning aims for (default 0.95)")
    p.add_argument("--shards", type=int, default=1, help="write the index as N shards, searched together (default 1)")
    p.add_argument("--chunk-size", type=int, default=50_000, help="videos read, encoded and added at a time (default 50000)")
    p.add_argument("--train-size", type=int, default=None, help="rows sampled to train IVF/PQ (default: 256 per centroid)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    add_device_arg(p, what="where FAISS builds and searches (a GPU needs faiss with GPU support): ")
    p.add_argument("--add", action="store_true", help="add the videos missing from an existing index instead of rebuilding")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidfuse.errors import VidfuseError

    if args.factory and args.max_index_memory:
        raise VidfuseError("give --factory or --max-index-memory, not both")
    if not 0 < args.target_recall <= 1:
        raise VidfuseError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    if args.shards < 1 or args.chunk_size < 1:
        raise VidfuseError("--shards and --chunk-size must be >= 1")
    budget = None
    if args.max_index_memory:
        from index.autoindex import parse_memory

        budget = parse_memory(args.max_index_memory)
    from index.run_index import build_index

    index, added = build_index(
        args.run, args.out, args.features, args.split, args.captions, args.splits,
        args.factory or ("Flat" if budget is None else None), args.device, args.train_size, args.nprobe, args.add,
        max_index_memory=budget, target_recall=args.target_recall, shards=args.shards, chunk_size=args.chunk_size,
    )
    shards = f", {len(index.meta['shards'])} shards" if index.meta.get("shards") else ""
    print(f"index: {added} videos added, {len(index)} in {args.out} ({index.meta['factory']}, {index.meta['dim']}-d, "
          f"{index.device}{shards})")
    tuning = index.meta.get("tuning") or {}
    if tuning.get("code_trial"):
        print("codes of its size tried on the training sample (recall@10): " + ", ".join(
            f"{t['factory']} {t['recall']:.3f}" for t in tuning["code_trial"]))
    if "recall" in tuning:
        print(f"tuned: {tuning['param'] or 'nothing to tune'}={tuning['value']}, recall@10 {tuning['recall']:.3f} "
              f"vs exact search on {tuning['queries']} sampled videos, {tuning['queries_per_s']:.0f} queries/s")
    return 0
