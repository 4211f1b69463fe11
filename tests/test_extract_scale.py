"""The extraction job as a distributed runner runs it: retried bundles, a launcher whose cost does not
grow with the corpus, one model per worker process.

* Retries: every distributed runner retries failed bundles (and may run one twice). The sink's
  commit for one group of rows, run twice (and with its rows in another order), leaves the
  same shard files with the same rows: no duplicate id, no refused folder.
* Launcher cost: preparing a job over 10k or 100k already-extracted ids builds the same graph
  (pickled size) and peaks at the same memory: the done set is read by the workers.
* Model sharing: N threads of one worker process set up N RunInference DoFns and build one
  model per extractor.
"""

from __future__ import annotations

import gc
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import video_factory as vf
from extract_helpers import IN_PROCESS, assert_same_rows, make_synth, read_rows, shard_files, tiny_config


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"), 4, seed=2)


# ------------------------------------------------------------------ retries
def _rows(ids, dim=8, seed=0):
    from pipeline.shards import FeatureRow

    rng = np.random.default_rng(seed)
    return [FeatureRow(video_id=v, feature=rng.standard_normal(dim).astype(np.float32), num_frames=3,
                       frame_indices=np.arange(3)) for v in ids]


def test_a_group_committed_twice_leaves_one_copy_of_its_rows(tmp_path):
    """What a retried (or speculatively duplicated) write bundle does to the folder."""
    from pipeline.shard_sink import _WriteGroupFn
    from pipeline.shards import existing_ids, list_shards, open_shard

    ids = [f"v{k:03d}" for k in range(10)]
    rows = _rows(ids)
    write = _WriteGroupFn("clip", str(tmp_path), ["parquet", "hdf5"], "hash0", shard_size=4)
    first = sorted(write.process((3, rows)))
    files = sorted(p.name for p in tmp_path.iterdir())
    # the retry sees the same group, its rows maybe in another order
    second = sorted(write.process((3, list(reversed(rows)))))
    assert first == second and len(first) == 3 * 2  # [4, 4, 2] rows, two formats each
    assert sorted(p.name for p in tmp_path.iterdir()) == files  # no new file, no temp file left
    assert existing_ids(str(tmp_path), ["parquet", "hdf5"]) == set(ids)  # no id in two shards
    sizes = []
    for path in list_shards(str(tmp_path), "parquet", ["parquet", "hdf5"]):
        with open_shard(path) as shard:
            sizes.append(shard.num_rows)
            got = dict(zip(shard.ids(), shard.read_features(8)))
        for row in rows:
            if row.video_id in got:
                assert np.array_equal(got[row.video_id], row.feature)
    assert sorted(sizes) == [2, 4, 4]


def test_shard_names_depend_only_on_what_the_shard_holds():
    from pipeline.shard_sink import group_count, shard_name, stable_bucket

    assert shard_name("clip", ["b", "a"]) == shard_name("clip", ["a", "b"])
    assert shard_name("clip", ["a", "b"]) != shard_name("x3d", ["a", "b"])
    assert shard_name("clip", ["a", "b"]) != shard_name("clip", ["a", "c"])
    assert shard_name("clip", ["a"]).startswith("part-") and len(shard_name("clip", ["a"])) == 21
    assert [stable_bucket("video7", 13)] * 2 == [stable_bucket("video7", 13), stable_bucket("video7", 13)]
    assert group_count(5, 16) == 1 and group_count(16 * 16 + 1, 16) == 2


def test_a_job_whose_write_stage_runs_twice_gives_the_rows_of_one(synth, tmp_path, monkeypatch):
    """Each group is written twice in the job (as a retried bundle would): same files, same rows."""
    from pipeline import shard_sink
    from pipeline.extract_job import run_extraction

    once = tmp_path / "once"
    run_extraction(str(synth.videos_dir), str(once), tiny_config("output.shard_size=3"), extractors=["clip"],
                   beam_args=IN_PROCESS, progress=False)
    real = shard_sink._WriteGroupFn.process

    def twice(self, element):
        list(real(self, element))  # the first attempt commits, then "fails" after its side effects
        yield from real(self, (element[0], list(reversed(list(element[1])))))

    monkeypatch.setattr(shard_sink._WriteGroupFn, "process", twice)
    out = tmp_path / "twice"
    summary = run_extraction(str(synth.videos_dir), str(out), tiny_config("output.shard_size=3"),
                             extractors=["clip"], beam_args=IN_PROCESS, progress=False)
    assert summary.done == len(synth.video_ids) and summary.failed == 0
    assert shard_files(out) == shard_files(once)  # names are the content's: the same files
    for fmt in ("parquet", "hdf5"):
        assert_same_rows(read_rows(out / "clip", fmt), read_rows(once / "clip", fmt))


