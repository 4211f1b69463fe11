"""Shared by the extraction-stage tests: tiny config, tiny synthetic videos, reading a job's output."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import ExtractConfig
from pipeline.decode import open_video
from pipeline.features import load_feature_set
from pipeline.sampling import sample_indices
from pipeline.shards import TEMP_PREFIX, TEMP_SUFFIX
from vidfuse.config import load_config

EXTRACTORS = ("clip", "x3d", "ircsn")
# One worker inside the test process: no worker start-up, for tests not about parallelism.
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def tiny_config(*overrides: str) -> ExtractConfig:
    return load_config(ExtractConfig, "tiny", list(overrides), kind="extract")


def make_synth(out: Path, n: int, seed: int = 0):
    """``n`` synthetic videos of 64x48 px and 1-1.5 s (a few dozen frames each)."""
    from vidfuse.synth import generate_dataset

    return generate_dataset(out, n, seed, width=64, height=48, duration=(1.0, 1.5), progress=False)


@dataclass
class Rows:
    """One feature folder read back: per video id its vector, frame/clip matrix and indices."""

    dim: int
    features: dict[str, np.ndarray]
    frames: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]
    num_frames: dict[str, int]


def read_rows(folder: Path | str, fmt: str) -> Rows:
    fs = load_feature_set(str(folder), fmt)
    return Rows(
        dim=fs.dim,
        features={v: fs.get(v) for v in fs.ids},
        frames={v: fs.frames(v) for v in fs.ids},
        indices={v: fs.frame_indices(v) for v in fs.ids},
        num_frames={v: int(n) for v, n in zip(fs.ids, fs.num_frames)},
    )


def assert_same_rows(got: Rows, want: Rows, rtol: float = 1e-5, atol: float = 1e-6, exact: bool = False) -> None:
    """Same ids and values; ``exact`` for two copies of one computation (Parquet vs HDF5)."""
    assert got.dim == want.dim
    assert sorted(got.features) == sorted(want.features)
    for vid in want.features:
        for name in ("features", "frames"):
            a, b = getattr(got, name)[vid], getattr(want, name)[vid]
            assert a.shape == b.shape, (vid, name, a.shape, b.shape)
            if exact:
                assert np.array_equal(a, b), (vid, name)
            else:
                np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=f"{vid} {name}")
        assert np.array_equal(got.indices[vid], want.indices[vid]), vid
        assert got.num_frames[vid] == want.num_frames[vid], vid


def leftover_files(out: Path) -> list[str]:
    """Files a finished job must not leave: temp names, and shards lacking their other format."""
    bad = []
    for path in out.rglob("*"):
        if path.is_file() and (path.name.startswith(TEMP_PREFIX) or path.name.endswith(TEMP_SUFFIX)):
            bad.append(str(path))
    for folder in {p.parent for p in out.rglob("part-*")}:
        parquet = {p.stem for p in folder.glob("part-*.parquet")}
        h5 = {p.stem[1:] for p in folder.glob("_part-*.h5")}
        bad += [f"{folder}/{s} (one format only)" for s in parquet ^ h5]
    return sorted(bad)


def shard_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("part-*")}


def direct_features(extractor, path: Path | str, backend: str = "decord", fallback: str | None = "pyav"):
    """(video vector, unit matrix, indices) of one video with the bare library calls, no Beam."""
    with open_video(str(path), backend=backend, fallback=fallback) as reader:
        indices = sample_indices(extractor.config.sampling, reader.info.num_frames)
        frames = reader.get_frames(indices.ravel())
    units = extractor.embed(extractor.preprocess(frames))
    return extractor.pool(units), units, indices.ravel()


def cli_command(*args: str) -> list[str]:
    """``vidfuse ARGS`` as a subprocess command line running this interpreter."""
    return [sys.executable, "-m", "vidfuse.cli", *args]
