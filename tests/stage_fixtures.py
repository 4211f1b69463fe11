"""One small synthetic dataset with tiny features, built once per test session, for the
stage tests (train, index, benchmark, search): what a user has after `vidfuse synth`,
`vidfuse extract --extractors clip,x3d` and `vidfuse extract-text --encoders clip,bow`.

Why one shared build: extraction is the slow stage (tens of seconds for 80 videos on two
cores) and none of these tests changes the features, so every test reads the same folder;
tests that need damaged or different features build them beside it (BigFile imports,
copies). Runs trained here are shared too: tests must not write into them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

from extract_helpers import IN_PROCESS, tiny_config

N_VIDEOS = 80  # 56 train / 12 val / 12 test videos, 5 captions each
SEED = 0
VIDEO_EXTRACTORS = ("clip", "x3d")
TEXT_ENCODERS = ("clip", "bow")
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class StageData:
    root: Path
    dataset: object  # vidfuse.synth.SynthDataset
    features: Path

    @property
    def captions(self) -> Path:
        return self.dataset.captions_txt

    def split(self, name: str) -> list[str]:
        return list(self.dataset.splits[name])

    def captions_of(self, split: str) -> list[tuple[str, str]]:
        """(video_id, caption text) of every caption of a split's videos."""
        return [(v, c) for v in self.split(split) for c in self.dataset.captions[v]]


_BUILT: dict[str, object] = {}  # memo shared by every test module of the session


def build_stage_data(root: Path) -> StageData:
    """synth -> extract (clip, x3d; Beam in-process) -> extract-text (clip, bow), once per root."""
    key = str(root)
    if key not in _BUILT:
        from pipeline.extract_job import run_extraction
        from pipeline.text_job import run_text_extraction
        from vidfuse.synth import generate_dataset

        dataset = generate_dataset(root / "data", N_VIDEOS, SEED, width=64, height=48, duration=(1.0, 1.5),
                                   progress=False)
        features = root / "features"
        config = tiny_config()
        summary = run_extraction(str(dataset.videos_dir), str(features), config, extractors=list(VIDEO_EXTRACTORS),
                                 beam_args=IN_PROCESS, progress=False)
        assert summary.failed == 0 and summary.done + summary.skipped == N_VIDEOS, summary.line()
        run_text_extraction(str(dataset.captions_txt), str(features), config, encoders=list(TEXT_ENCODERS),
                            progress=False)
        _BUILT[key] = StageData(root, dataset, features)
    return _BUILT[key]


@pytest.fixture(scope="session")
def stage_data(tmp_path_factory) -> StageData:
    return build_stage_data(tmp_path_factory.getbasetemp() / "stage_data")


def trained_run(stage: StageData, config: str, *overrides: str) -> Path:
    """A run of ``config`` (+ ``--set`` overrides) on the stage data, trained once per session."""
    key = (str(stage.root), config, overrides)
    if key not in _BUILT:
        from fusion.trainer import TrainConfig
        from pipeline.training_set import run_training
        from vidfuse.config import load_config

        out = stage.root / "runs" / "-".join([config, *(o.replace("/", "_") for o in overrides)])
        cfg = load_config(TrainConfig, config, list(overrides), kind="train")
        run_training(cfg, str(stage.features), str(stage.captions), str(out), resume=False, progress=False)
        _BUILT[key] = out
    return _BUILT[key]


def built_index(stage: StageData, run: Path, split: str = "test", factory: str = "Flat") -> Path:
    """The FAISS index of ``run`` over a split, built once per session (read-only for tests)."""
    key = (str(run), "index", split, factory)
    if key not in _BUILT:
        from index.run_index import build_index

        out = run.parent.parent / "indexes" / f"{run.name}-{split}-{factory.replace(',', '_')}"
        build_index(str(run), str(out), split=split, factory=factory, device="cpu")
        _BUILT[key] = out
    return _BUILT[key]


def features_with(stage: StageData, out: Path, replace: dict[str, tuple[Sequence[str], np.ndarray]]) -> Path:
    """A features folder like the stage's, except feature sets given as (ids, matrix), imported
    from a LAFF BigFile as a user would bring their own features."""
    from pipeline.bigfile import import_bigfile, write_bigfile

    out.mkdir(parents=True)
    for entry in stage.features.iterdir():
        if entry.name in replace or entry.name.startswith("."):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, out / entry.name)
    for name, (ids, matrix) in replace.items():
        big = out.parent / f"{out.name}-{name}-bigfile"
        write_bigfile(str(big), list(ids), np.asarray(matrix, dtype=np.float32))
        import_bigfile(str(big), str(out / name), name)
    return out


def cli(*args: str) -> int:
    """``vidfuse ARGS`` in this process (exit code; output goes to capsys)."""
    from vidfuse.cli import main

    return main([str(a) for a in args])


def cli_subprocess(*args: str, **popen) -> subprocess.Popen:
    """``vidfuse ARGS`` in a child process with one torch thread (as the test process runs)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    code = "import sys; from vidfuse.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, cwd=str(REPO), **popen)