# ------------------------------------------------------------------ launcher cost
def _folder_with_done_ids(tmp_path: Path, videos: Path, count: int) -> Path:
    """An output folder whose clip shards hold ``count`` fake ids (written under its manifest)."""
    from pipeline.extract_job import prepare_extraction
    from pipeline.shards import FeatureRow, write_shard

    out = tmp_path / f"done{count}"
    job = prepare_extraction(str(videos), str(out), tiny_config(), ["clip"], ["parquet"], IN_PROCESS, "cpu")
    manifest = job.manifests["clip"]
    per_shard = 10_000
    for start in range(0, count, per_shard):
        ids = [f"old/video{k:07d}" for k in range(start, min(count, start + per_shard))]
        vector, frames = np.zeros(manifest.dim, np.float32), np.zeros((1, manifest.dim), np.float32)
        rows = [FeatureRow(video_id=v, feature=vector, frames=frames, num_frames=1) for v in ids]
        write_shard(str(out / "clip"), f"part-{start:016x}", rows, ["parquet"], manifest.hash())
    return out


def _launcher_cost(videos: Path, out: Path) -> tuple[int, int]:
    """(serialised graph bytes, peak bytes allocated) of everything the launcher does before the run."""
    from pipeline.extract_job import prepare_extraction

    gc.collect()
    tracemalloc.start()
    job = prepare_extraction(str(videos), str(out), tiny_config(), ["clip"], ["parquet"], IN_PROCESS, "cpu")
    graph = job.pipeline.to_runner_api().SerializeToString()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return len(graph), peak


def test_the_launcher_cost_does_not_grow_with_the_done_set(tmp_path):
    videos = tmp_path / "videos"
    vf.write_video(videos / "new.mp4", 10)
    small = _folder_with_done_ids(tmp_path, videos, 10_000)
    large = _folder_with_done_ids(tmp_path, videos, 100_000)
    from pipeline.extract_job import prepare_extraction

    prepare_extraction(str(videos), str(small), tiny_config(), ["clip"], ["parquet"], IN_PROCESS, "cpu")  # imports
    graph_small, peak_small = _launcher_cost(videos, small)
    graph_large, peak_large = _launcher_cost(videos, large)
    # 90k more ids: a set of them alone is ~8 MB, pickled into the graph ~5 MB
    assert abs(graph_large - graph_small) < 256, (graph_small, graph_large)
    assert peak_large < peak_small + (1 << 20), (peak_small, peak_large)


def test_resume_over_a_done_set_the_workers_read(tmp_path, monkeypatch):
    """The workers' anti-join skips exactly the ids the shards hold (here all but one video); the
    launcher builds no model (one build: the worker's)."""
    from extractors import registry
    from pipeline.extract_job import run_extraction

    videos = tmp_path / "videos"
    vf.write_video(videos / "new.mp4", 10)
    vf.write_video(videos / "old" / "video0000003.mp4", 10)  # its id is among the done ones
    out = _folder_with_done_ids(tmp_path, videos, 20)
    builds = []
    real = registry.build_extractor
    monkeypatch.setattr(registry, "build_extractor", lambda name, *a, **k: builds.append(name) or real(name, *a, **k))
    summary = run_extraction(str(videos), str(out), tiny_config(), extractors=["clip"], formats=["parquet"],
                             beam_args=IN_PROCESS, progress=False)
    assert (summary.total, summary.done, summary.skipped) == (2, 1, 1)
    assert len(read_rows(out / "clip", "parquet").features) == 21
    assert builds == ["clip"]


def test_the_launcher_describes_extractors_as_the_built_ones_do():
    from extractors.registry import build_extractor, describe_extractor, extractor_class

    config = tiny_config()
    for name in ("clip", "x3d", "ircsn"):
        settings, described = describe_extractor(name, config.extractors[name])
        extractor = build_extractor(name, config.extractors[name], device="cpu")
        built = extractor.describe()
        assert described == {key: built[key] for key in described}, name
        # the job resizes right after decoding with the transform the model's preprocessing uses
        assert extractor_class(name).frame_transform_for(settings) == extractor.transform, name


