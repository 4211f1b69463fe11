"""The extraction job end to end: rows, dead letters, resume, a killed job, workers, refusals.

Most runs use one worker inside the test process (``IN_PROCESS``); the tests about a real
process (kill, lock) or about parallelism start ``vidfuse extract`` or Beam's worker processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import video_factory as vf
from extract_helpers import (
    EXTRACTORS,
    IN_PROCESS,
    assert_same_rows,
    cli_command,
    direct_features,
    leftover_files,
    make_synth,
    read_rows,
    shard_files,
    tiny_config,
)
from pipeline.extract_job import ERRORS_FILE, run_extraction
from pipeline.job_lock import LOCK_NAME
from pipeline.manifest import read_manifest
from extractors.registry import build_extractor
from vidfuse.cli import main

TINY_DIMS = {"clip": 64, "x3d": 128, "ircsn": 256}  # configs/extract/tiny.yaml
ONE_WORKER_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"), 6, seed=0)


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    """The synthetic videos extracted in one uninterrupted run with one worker."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_extraction(str(synth.videos_dir), str(out), tiny_config(), beam_args=IN_PROCESS, progress=False)
    assert summary.done == len(synth.video_ids) and summary.failed == 0
    return out, {n: read_rows(out / n, "parquet") for n in EXTRACTORS}


def _extract_args(video_dir, out, *extra: str) -> list[str]:
    return ["extract", str(video_dir), "--out", str(out), "--config", "tiny", "--no-progress", *extra]


# ------------------------------------------------------------------ a folder of good and bad files
@pytest.fixture(scope="module")
def mixed(synth, tmp_path_factory):
    """Synthetic videos (two in a sub-folder), real h264/mpeg4/VFR/GIF files, and bad files."""
    root = tmp_path_factory.mktemp("mixed")
    good = {}
    for k, vid in enumerate(synth.video_ids[:4]):
        rel = f"{vid}.mp4" if k < 2 else f"sub/{vid}.mp4"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synth.videos_dir / f"{vid}.mp4", root / rel)
        good[rel.rsplit(".", 1)[0]] = root / rel
    good["real/h264"] = vf.write_video(root / "real/h264.mp4", 40, pattern="textured")
    good["real/vfr"] = vf.write_vfr_video(root / "real/vfr.mp4", [0.04] * 10 + [0.2] * 5)[0]
    good["real/two_frames"] = vf.write_video(root / "real/two_frames.mp4", 2)
    good["real/anim"] = vf.write_video(root / "real/anim.gif", 12, codec="gif")
    good["real/dup"] = vf.write_video(root / "real/dup.avi", 20, codec="mpeg4")
    bad = {
        # same id as real/dup.avi, which sorts first and keeps the id
        "real/dup.mp4": vf.write_video(root / "real/dup.mp4", 20),
        "corrupt": vf.write_corrupt(root / "bad/corrupt.mp4"),
        "truncated": vf.write_truncated(good["real/h264"], root / "bad/truncated.mp4", 0.4),
        "zero": vf.write_zero_byte(root / "bad/zero.mp4"),
        "text": vf.write_text_as_mp4(root / "bad/notes.mp4"),
    }
    (root / "bad/readme.txt").write_text("not a video extension: never listed\n")
    return root, good, bad


