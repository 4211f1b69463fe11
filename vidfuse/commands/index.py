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
    p.add_argument("--factory", default="Flat", help="FAISS index_factory string: Flat, IVF4096,Flat, HNSW32, IVF1024,PQ32 ...")
    p.add_argument("--train-size", type=int, default=None, help="rows sampled to train IVF/PQ (default: 256 per centroid)")
    p.add_argument("--nprobe", type=int, default=None, help="IVF cells visited per query")
    add_device_arg(p, what="where FAISS builds the index (cuda needs faiss-gpu): ")
    p.add_argument("--add", action="store_true", help="add the videos missing from an existing index instead of rebuilding")
    p.set_defaults(func=run)


def faiss_device(device: str) -> str:
    """``--device`` as faiss_index names it (auto, cpu, gpu: every GPU)."""
    return "gpu" if device.startswith("cuda") else device


def run(args: argparse.Namespace) -> int:
    from index.run_index import build_index

    index, added = build_index(
        args.run, args.out, args.features, args.split, args.captions, args.splits,
        args.factory, faiss_device(args.device), args.train_size, args.nprobe, args.add,
    )
    print(f"index: {added} videos added, {len(index)} in {args.out} ({index.meta['factory']}, {index.meta['dim']}-d, {index.device})")
    return 0
