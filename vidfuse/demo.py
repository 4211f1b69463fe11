"""The whole chain on a synthetic dataset, with the embedded tiny configs.

synth -> extract (Beam) -> extract-text -> train (LAFF-ml, DLLFA, meanP) -> index -> benchmark.
Every stage resumes, so a rerun into the same work folder reuses what is done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console

log = logging.getLogger(__name__)

DEMO_HEADS = ("tiny_laff_ml", "tiny_dllfa", "tiny_meanp")
DEMO_EXTRACTORS = ("clip", "x3d")


@dataclass
class DemoSettings:
    workdir: Path = Path("vidfuse-demo")
    videos: int = 300
    seed: int = 0
    heads: tuple[str, ...] = DEMO_HEADS
    extract_config: str = "tiny"
    beam_args: list[str] = field(default_factory=list)
    progress: bool = True


def _stage(console: Console, number: int, total: int, title: str, work: Callable[[], str]) -> None:
    console.rule(f"[bold]{number}/{total} {title}")
    start = time.perf_counter()
    summary = work()
    console.print(f"{summary}  [dim]({time.perf_counter() - start:.1f} s)[/dim]")


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    """Runs every stage; returns the report folder (table.md, recall.png, metrics.json)."""
    from fusion.trainer import TrainConfig
    from index.benchmark import run_benchmark
    from index.run_index import build_index
    from pipeline.config import ExtractConfig
    from pipeline.extract_job import run_extraction
    from pipeline.text_job import run_text_extraction
    from pipeline.training_set import run_training
    from vidfuse.config import load_config
    from vidfuse.synth import generate_dataset

    console = console or Console()
    work = settings.workdir
    data_dir, features = work / "data", str(work / "features")
    runs, indexes, report = work / "runs", work / "indexes", work / "reports" / "demo"
    total = 4 + 2 * len(settings.heads)  # synth, extract, extract-text, train and index each head, results
    step = iter(range(1, total + 1))
    extract_cfg = load_config(ExtractConfig, settings.extract_config, kind="extract")
    dataset = None

    def synth() -> str:
        nonlocal dataset
        dataset = generate_dataset(data_dir, settings.videos, settings.seed, progress=settings.progress)
        return f"{len(dataset.video_ids)} videos in {dataset.videos_dir}"

    def extract() -> str:
        summary = run_extraction(str(dataset.videos_dir), features, extract_cfg, DEMO_EXTRACTORS,
                                 beam_args=settings.beam_args, progress=settings.progress)
        return f"extract: {summary.line()}"

    def extract_text() -> str:
        written = run_text_extraction(str(dataset.captions_txt), features, extract_cfg, progress=settings.progress)
        return "extract-text: " + ", ".join(f"text/{n} +{k}" for n, k in written.items())

    _stage(console, next(step), total, "synthetic dataset", synth)
    _stage(console, next(step), total, "extract video features (Beam)", extract)
    _stage(console, next(step), total, "extract caption features", extract_text)

    for head in settings.heads:
        def fit(head: str = head) -> str:
            cfg = load_config(TrainConfig, head, kind="train")
            result = run_training(cfg, features, str(dataset.captions_txt), str(runs / head),
                                  progress=settings.progress)
            return f"{head}: best epoch {result.best_epoch}, val {result.metric_name} {result.best_metric:.3f}"

        _stage(console, next(step), total, f"train {head}", fit)

    for head in settings.heads:
        def index_and_benchmark(head: str = head) -> str:
            build_index(str(runs / head), str(indexes / head), features, "test", str(dataset.captions_txt))
            result = run_benchmark(str(runs / head), str(indexes / head), str(report), name=head)
            t2v = result["exact"]["t2v"]
            return f"{head}: test t2v R@1 {t2v['R@1']:.1f}, R@5 {t2v['R@5']:.1f}, R@10 {t2v['R@10']:.1f}"

        _stage(console, next(step), total, f"index + benchmark {head}", index_and_benchmark)

    def chance() -> str:
        n = len(dataset.splits["test"])
        return f"chance level on the {n} test videos: R@1 {100 / n:.1f}, R@5 {min(100, 500 / n):.1f}, R@10 {min(100, 1000 / n):.1f}"

    _stage(console, next(step), total, "results", chance)
    print((report / "table.md").read_text())  # plain print: a Markdown table must not wrap
    print(f"report: {report / 'table.md'}, {report / 'recall.png'}, {report / 'metrics.json'}")  # whole, unwrapped
    return report

