"""`vidfuse serve` under load: latency and queries/s over HTTP on localhost, beside the same
queries through `vidfuse search` (one process per query), the in-process Searcher, and the
bare FAISS search.

The run is a tiny LAFF-ml head trained on the test suite's stage data (synthetic videos,
tiny random-init extractors); the index holds 10,000 synthetic videos (random unit vectors
at the head's index dim, 128) for a Flat and an IVF factory, with the run's meta so serve
and search accept it. Queries are the dataset's captions, k = 10, with the per-result
explanations the page shows (attention weights are absent here: the synthetic videos have
no features; the text side is still encoded by the head).

Clients are threads with one keep-alive HTTP connection each (1, 4, 16 at once), each
sending its share of ``--queries`` requests; latency = request to full response, per
request; queries/s = all requests / wall time. CPU time per query (the server process's,
from /proc; this process's for the in-process rows; the child's for `vidfuse search`) is
less sensitive than wall time to other load on a shared machine.

    python benchmarks/serve.py                     # ~10 min on 2 shared cores
    python benchmarks/serve.py --queries 200 --cli-queries 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlparse

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

N_VIDEOS = 10_000
FACTORIES = ("Flat", "IVF100,Flat")
NPROBE = 10
K = 10


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stats(latencies_s: list[float], wall_s: float) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps": len(ms) / wall_s if wall_s > 0 else float("nan"), "n": len(ms)}


def synthetic_index(run_dir: Path, out: Path, factory: str) -> Path:
    """10,000 random unit vectors at the run's index dim, with the run's meta."""
    from index.faiss_index import VideoIndex
    from index.run_index import Run

    run = Run.load(str(run_dir))
    folder = out / f"index-{factory.replace(',', '_')}"
    if (folder / "meta.json").is_file():
        return folder
    dim = run.head.cfg.dim
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N_VIDEOS, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = VideoIndex.build(emb, [f"synth{i:05d}" for i in range(N_VIDEOS)], factory=factory, metric="ip",
                             device="cpu", nprobe=NPROBE if factory.startswith("IVF") else None,
                             meta={"run": run.path, "head": run.config.head.type, "split": "synthetic",
                                   "features": run.sources.get("features"), "weights": run.fingerprint})
    index.save(str(folder))
    return folder


def start_server(run_dir: Path, index_dir: Path, cache: Path) -> tuple[subprocess.Popen, str]:
    from stage_fixtures import cli_subprocess

    proc = cli_subprocess("serve", "--run", run_dir, "--index", index_dir, "--port", 0, "--thumbnail-cache", cache,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("vidfuse serve: http://"):
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, line.split()[2]


def http_load(url: str, queries: list[str], clients: int) -> tuple[dict, list[float]]:
    parsed = urlparse(url)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(share: list[str]) -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=300)
        mine = []
        barrier.wait()
        for q in share:
            t0 = time.perf_counter()
            conn.request("GET", "/api/search?" + urlencode({"q": q, "k": K}))
            response = conn.getresponse()
            body = response.read()
            mine.append(time.perf_counter() - t0)
            if response.status != 200 or len(json.loads(body)["results"]) != K:
                raise RuntimeError(f"bad response {response.status}: {body[:200]!r}")
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(queries[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return _stats(latencies, time.perf_counter() - t0), latencies


def cli_per_query(run_dir: Path, index_dir: Path, queries: list[str]) -> dict:
    from stage_fixtures import cli_subprocess

    times = []
    cpu0 = _children_cpu()
    for q in queries:
        t0 = time.perf_counter()
        proc = cli_subprocess("search", "--run", run_dir, "--index", index_dir, "-k", K, q,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if proc.wait() != 0:
            raise SystemExit("vidfuse search failed")
        times.append(time.perf_counter() - t0)
    return {**_stats(times, sum(times)), "cpu_ms": (_children_cpu() - cpu0) / len(queries) * 1000}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def in_process(run_dir: Path, index_dir: Path, queries: list[str]) -> tuple[dict, dict]:
    """(Searcher.search: encode + FAISS, bare FAISS search of the encoded queries), one query at a time."""
    from fusion.encode import encode_texts
    from index.search import Searcher

    searcher = Searcher(str(run_dir), str(index_dir))
    for q in queries[:5]:
        searcher.search(q, K)  # warm-up
    times = []
    cpu0 = time.process_time()
    for q in queries:
        t0 = time.perf_counter()
        searcher.search(q, K)
        times.append(time.perf_counter() - t0)
    searcher_stats = {**_stats(times, sum(times)), "cpu_ms": (time.process_time() - cpu0) / len(queries) * 1000}
    encoded = encode_texts(searcher.run.head, searcher.queries.bank(queries))
    times = []
    cpu0 = time.process_time()
    for row in encoded:
        t0 = time.perf_counter()
        searcher.index.search_positions(row[None], K)
        times.append(time.perf_counter() - t0)
    bare = {**_stats(times, sum(times)), "cpu_ms": (time.process_time() - cpu0) / len(encoded) * 1000}
    return searcher_stats, bare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/vidfuse-bench-serve")
    parser.add_argument("--queries", type=int, default=400, help="HTTP requests per concurrency level")
    parser.add_argument("--cli-queries", type=int, default=5, help="`vidfuse search` processes")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # as the server's child process (one torch thread)
    from stage_fixtures import build_stage_data, trained_run

    work = Path(args.workdir)
    stage = build_stage_data(work / "stage")
    run = trained_run(stage, "tiny_laff_ml")
    texts = list(dict.fromkeys(text for _v, text in stage.captions_of("train")))
    queries = [texts[i % len(texts)] for i in range(args.queries)]
    print(f"load average before: {_loadavg()} ({os.cpu_count()} cores)")
    rows = []
    for factory in FACTORIES:
        index = synthetic_index(run, work, factory)
        proc, url = start_server(run, index, work / "thumbs")
        try:
            http_load(url, queries[:20], 1)  # warm-up
            for clients in (1, 4, 16):
                cpu0 = _cpu_seconds(proc.pid)
                stats, _ = http_load(url, queries, clients)
                stats["cpu_ms"] = (_cpu_seconds(proc.pid) - cpu0) / len(queries) * 1000
                rows.append((factory, f"HTTP, {clients} client{'s' if clients > 1 else ''}", stats))
                print(factory, clients, stats, f"load {_loadavg()}", flush=True)
        finally:
            proc.terminate()
            proc.wait()
        searcher, bare = in_process(run, index, queries[:200])
        rows.append((factory, "Searcher.search in process", searcher))
        rows.append((factory, "bare FAISS search", bare))
        rows.append((factory, "`vidfuse search`, 1 process/query", cli_per_query(run, index, queries[: args.cli_queries])))
    print(f"\nload average after: {_loadavg()}\n")
    print("| index (10k videos) | path | p50 ms | p99 ms | queries/s | CPU ms/query |")
    print("|:---|:---|---:|---:|---:|---:|")
    for factory, path, s in rows:
        cpu = f"{s['cpu_ms']:.3f}" if s["cpu_ms"] < 1 else f"{s['cpu_ms']:.1f}"
        p50 = f"{s['p50_ms']:.3f}" if s["p50_ms"] < 1 else f"{s['p50_ms']:.1f}"
        p99 = f"{s['p99_ms']:.3f}" if s["p99_ms"] < 1 else f"{s['p99_ms']:.1f}"
        qps = f"{s['qps']:.1f}" if s["qps"] >= 1 else f"{s['qps']:.3f}"
        print(f"| {factory} | {path} | {p50} | {p99} | {qps} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