def test_mixed_folder_rows_dead_letters_and_rerun(mixed, tmp_path, capsys):
    root, good, bad = mixed
    out = tmp_path / "features"
    args = _extract_args(root, out, "--set", "output.shard_size=4", *IN_PROCESS)

    assert main(args) == 0  # bad files are dead letters, not a failed job
    line = capsys.readouterr().out
    n_files = len(good) + len(bad)
    assert f"{n_files} videos: {len(good)} done, 0 skipped (already extracted), {len(bad)} failed" in line

    built = {n: build_extractor(n, tiny_config().extractors[n], device="cpu") for n in EXTRACTORS}
    first = {}
    for name in EXTRACTORS:
        manifest = read_manifest(str(out / name))
        assert manifest.dim == TINY_DIMS[name] == built[name].dim
        parquet, hdf5 = read_rows(out / name, "parquet"), read_rows(out / name, "hdf5")
        assert sorted(parquet.features) == sorted(good)  # exactly one row per decodable video
        assert all(v.shape == (manifest.dim,) for v in parquet.features.values())
        sampling = built[name].config.sampling
        units = sampling.clips if built[name].level == "clip" else sampling.num_frames
        assert all(m.shape == (units, manifest.dim) for m in parquet.frames.values())
        assert_same_rows(hdf5, parquet, exact=True)
        # the features are those of the bare library calls on the same video
        for vid in ("real/h264", "real/anim", next(k for k in good if k.startswith("sub/"))):
            vector, matrix, indices = direct_features(built[name], good[vid])
            np.testing.assert_allclose(parquet.features[vid], vector, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(parquet.frames[vid], matrix, rtol=1e-5, atol=1e-6)
            assert np.array_equal(parquet.indices[vid], indices)
        first[name] = parquet

    records = [json.loads(x) for x in (out / ERRORS_FILE).read_text().splitlines()]
    listed = {(r["path"], r["extractor"]) for r in records}
    assert listed == {(str(p), n) for p in bad.values() for n in EXTRACTORS}
    assert len(records) == len(listed)
    assert all(r["reason"] and r["video_id"] and r["stage"] for r in records)
    dup = [r for r in records if r["path"] == str(bad["real/dup.mp4"])]
    assert all("already taken" in r["reason"] for r in dup)
    assert not (out / "_dead_letters").exists()
    assert leftover_files(out) == []

    # Rerun: nothing new to extract, same rows, no new shard file; the summary says skipped.
    files = shard_files(out)
    summary = run_extraction(str(root), str(out), tiny_config("output.shard_size=4"), beam_args=IN_PROCESS, progress=False)
    assert (summary.total, summary.done, summary.skipped) == (n_files, 0, len(good))
    assert summary.rows_added == {n: 0 for n in EXTRACTORS}
    assert summary.failed == len(bad) - 1  # the bad files are retried; the duplicate is not decoded again
    assert shard_files(out) == files
    for name in EXTRACTORS:
        assert_same_rows(read_rows(out / name, "parquet"), first[name], exact=True)
    assert {(r["path"], r["extractor"]) for r in map(json.loads, (out / ERRORS_FILE).read_text().splitlines())} == listed

    # --strict: any failed video makes the exit status non-zero
    assert main(args + ["--strict"]) != 0
    assert shard_files(out) == files


# ------------------------------------------------------------------ killed job, then resume
def _complete_shards(out: Path) -> int:
    return sum(1 for _ in out.glob("*/_part-*.h5"))


def _start_and_kill(video_dir: Path, out: Path, after_shards: int, delay: float, log_path: Path) -> int:
    """Run ``vidfuse extract`` (one shard per video, one Beam worker process), SIGKILL its process
    group once ``after_shards`` shards exist plus ``delay`` s; returns its exit status."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cli_command(*_extract_args(video_dir, out, "--set", "output.shard_size=1", *ONE_WORKER_PROCESS)),
            start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while _complete_shards(out) < after_shards and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(delay)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its Beam worker process
            proc.wait()
    return proc.returncode


def test_killed_job_resumes_to_the_rows_of_an_uninterrupted_run(synth, reference, tmp_path):
    ref_out, ref_rows = reference
    rng = random.Random()
    # A random moment after the first shards; should a fast machine finish first, try earlier.
    plans = [(rng.randint(1, 3), rng.uniform(0.0, 0.3)), (1, rng.uniform(0.0, 0.05)), (1, 0.0)]
    for attempt, (after_shards, delay) in enumerate(plans):
        out = tmp_path / f"features{attempt}"
        rc = _start_and_kill(synth.videos_dir, out, after_shards, delay, tmp_path / "job.log")
        if rc == -signal.SIGKILL:
            break
    assert rc == -signal.SIGKILL, f"the job always ended (rc {rc}) before it was killed: {(tmp_path / 'job.log').read_text()[-2000:]}"
    partial = {n: len(list((out / n).glob("_part-*.h5"))) for n in EXTRACTORS}  # one row each

    summary = run_extraction(str(synth.videos_dir), str(out), tiny_config(), beam_args=IN_PROCESS, progress=False)
    assert summary.failed == 0 and summary.done + summary.skipped == len(synth.video_ids)
    assert sum(summary.rows_added.values()) + sum(partial.values()) == len(EXTRACTORS) * len(synth.video_ids)
    assert leftover_files(out) == []
    assert not (out / "_dead_letters").exists()
    for name in EXTRACTORS:
        stems = {p.stem for p in (out / name).glob("part-*.parquet")}
        assert set(read_manifest(str(out / name)).shards) == stems
        for fmt in ("parquet", "hdf5"):
            assert_same_rows(read_rows(out / name, fmt), ref_rows[name])


def test_rerun_removes_what_a_killed_writer_left(reference, synth, tmp_path):
    """Temp files, a shard renamed in one format only, Beam's temp folder: gone after a rerun."""
    ref_out, ref_rows = reference
    out = tmp_path / "features"
    shutil.copytree(ref_out, out)
    shard = next((out / "clip").glob("part-*.parquet"))
    shutil.copy(shard, out / "clip" / f".tmp-{shard.stem}.0123456789ab.parquet.partial")
    shutil.copy(shard, out / "clip" / "part-0000orphan.parquet")  # its .h5 was never renamed
    (out / "_dead_letters" / "beam-temp-run-x").mkdir(parents=True)
    (out / "_dead_letters" / "beam-temp-run-x" / "part").write_text("{}\n")

    summary = run_extraction(str(synth.videos_dir), str(out), tiny_config(), beam_args=IN_PROCESS, progress=False)
    assert summary.skipped == len(synth.video_ids) and summary.rows_added == {n: 0 for n in EXTRACTORS}
    assert leftover_files(out) == []
    assert not (out / "_dead_letters").exists()
    assert not (out / "clip" / "part-0000orphan.parquet").exists()
    for name in EXTRACTORS:
        assert_same_rows(read_rows(out / name, "parquet"), ref_rows[name], exact=True)


# ------------------------------------------------------------------ parallelism
def test_two_worker_processes_give_the_features_of_one(synth, reference, tmp_path):
    ref_out, ref_rows = reference
    out = tmp_path / "features"
    summary = run_extraction(
        str(synth.videos_dir), str(out), tiny_config(),
        beam_args=["--direct_running_mode=multi_processing", "--direct_num_workers=2"], progress=False,
    )
    assert summary.done == len(synth.video_ids) and summary.failed == 0
    for name in EXTRACTORS:
        assert_same_rows(read_rows(out / name, "parquet"), ref_rows[name])


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("case", ["missing", "empty", "no_video_extension"])
def test_missing_or_empty_folder_is_exit_2_with_a_clear_message(case, tmp_path, capsys):
    folder = tmp_path / "videos"
    if case != "missing":
        folder.mkdir()
    if case == "no_video_extension":
        (folder / "notes.txt").write_text("hello\n")
    assert main(_extract_args(folder, tmp_path / "out", *IN_PROCESS)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidfuse extract: error:") and str(folder) in err
    assert ("not found" if case == "missing" else "no videos found") in err
    assert len(err.splitlines()) == 1


def test_unknown_extractor_is_a_clear_error(synth, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_extract_args(synth.videos_dir, out, "--extractors", "clip,resnet", *IN_PROCESS)) == 2
    err = capsys.readouterr().err
    assert "resnet" in err and "clip" in err and "Traceback" not in err
    assert not any(out.glob("*/part-*"))


def test_resume_with_another_config_names_the_differing_key(reference, synth, tmp_path, capsys):
    ref_out, _ = reference
    out = tmp_path / "features"
    shutil.copytree(ref_out, out)
    files = shard_files(out)
    args = _extract_args(synth.videos_dir, out, "--set", "extractors.x3d.sampling.clips=3", *IN_PROCESS)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "x3d" in err and "sampling.clips" in err and "2 -> 3" in err
    assert shard_files(out) == files
    assert read_manifest(str(out / "x3d")).config["sampling"]["clips"] == 2


def test_second_job_on_the_same_folder_is_refused(synth, tmp_path, capsys):
    out = tmp_path / "features"
    log = open(tmp_path / "first.log", "w")
    # A Beam worker process to start keeps the first job holding the lock for seconds.
    first = subprocess.Popen(
        cli_command(*_extract_args(synth.videos_dir, out, *ONE_WORKER_PROCESS)),
        start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
    )
    lock = out / LOCK_NAME
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text().strip() == f"pid {first.pid}":
                break
            time.sleep(0.05)
        assert first.poll() is None, f"first job ended before the test could see its lock: {(tmp_path / 'first.log').read_text()[-2000:]}"
        assert main(_extract_args(synth.videos_dir, out, *IN_PROCESS)) == 2
        err = capsys.readouterr().err
        assert "another extract job is writing to" in err and str(out) in err and f"pid {first.pid}" in err
        assert first.poll() is None, "the first job must still be running (so the refusal was about its lock)"
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        log.close()


# ------------------------------------------------------------------ Beam options
def test_beam_options_defaults_and_threads_per_worker(monkeypatch):
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    from pipeline.extract_job import beam_options, worker_torch_threads

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    default = beam_options([])
    assert default.view_as(StandardOptions).runner == "DirectRunner"
    direct = default.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 8)
    assert worker_torch_threads(default) == 1  # 8 workers share 8 cores
    assert worker_torch_threads(beam_options(["--direct_num_workers=2"])) == 4
    one = beam_options(["--direct_num_workers=1"])  # runs in this process: no worker start-up
    assert one.view_as(DirectOptions).direct_running_mode == "in_memory" and worker_torch_threads(one) is None
    forced = beam_options(ONE_WORKER_PROCESS)
    assert forced.view_as(DirectOptions).direct_running_mode == "multi_processing" and worker_torch_threads(forced) == 8
    assert worker_torch_threads(beam_options(["--runner=DataflowRunner"])) is None


def test_direct_runner_jobs_never_go_through_prism(synth, tmp_path, monkeypatch):
    """Beam's DirectRunner tries Prism first (online: downloads it, runs workers in-process)."""
    from apache_beam.runners.portability import prism_runner

    tried = []
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", lambda self, *a, **k: tried.append(a) or 1 / 0)
    summary = run_extraction(
        str(synth.videos_dir), str(tmp_path / "out"), tiny_config(), extractors=["clip"], beam_args=IN_PROCESS,
        progress=False,
    )
    assert summary.done == len(synth.video_ids)
    assert tried == []


def test_glob_characters_in_the_folder_name_match_only_that_folder(synth, tmp_path):
    from pipeline.config import VIDEO_EXTENSIONS
    from pipeline.video_files import list_videos

    folder = tmp_path / "clips [2020]"
    sibling = tmp_path / "clips 2"  # what "[2020]" would match as a character class
    for d in (folder, sibling):
        d.mkdir()
    shutil.copy(synth.videos_dir / f"{synth.video_ids[0]}.mp4", folder / "a.mp4")
    shutil.copy(synth.videos_dir / f"{synth.video_ids[1]}.mp4", sibling / "b.mp4")
    assert list_videos(str(folder), VIDEO_EXTENSIONS) == [str(folder / "a.mp4")]
    out = tmp_path / "out"
    summary = run_extraction(str(folder), str(out), tiny_config(), extractors=["clip"], beam_args=IN_PROCESS, progress=False)
    assert (summary.total, summary.done) == (1, 1)
    assert list(read_rows(out / "clip", "parquet").features) == ["a"]