# ------------------------------------------------------------------ one model per worker process
def test_threads_of_one_worker_process_build_one_model_per_extractor(monkeypatch):
    from apache_beam.internal import pickler
    from apache_beam.ml.inference.base import _RunInferenceDoFn

    from extractors import registry
    from pipeline.model_handlers import VideoModelHandler

    builds: dict[str, int] = {}
    real = registry.build_extractor

    def counting(name, config=None, device="auto"):
        builds[name] = builds.get(name, 0) + 1
        return real(name, config, device)

    monkeypatch.setattr(registry, "build_extractor", counting)
    config = tiny_config()
    threads, ready = 4, threading.Barrier(4 * 2)
    payloads = {
        name: pickler.dumps(_RunInferenceDoFn(
            VideoModelHandler(name, dict(config.extractors[name]), "cpu", max_units=8), time, "test"))
        for name in ("clip", "x3d")
    }
    errors = []

    def worker(payload):
        try:
            fn = pickler.loads(payload)  # each thread's own DoFn instance, as the runner makes them
            ready.wait(timeout=60)
            fn.setup()
        except Exception as exc:  # surfaced below
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(p,)) for p in payloads.values() for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert not errors, errors
    assert builds == {"clip": 1, "x3d": 1}


# ------------------------------------------------------------------ precision
def test_bf16_is_recorded_in_the_manifest_and_a_fp32_folder_refuses_it(synth, tmp_path, capsys):
    """The CPU twin of the GPU's mixed precision: bf16 autocast gives features near fp32's, the
    manifest says bf16, and resuming an fp32 folder in bf16 is refused naming the key."""
    from pipeline.extract_job import run_extraction
    from pipeline.manifest import read_manifest
    from vidfuse.cli import main

    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    for out, precision in ((fp32, "fp32"), (bf16, "bf16")):
        run_extraction(str(synth.videos_dir), str(out), tiny_config(f"inference.precision={precision}"),
                       extractors=["clip"], beam_args=IN_PROCESS, progress=False)
    assert read_manifest(str(fp32 / "clip")).extra == {}
    assert read_manifest(str(bf16 / "clip")).extra == {"precision": "bf16"}
    a, b = read_rows(fp32 / "clip", "parquet"), read_rows(bf16 / "clip", "parquet")
    for vid, vector in a.features.items():
        assert not np.array_equal(b.features[vid], vector)  # bf16 really ran
        np.testing.assert_allclose(b.features[vid], vector, atol=0.05)
    files = shard_files(fp32)
    args = ["extract", str(synth.videos_dir), "--out", str(fp32), "--config", "tiny", "--extractors", "clip",
            "--no-progress", "--set", "inference.precision=bf16", *IN_PROCESS]
    assert main(args) == 2
    assert "extra.precision" in capsys.readouterr().err
    assert shard_files(fp32) == files


# ------------------------------------------------------------------ decoder choice
def test_auto_decoder_is_torchcodec_where_it_loads_else_pyav_with_one_line(monkeypatch, caplog):
    from pipeline import decode, decode_auto

    for loads, listed, want in ((None, True, "torchcodec"), ("libavutil.so.59: cannot open", True, "pyav"),
                                (None, False, "pyav")):
        decode_auto.resolve_backend.cache_clear()
        monkeypatch.setattr(decode_auto, "_torchcodec_loads", lambda loads=loads: loads)
        names = ["decord", "pyav"] + (["torchcodec"] if listed else [])
        monkeypatch.setattr(decode, "available_backends", lambda names=names: names)
        caplog.clear()
        with caplog.at_level("INFO", logger="pipeline.decode_auto"):
            assert decode_auto.resolve_backend("auto") == want
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == (want == "pyav")
        assert all("\n" not in line and "decoding with pyav" in line for line in lines)
        # installed but not loading is a warning; an optional package simply absent is info
        assert [r.levelname for r in caplog.records] == ([] if want == "torchcodec" else
                                                         ["WARNING" if listed else "INFO"])
    assert decode_auto.resolve_backend("decord") == "decord"
    decode_auto.resolve_backend.cache_clear()
