"""Peak memory of `vidfuse benchmark` at N captions x M videos: videos streamed in chunks vs one chunk.

A collection is written as a user brings their own features (BigFiles imported into feature
folders): one 512-d video feature for M test videos (plus 2,500 train/val videos), one 512-d
caption feature, N test captions spread over the test videos. A LAFF head with one head of
``--dim`` (its index embedding is ``--dim``-d) is trained for one epoch on the train videos,
an IVF-SQ8 index of the test videos is built (small, so the benchmark's own memory shows),
then the benchmark runs in a fresh child process for each video chunk size: the default
(50,000 videos at a time, kept on disk beside the report) and M (one chunk: every video
read and encoded at once, all M x dim embeddings in memory). Each child reports
its peak RSS (VmHWM), wall and CPU time, the load average, and its metrics, which must agree.

    nice -n 10 python benchmarks/benchmark_stage.py --captions 10000 --videos 200000 --dim 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]  # benchmarks/index.py shadows `index`
sys.path.insert(0, os.path.dirname(_HERE))

import numpy as np  # noqa: E402

GiB = 1 << 30
TRAIN, VAL = 2000, 500
FEATURE_DIM = 512


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_collection(root: str, n_captions: int, n_videos: int, dim: int, factory: str, seed: int = 0) -> dict:
    """Features, captions, splits, a trained run and its index of the test videos, under ``root``."""
    from fusion.trainer import TrainConfig
    from index.run_index import build_index
    from pipeline.bigfile import import_bigfile, write_bigfile
    from pipeline.training_set import run_training
    from vidfuse.config import load_config

    rng = np.random.default_rng(seed)
    videos = [f"v{i}" for i in range(TRAIN + VAL + n_videos)]
    test = videos[TRAIN + VAL:]
    topics = rng.standard_normal((len(videos), 32), dtype=np.float32)
    write_bigfile(os.path.join(root, "bigfile", "clip"), videos,
                  topics @ rng.standard_normal((32, FEATURE_DIM), dtype=np.float32))
    captions = [(v, k) for v in videos[:TRAIN + VAL] for k in range(2)]
    captions += [(test[j % n_videos], j // n_videos) for j in range(n_captions)]
    owner = np.array([int(v[1:]) for v, _ in captions])
    text = topics[owner] @ rng.standard_normal((32, FEATURE_DIM), dtype=np.float32)
    text += 3.0 * rng.standard_normal(text.shape, dtype=np.float32)
    ids = [f"{v}#{k}" for v, k in captions]
    write_bigfile(os.path.join(root, "bigfile", "text_clip"), ids, text)
    del text, topics
    with open(os.path.join(root, "captions.txt"), "w") as f:
        f.writelines(f"{c} a caption of {c.split('#')[0]}\n" for c in ids)
    for split, members in {"train": videos[:TRAIN], "val": videos[TRAIN:TRAIN + VAL], "test": test}.items():
        with open(os.path.join(root, f"{split}.txt"), "w") as f:
            f.writelines(v + "\n" for v in members)
    features = os.path.join(root, "features")
    import_bigfile(os.path.join(root, "bigfile", "clip"), os.path.join(features, "clip"), "clip")
    import_bigfile(os.path.join(root, "bigfile", "text_clip"), os.path.join(features, "text", "clip"), "text/clip",
                   kind="text")
    shutil.rmtree(os.path.join(root, "bigfile"))
    cfg = load_config(TrainConfig, "tiny_laff", [
        "head.laff.video_features=[clip]", "head.laff.text_features=[clip]", "head.laff.video_passthrough=[]",
        "head.laff.text_passthrough=[]", f"head.laff.dim={dim}", "epochs=1", "early_stop=0", "device=cpu",
    ], kind="train")
    run = os.path.join(root, "run")
    run_training(cfg, features, os.path.join(root, "captions.txt"), run, progress=False)
    index = os.path.join(root, "index")
    build_index(run, index, split="test", factory=factory, device="cpu")
    return {"run": run, "index": index}


def benchmark_child(run: str, index: str, out: str, chunk: int) -> dict:
    from index.benchmark import run_benchmark

    rss0 = _peak_rss()
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = run_benchmark(run, index, out, device="cpu", chunk_size=chunk)
    return {"chunk": chunk, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0,
            "peak_rss": _peak_rss(), "rss_before": rss0, "load": os.getloadavg(),
            "num_captions": result["num_captions"], "num_videos": result["num_videos"],
            "exact_t2v": result["exact"]["t2v"], "exact_v2t": result["exact"]["v2t"], "via_index": result["via_index"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=10_000)
    ap.add_argument("--videos", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024, help="the head's common space = index embedding dims")
    ap.add_argument("--factory", default="IVF256,SQ8")
    ap.add_argument("--chunks", default="50000,0", help="video chunk sizes to compare; 0 = all videos in one chunk")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_child", dest="child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(benchmark_child(*json.loads(args.child))))
        return 0
    root = args.workdir or tempfile.mkdtemp(prefix="vidfuse-benchmark-stage-")
    try:
        t0 = time.perf_counter()
        made = build_collection(root, args.captions, args.videos, args.dim, args.factory)
        print(f"collection: {args.captions:,} captions x {args.videos:,} test videos, {FEATURE_DIM}-d features, "
              f"LAFF dim {args.dim}, index {args.factory}: built in {time.perf_counter() - t0:.0f} s", flush=True)
        results = []
        for chunk in (int(c) for c in args.chunks.split(",")):
            chunk = chunk or args.videos
            cmd = [sys.executable, os.path.abspath(__file__), "--_child",
                   json.dumps([made["run"], made["index"], os.path.join(root, f"report-{chunk}"), chunk])]
            out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(r)
            held = args.videos * args.dim * 4
            print(f"  videos {chunk:,} at a time: peak RSS {r['peak_rss'] / GiB:.2f} GiB (interpreter and imports "
                  f"{r['rss_before'] / GiB:.2f}; all M x dim index embeddings would be {held / GiB:.2f}), "
                  f"{r['wall_s']:.0f} s wall, {r['cpu_s']:.0f} CPU s, load avg {r['load'][0]:.1f}; "
                  f"t2v R@1/5/10 {r['exact_t2v']['R@1']:.2f}/{r['exact_t2v']['R@5']:.2f}/"
                  f"{r['exact_t2v']['R@10']:.2f}, v2t R@1 {r['exact_v2t']['R@1']:.2f}", flush=True)
        if len(results) > 1:
            same = all(np.allclose([r[d][k] for r in results], results[0][d][k], atol=1e-6)
                       for d in ("exact_t2v", "exact_v2t") for k in ("R@1", "R@5", "R@10", "MeanR", "mAP"))
            print(f"  metrics agree across chunk sizes: {same}; peak RSS ratio (one chunk / streamed): "
                  f"{results[-1]['peak_rss'] / results[0]['peak_rss']:.2f}")
        print(json.dumps(results))
    finally:
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
