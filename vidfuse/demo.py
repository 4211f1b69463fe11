"""The whole chain on a synthetic dataset, with the embedded tiny configs.

synth (square 96 x 96 frames, so the tiny extractors' 64 px centre crop sees all of every
frame) -> fine-tune the extractors (clip-ft, then x3d-ft against clip-ft's text tower) ->
extract (Beam) with the fine-tuned weights -> extract-text -> train the heads (LAFF,
LAFF-ml, DLLFA, meanP, one single-feature head per video feature) -> index -> benchmark,
ending with one table on the held-out test videos, chance levels in both directions, and
t2v recall on the captions whose meaning depends on event order or direction.

Ranks count ties as the average of the optimistic and pessimistic rank, so a model that
scores a video and its time-reversed twin exactly alike earns no R@1 for either.
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

# run name -> bundled training config
DEMO_HEADS: dict[str, str] = {
    "laff": "tiny_laff",
    "laff_ml": "tiny_laff_ml",
    "dllfa": "tiny_dllfa",
    "meanp": "tiny_meanp",
    "single_clip": "tiny_single_clip",
    "single_x3d": "tiny_single_x3d",
}
DEMO_EXTRACTORS = ("clip", "x3d")
# extractor -> (fine-tuning config, overrides); later ones start their text tower from clip-ft's CLIP.
# Frames are decoded once per video and kept in memory (same frames, no decode per epoch).
DEMO_FINETUNE: dict[str, tuple[str, tuple[str, ...]]] = {
    "clip": ("tiny_clip_ft", ("cache_frames=true",)),
    "x3d": ("tiny_x3d_ft", ()),
}
DEMO_TIES = "average"
# Square frames: the tiny extractors resize the shorter side to 64 px and centre-crop 64 x 64,
# so a 4:3 frame would lose a quarter of its width (where shapes enter and leave) to every model.
DEMO_FRAME_SIZE = (96, 96)
ORDER_SUBSET = "order-dependent"


@dataclass
class DemoSettings:
    workdir: Path = Path("vidfuse-demo")
    videos: int = 300
    seed: int = 0
    frame_size: tuple[int, int] = DEMO_FRAME_SIZE  # (width, height) of the synthetic videos
    heads: dict[str, str] = field(default_factory=lambda: dict(DEMO_HEADS))
    finetune: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=lambda: dict(DEMO_FINETUNE))
    extract_config: str = "tiny"
    beam_args: list[str] = field(default_factory=list)
    progress: bool = True


def _stage(console: Console, number: int, total: int, title: str, work: Callable[[], str]) -> None:
    console.rule(f"[bold]{number}/{total} {title}")
    start = time.perf_counter()
    summary = work()
    console.print(f"{summary}  [dim]({time.perf_counter() - start:.1f} s)[/dim]")


def summary_table(results: dict[str, dict]) -> str:
    """The demo's table: each head's test metrics, chance, and recall on order-dependent captions."""
    from index.report import markdown_table

    first = next(iter(results.values()))
    n_videos, n_captions = first["num_videos"], first["num_captions"]
    rows = [{"model": name, "t2v": r["exact"]["t2v"], "v2t": r["exact"]["v2t"]} for name, r in results.items()]
    rows.append({"model": "chance", **first["chance"]})  # run_benchmark's, from the split's own captions
    table = markdown_table(rows, title=f"test split, {n_videos} videos, {n_captions} captions "
                                       f"({first['ties']} ties: exactly tied videos earn no credit)")
    order = first.get("subsets", {}).get(ORDER_SUBSET)
    if order:
        lines = ["", f"### t2v on the {order['captions']} {ORDER_SUBSET} captions (the test gallery holds their "
                     "video's time-reversed twin); last column: all captions with optimistic ties", "",
                 "| Model | R@1 | R@5 | R@10 | all, optimistic R@1 |", "|:---|---:|---:|---:|---:|"]
        for name, r in results.items():
            t2v = r["subsets"][ORDER_SUBSET]["t2v"]
            optimistic = r.get("optimistic_t2v", r["exact"]["t2v"])["R@1"]
            lines.append(f"| {name} | " + " | ".join(f"{t2v[k]:.1f}" for k in ("R@1", "R@5", "R@10"))
                         + f" | {optimistic:.1f} |")
        table += "\n".join(lines) + "\n"
    return table


def run_demo(settings: DemoSettings, console: Console | None = None) -> Path:
    """Runs every stage; returns the report folder (table.md, recall.png, metrics.json, summary.md)."""
    from fusion.finetune import FinetuneConfig, checkpoint_name, extract_config_name, run_finetune
    from fusion.trainer import TrainConfig
    from index.benchmark import run_benchmark
    from index.report import write_metrics_json, write_text
    from index.run_index import build_index
    from pipeline.config import ExtractConfig
    from pipeline.extract_job import run_extraction
    from pipeline.text_job import run_text_extraction
    from pipeline.training_set import run_training
    from vidfuse.config import load_config
    from vidfuse.synth import generate_dataset, order_dependent_captions

    console = console or Console()
    work = settings.workdir
    data_dir, features = work / "data", str(work / "features")
    runs, indexes, report = work / "runs", work / "indexes", work / "reports" / "demo"
    total = 4 + len(settings.finetune) + 2 * len(settings.heads)  # synth, fine-tune each extractor, extract,
    # extract-text, train and index each head, results
    step = iter(range(1, total + 1))
    extract_cfg = load_config(ExtractConfig, settings.extract_config, kind="extract")
    dataset = None

    def synth() -> str:
        nonlocal dataset
        width, height = settings.frame_size
        dataset = generate_dataset(data_dir, settings.videos, settings.seed, width=width, height=height,
                                   progress=settings.progress)
        return f"{len(dataset.video_ids)} videos of {width}x{height} in {dataset.videos_dir}"

    _stage(console, next(step), total, "synthetic dataset", synth)

    for extractor, (config, extra) in settings.finetune.items():
        def fit_extractor(extractor: str = extractor, config: str = config, extra=extra) -> str:
            overrides = [*extra, f"seed={settings.seed}"]
            clip_ft = runs / "clip_ft" / checkpoint_name("clip")
            if extractor != "clip" and clip_ft.is_file():
                overrides.append(f"clip.pretrained={clip_ft.resolve()}")  # captions scored by clip-ft's text tower
            cfg = load_config(FinetuneConfig, config, overrides, kind="train")
            result = run_finetune(cfg, str(dataset.videos_dir), str(dataset.captions_txt),
                                  str(runs / f"{extractor}_ft"), progress=settings.progress)
            tuned = load_config(ExtractConfig, result.run_dir / extract_config_name(extractor), kind="extract")
            extract_cfg.extractors[extractor] = tuned.extractors[extractor]
            before = result.baseline_val.get("t2v", {}).get("R@1", float("nan"))
            return (f"{extractor}-ft: best epoch {result.best_epoch}, val t2v R@1 {result.best_val['t2v']['R@1']:.1f} "
                    f"(before {before:.1f}) -> {result.checkpoint}")

        _stage(console, next(step), total, f"fine-tune {extractor}", fit_extractor)

    def extract() -> str:
        summary = run_extraction(str(dataset.videos_dir), features, extract_cfg, DEMO_EXTRACTORS,
                                 beam_args=settings.beam_args, progress=settings.progress)
        return f"extract: {summary.line()}"

    def extract_text() -> str:
        written = run_text_extraction(str(dataset.captions_txt), features, extract_cfg, progress=settings.progress)
        return "extract-text: " + ", ".join(f"text/{n} +{k}" for n, k in written.items())

    _stage(console, next(step), total, "extract video features (Beam)", extract)
    _stage(console, next(step), total, "extract caption features", extract_text)

    for name, config in settings.heads.items():
        def fit(name: str = name, config: str = config) -> str:
            cfg = load_config(TrainConfig, config, [f"seed={settings.seed}"], kind="train")
            result = run_training(cfg, features, str(dataset.captions_txt), str(runs / name),
                                  progress=settings.progress)
            return f"{name}: best epoch {result.best_epoch}, val {result.metric_name} {result.best_metric:.3f}"

        _stage(console, next(step), total, f"train {name}", fit)

    subsets = {ORDER_SUBSET: order_dependent_captions(dataset, "test")}
    results: dict[str, dict] = {}
    for name in settings.heads:
        def index_and_benchmark(name: str = name) -> str:
            build_index(str(runs / name), str(indexes / name), features, "test", str(dataset.captions_txt))
            results[name] = run_benchmark(str(runs / name), str(indexes / name), str(report), name=name,
                                          ties=DEMO_TIES, subsets=subsets)
            t2v = results[name]["exact"]["t2v"]
            return f"{name}: test t2v R@1 {t2v['R@1']:.1f}, R@5 {t2v['R@5']:.1f}, R@10 {t2v['R@10']:.1f}"

        _stage(console, next(step), total, f"index + benchmark {name}", index_and_benchmark)

    table = summary_table(results)
    _stage(console, next(step), total, "results", lambda: f"written to {report / 'summary.md'}")
    write_text(str(report / "summary.md"), table)
    write_metrics_json(str(report / "summary.json"), results)
    print(table)  # plain print: a Markdown table must not wrap
    print(f"report: {report / 'summary.md'}, {report / 'recall.png'}, {report / 'metrics.json'}")  # whole, unwrapped
    return report
