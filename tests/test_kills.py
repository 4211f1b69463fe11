"""Faults (issue #7): ``vidfuse extract``, ``train``, ``index`` and ``benchmark`` SIGKILLed, then
run again as the user would.

Each stage is killed at three seeded moments spread over its runtime, as an uninterrupted run of
the same command here timed it (see kill_moment): one in start-up, one mid-work, one in the final
writes; and at the commit points of its atomic writes (a child that kills itself right before its
N-th rename). After every kill, the readers a
user would point at the folder (load_feature_set, load_run / Run.load and ``vidfuse index``,
VideoIndex.load, the report files) read complete output, or refuse with a message naming the
folder; then the same command runs to its end and every output equals the uninterrupted run's
(rows of each extractor in Parquet and HDF5, manifests, errors.jsonl; metrics.jsonl, weights and
optimiser state; index ids, vectors, meta.json; the report), with no temp file left behind.

Commands run in forked children of a fork server that imported the libraries once
(tests/kills_helpers.py): the kill moments then fall in the command's own work, not in imports.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import video_factory as vf
from extract_helpers import EXTRACTORS, IN_PROCESS, Rows, assert_same_rows, make_synth, read_rows
from kills_helpers import REPO, Command, Outcome, run_command
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)
from vidfuse.errors import VidfuseError

FORMATS = ("parquet", "hdf5")
# (seed, phase of the runtime its kill moment falls in: see kill_moment)
SEEDS = [pytest.param(seed, phase, id=f"seed{seed}") for phase, seed in enumerate((11, 23, 37))]


def kill_moment(seed: int, phase: int, rename_times: list[float], seconds: float,
                shrink: float = 1.0) -> tuple[int, float]:
    """A seeded moment in one phase of a run, as (renames done, seconds after the last of them).

    A run's renames (its commits) cut it into spans: start-up before the first, the work
    between two (shards, epochs, the folder swap), and the final writes and exit among the last
    five. Phase 0 draws a moment in the first span, 1 in a span between two renames, 2 in one
    of the last five spans. Anchoring on the renames rather than on the clock keeps a late
    moment inside the run when the run is faster than the one measured. ``shrink`` < 1 moves the
    moment towards the start of its span (retries).
    """
    rng = random.Random(seed)
    u, times = rng.random() * shrink, [0.0, *rename_times, seconds]
    last = len(rename_times)
    span = (0 if phase == 0 else rng.randrange(1, max(2, last)) if phase == 1
            else rng.randrange(max(1, last - 4), last + 1))
    return span, u * (times[span + 1] - times[span])


def kill_at_random(args_of: Callable[[Path], list], work: Path, seed: int, phase: int, ref: "Reference",
                   prepare: Callable[[Path], None] | None = None) -> tuple[Path, Outcome]:
    """Run the command into a fresh ``out`` and SIGKILL it at the seed's moment of the reference
    run; should this run end first, retry with the moment placed by its own timeline, a little
    earlier in the same span."""
    timeline = (ref.rename_times, ref.seconds)
    for attempt in range(5):
        out = work / f"attempt{attempt}" / "out"  # alone in its folder (index: nothing beside it)
        out.parent.mkdir(parents=True)
        if prepare:
            prepare(out)
        # the last try kills at the start of the span, which no run can end before
        renames, delay = kill_moment(seed, phase, *timeline, shrink=0.6 ** attempt if attempt < 4 else 0.0)
        outcome = run_command(args_of(out), work / f"attempt{attempt}-child", delay=delay, after_renames=renames,
                              count=True)
        if outcome.killed:
            return out, outcome
        assert outcome.exitcode == 0, outcome.log[-3000:]
        timeline = (outcome.rename_times, outcome.seconds)
    pytest.fail(f"the command always ended before its kill ({delay:.3f} s after rename {renames})")


def commit_points(renames: int, skip: range = range(0)) -> list[tuple[str, dict]]:
    """Kill right before each rename (but those in ``skip``), and right after the last one."""
    return [(f"before rename {k}", {"before": k}) for k in range(1, renames + 1) if k not in skip] + [
        (f"after rename {renames}", {"after": renames})]


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"vidfuse {command}: error:"), err
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def assert_deep_equal(got, want, where: str) -> None:
    """Nested dicts/lists of tensors, arrays and plain values, compared exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (where, sorted(got), sorted(want))
        for key in want:
            assert_deep_equal(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want)):
            assert_deep_equal(a, b, f"{where}[{i}]")
    elif torch.is_tensor(want):
        assert torch.is_tensor(got) and got.dtype == want.dtype and torch.equal(got, want), where
    elif isinstance(want, np.ndarray):
        assert np.array_equal(got, want), where
    else:
        assert got == want, (where, got, want)


@dataclass
class Reference:
    out: Path
    seconds: float  # runtime of the uninterrupted command
    rename_times: list[float]  # when it called os.rename/os.replace (its commits)
    outputs: dict

    @property
    def renames(self) -> int:
        return len(self.rename_times)


def reference(args: list, out: Path, work: Path, outputs: Callable[[Path], dict]) -> Reference:
    done = run_command(args, work, count=True)
    assert done.exitcode == 0 and done.rename_times, done.log[-3000:]
    return Reference(out, done.seconds, done.rename_times, outputs(out))


# =========================================================================== extract
EXTRACT_ARGS = ("--config", "tiny", "--no-progress", "--set", "output.shard_size=1", *IN_PROCESS)
TEMP_NAME = re.compile(r"(^|/)\.tmp-|\.partial$")


def extract_args(videos: Path, out: Path) -> list:
    return ["extract", videos, "--out", out, *EXTRACT_ARGS]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Four tiny synthetic videos and a corrupt one (so errors.jsonl has a line to keep)."""
    folder = make_synth(tmp_path_factory.mktemp("kill_videos"), 4, seed=5).videos_dir
    vf.write_corrupt(folder / "broken.mp4")
    return folder


def extract_outputs(out: Path) -> dict:
    """A features folder in comparable form (shard names are random: counted, not named)."""
    manifests = {}
    for name in EXTRACTORS:
        manifest = json.loads((out / name / "_manifest.json").read_text())
        assert sorted(manifest.pop("shards")) == sorted(p.stem for p in (out / name).glob("part-*.parquet")), name
        manifests[name] = manifest
    errors = [{k: v for k, v in json.loads(line).items() if k != "time"}
              for line in (out / "errors.jsonl").read_text().splitlines()]
    files = sorted(re.sub(r"part-[0-9a-f]+\.", "part-*.", str(p.relative_to(out))) for p in out.rglob("*") if p.is_file())
    return {"rows": {(n, f): read_rows(out / n, f) for n in EXTRACTORS for f in FORMATS}, "manifests": manifests,
            "errors": errors, "sources": json.loads((out / "sources.json").read_text()), "files": files}


def assert_same_extract(got: dict, want: dict) -> None:
    for key, rows in want["rows"].items():
        assert_same_rows(got["rows"][key], rows, exact=True)
    for key in ("manifests", "errors", "sources", "files"):
        assert got[key] == want[key], key


def check_killed_features(out: Path, want: dict) -> None:
    """Each extractor folder reads as rows of the uninterrupted run (the videos done so far),
    Parquet and HDF5 alike, or is refused naming the folder."""
    for name in EXTRACTORS:
        for fmt in FORMATS:
            try:
                rows = read_rows(out / name, fmt)
            except VidfuseError as exc:
                assert str(out / name) in str(exc), exc
                continue
            ref = want["rows"][(name, fmt)]
            assert set(rows.features) <= set(ref.features), (name, fmt)
            assert_same_rows(rows, Rows(ref.dim, *({v: part[v] for v in rows.features} for part in (
                ref.features, ref.frames, ref.indices, ref.num_frames))), exact=True)


@pytest.fixture(scope="module")
def extract_ref(videos, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("extract_ref")
    return reference(extract_args(videos, root / "out"), root / "out", root, extract_outputs)


@pytest.mark.parametrize("seed, phase", SEEDS)
def test_extract_killed_at_a_random_moment_reruns_to_the_uninterrupted_output(videos, extract_ref, seed, phase,
                                                                              tmp_path):
    out, _ = kill_at_random(lambda o: extract_args(videos, o), tmp_path, seed, phase, extract_ref)
    check_killed_features(out, extract_ref.outputs)
    assert cli(*extract_args(videos, out)) == 0
    assert_same_extract(extract_outputs(out), extract_ref.outputs)


# The final writes, the last five renames: the three manifests (listing the shards), errors.jsonl
# (this run's dead letters merged), sources.json (the video folder recorded).
@pytest.mark.parametrize("point", ["before-manifests", "before-errors", "before-sources"])
def test_extract_killed_in_its_final_writes_reruns_to_the_uninterrupted_output(videos, extract_ref, point, tmp_path):
    last = extract_ref.renames
    kill = {"before-manifests": last - 4, "before-errors": last - 1, "before-sources": last}[point]
    out = tmp_path / "out"
    outcome = run_command(extract_args(videos, out), tmp_path, before=kill)
    assert outcome.killed, outcome.log[-3000:]
    # the kill fell where its name says: manifests still list no shard / errors.jsonl or sources.json not yet written
    listed = [json.loads((out / n / "_manifest.json").read_text())["shards"] for n in EXTRACTORS]
    assert (point == "before-manifests") == (listed == [[]] * len(EXTRACTORS)), listed
    assert (out / "errors.jsonl").exists() == (point == "before-sources")
    assert not (out / "sources.json").exists()
    check_killed_features(out, extract_ref.outputs)
    assert cli(*extract_args(videos, out)) == 0
    assert_same_extract(extract_outputs(out), extract_ref.outputs)


# =========================================================================== train
EPOCHS = 2
TRAIN_SETS = (f"epochs={EPOCHS}", "early_stop=0")
RUN_FILES = ("metrics.jsonl", "config.yaml", "run.json")


def train_args(stage, out: Path) -> list:
    args = ["train", "--features", stage.features, "--captions", stage.captions, "--config", "tiny_laff_ml",
            "--out", out, "--no-progress"]
    for s in TRAIN_SETS:
        args += ["--set", s]
    return args


def train_outputs(run: Path) -> dict:
    checkpoints = {name: torch.load(run / name, map_location="cpu", weights_only=False)
                   for name in ("checkpoint.pt", "last.pt")}
    # last.pt keeps numpy's and Python's global RNG states too; training draws from neither
    # (epoch order: a seeded Generator; dropout: torch, reseeded every epoch), so they hold
    # whatever the process started with and differ between two uninterrupted runs as well.
    for unseeded in ("numpy", "python"):
        checkpoints["last.pt"]["rng"].pop(unseeded)
    return {"files": sorted(p.name for p in run.iterdir()),
            "text": {name: (run / name).read_text() for name in RUN_FILES}, "checkpoints": checkpoints}


def assert_same_train(got: dict, want: dict) -> None:
    assert got["files"] == want["files"]
    assert got["text"] == want["text"]
    assert_deep_equal(got["checkpoints"], want["checkpoints"], "run")


def check_killed_run(run: Path, want: dict, capsys, work: Path) -> None:
    """metrics.jsonl is a prefix of the uninterrupted run's; load_run reads a best-so-far checkpoint
    whose validation numbers are that epoch's, or refuses; Run.load (index, benchmark, search)
    and ``vidfuse index`` refuse the unfinished run naming it."""
    from fusion.checkpoint import CheckpointError, load_run
    from index.run_index import Run, RunError

    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    ref_lines = want["text"]["metrics.jsonl"].splitlines()
    assert lines == ref_lines[: len(lines)]
    try:
        _, _, info = load_run(run)
    except CheckpointError as exc:
        assert str(run) in str(exc), exc
    else:
        record = json.loads(ref_lines[info["epoch"] - 1])
        assert record["epoch"] == info["epoch"] and info["val"] and all(record[k] == v for k, v in info["val"].items())
    try:
        Run.load(str(run))
    except RunError as exc:
        assert str(run) in str(exc), exc
        assert cli("index", "--run", run, "--out", work / "index", "--device", "cpu") == 2
        line = error_line(capsys, "index")
        assert str(run) in line and ("has not finished training" in line or "no checkpoint.pt" in line), line
        assert not (work / "index").exists()
    else:  # reads as finished only when killed after its last write: then it is the finished run
        assert_same_train(train_outputs(run), want)


@pytest.fixture(scope="module")
def train_ref(stage_data, tmp_path_factory) -> Reference:
    root = tmp_path_factory.mktemp("train_ref")
    return reference(train_args(stage_data, root / "run"), root / "run", root, train_outputs)


@pytest.mark.parametrize("seed, phase", SEEDS)
def test_train_killed_at_a_random_moment_resumes_to_the_uninterrupted_run(stage_data, train_ref, seed, phase, tmp_path,
                                                                          capsys):
    run, _ = kill_at_random(lambda o: train_args(stage_data, o), tmp_path, seed, phase, train_ref)
    check_killed_run(run, train_ref.outputs, capsys, tmp_path)
    assert cli(*train_args(stage_data, run)) == 0
    assert_same_train(train_outputs(run), train_ref.outputs)


def test_train_killed_at_each_commit_point_resumes_to_the_uninterrupted_run(stage_data, train_ref, tmp_path, capsys):
    """run.json, config.yaml, metrics.jsonl, then per epoch checkpoint.pt (the first epoch is
    always the best so far), metrics.jsonl and last.pt: a kill before each rename up to the
    first epoch's last.pt, then before the last epoch's last.pt (metrics.jsonl says the run is
    done, last.pt does not yet), and after it."""
    renames = train_ref.renames
    assert renames >= 6 + 2 * (EPOCHS - 1)
    for label, kill in commit_points(renames, skip=range(7, renames)):
        work = tmp_path / label.replace(" ", "-")
        run = work / "run"
        outcome = run_command(train_args(stage_data, run), work, **kill)
        assert outcome.killed, (label, outcome.log[-3000:])
        check_killed_run(run, train_ref.outputs, capsys, work)
        assert cli(*train_args(stage_data, run)) == 0, label
        assert_same_train(train_outputs(run), train_ref.outputs)


# =========================================================================== index
NOTES = "notes.txt"  # a file of the user's in the index folder: carried over by every save


def index_args(run: Path, out: Path) -> list:
    return ["index", "--run", run, "--out", out, "--device", "cpu"]


def index_contents(out: Path) -> dict:
    from index.faiss_index import VideoIndex

    index = VideoIndex.load(str(out))
    meta = {k: v for k, v in index.meta.items() if k != "created"}
    return {"ids": list(index.ids), "vectors": index.reconstruct_all(), "meta": meta}


def index_outputs(out: Path) -> dict:
    return {**index_contents(out), "files": sorted(os.listdir(out))}


def assert_same_index(out: Path, want: dict) -> None:
    got = index_outputs(out)
    assert_same_contents(got, want)
    assert got["files"] == want["files"] == sorted(["ids.parquet", "index.faiss", "meta.json", NOTES])
    assert os.listdir(out.parent) == [out.name]  # no folder of an interrupted save left beside it


@dataclass
class IndexCase:
    run: Path
    prior: Path  # an HNSW32 index of the run, with the user's notes.txt: what the command replaces
    prior_contents: dict
    ref: Reference

    def prepare(self, out: Path) -> None:
        shutil.copytree(self.prior, out)


@pytest.fixture(scope="module")
def index_case(stage_data, tmp_path_factory) -> IndexCase:
    from index.run_index import build_index

    run = trained_run(stage_data, "tiny_laff_ml")
    root = tmp_path_factory.mktemp("index_ref")
    prior = root / "prior" / "index"
    build_index(str(run), str(prior), factory="HNSW32", device="cpu")
    (prior / NOTES).write_text("the user's own file\n")
    out = root / "ref" / "index"
    shutil.copytree(prior, out)
    return IndexCase(run, prior, index_contents(prior), reference(index_args(run, out), out, root, index_outputs))


def assert_same_contents(got: dict, want: dict) -> None:
    assert got["ids"] == want["ids"] and got["meta"] == want["meta"]
    assert np.array_equal(got["vectors"], want["vectors"])


def check_killed_index(out: Path, case: IndexCase) -> None:
    """The folder loads as the old index or the new one, whole, with the user's file; or, killed
    between the two renames of the swap, is refused naming where the old index lies."""
    from index.faiss_index import IndexStoreError

    try:
        contents = index_contents(out)
    except IndexStoreError as exc:
        assert str(out) in str(exc) and "interrupted save left the previous index at" in str(exc), exc
        assert len(list(out.parent.glob(f".{out.name}.*/{NOTES}"))) == 1  # the user's file is not lost
        return
    expected = case.prior_contents if contents["meta"]["factory"] == "HNSW32" else case.ref.outputs
    assert_same_contents(contents, expected)
    assert (out / NOTES).is_file()


@pytest.mark.parametrize("seed, phase", SEEDS)
def test_index_killed_at_a_random_moment_rebuilds_to_the_uninterrupted_index(index_case, seed, phase, tmp_path):
    out, _ = kill_at_random(lambda o: index_args(index_case.run, o), tmp_path, seed, phase, index_case.ref,
                            prepare=index_case.prepare)
    check_killed_index(out, index_case)
    assert cli(*index_args(index_case.run, out)) == 0
    assert_same_index(out, index_case.ref.outputs)


def test_index_killed_at_each_commit_point_rebuilds_to_the_uninterrupted_index(index_case, tmp_path):
    """The swap: the new folder (with a link to the user's file) complete, the old folder moved
    aside, the new one moved in (a kill before each rename, and after the last)."""
    assert index_case.ref.renames == 2
    for label, kill in commit_points(index_case.ref.renames):
        out = tmp_path / label.replace(" ", "-") / "index"
        index_case.prepare(out)
        outcome = run_command(index_args(index_case.run, out), out.parent.parent / f"{label}-child", **kill)
        assert outcome.killed, (label, outcome.log[-3000:])
        check_killed_index(out, index_case)
        assert cli(*index_args(index_case.run, out)) == 0, label
        assert_same_index(out, index_case.ref.outputs)


# =========================================================================== benchmark
REPORT_FILES = ("rows.json", "table.md", "recall.png", "metrics.json")


def benchmark_args(run: Path, index: Path, out: Path, name: str = "second", k: int = 100) -> list:
    return ["benchmark", "--run", run, "--index", index, "--out", out, "--name", name, "--k", k]


def report_outputs(out: Path) -> dict:
    return {"files": {name: (out / name).read_bytes() for name in REPORT_FILES if (out / name).exists()},
            "listing": sorted(os.listdir(out))}


@dataclass
class BenchCase:
    run: Path
    index: Path
    ref: Reference  # into a fresh folder
    earlier: Path  # a report folder holding the row of an earlier benchmark ("first")
    ref_after_earlier: Reference  # "second" added to it


@pytest.fixture(scope="module")
def bench_case(stage_data, tmp_path_factory) -> BenchCase:
    run = trained_run(stage_data, "tiny_laff_ml")
    index = built_index(stage_data, run)
    root = tmp_path_factory.mktemp("bench_ref")
    fresh = reference(benchmark_args(run, index, root / "fresh"), root / "fresh", root / "w1", report_outputs)
    earlier = root / "earlier"  # searched less deep: its metrics.json differs from the next one's too
    assert cli(*benchmark_args(run, index, earlier, "first", k=5)) == 0
    shutil.copytree(earlier, root / "after")
    after = reference(benchmark_args(run, index, root / "after"), root / "after", root / "w2", report_outputs)
    rows = json.loads(after.outputs["files"]["rows.json"])  # per run: exact and via-index rows; one chance row
    assert len({r.get("run", r["model"]) for r in rows if r["model"] != "chance"}) == 2, rows
    return BenchCase(run, index, fresh, earlier, after)


def check_killed_report(out: Path, before: dict, after: dict) -> None:
    """Every report file there is whole, as it was before the command or as the command writes
    it; metrics.json, written last, is the new one only when the table and plot are too."""
    if not out.exists():
        return
    names = [n for n in os.listdir(out) if not (n.startswith(".") and (n.endswith(".partial") or n == ".vidfuse.lock"))]
    assert set(names) <= set(REPORT_FILES), names
    for name in names:
        assert (out / name).read_bytes() in (before["files"].get(name), after["files"][name]), name
    if "metrics.json" in names and (out / "metrics.json").read_bytes() == after["files"]["metrics.json"]:
        assert all((out / n).read_bytes() == after["files"][n] for n in REPORT_FILES if n in names), names
        assert set(names) == set(REPORT_FILES), names


@pytest.mark.parametrize("seed, phase", SEEDS)
def test_benchmark_killed_at_a_random_moment_reruns_to_the_uninterrupted_report(bench_case, seed, phase, tmp_path):
    c = bench_case
    out, _ = kill_at_random(lambda o: benchmark_args(c.run, c.index, o), tmp_path, seed, phase, c.ref)
    check_killed_report(out, {"files": {}}, c.ref.outputs)
    assert cli(*benchmark_args(c.run, c.index, out)) == 0
    assert report_outputs(out) == c.ref.outputs


def test_benchmark_killed_at_each_commit_point_keeps_the_earlier_rows(bench_case, tmp_path):
    """Into a folder with an earlier run's row: rows.json, table.md, recall.png, metrics.json."""
    c = bench_case
    before = report_outputs(c.earlier)
    assert c.ref_after_earlier.renames == len(REPORT_FILES)
    for label, kill in commit_points(c.ref_after_earlier.renames):
        out = tmp_path / label.replace(" ", "-") / "report"
        shutil.copytree(c.earlier, out)
        outcome = run_command(benchmark_args(c.run, c.index, out), out.parent / "child", **kill)
        assert outcome.killed, (label, outcome.log[-3000:])
        check_killed_report(out, before, c.ref_after_earlier.outputs)
        assert cli(*benchmark_args(c.run, c.index, out)) == 0, label
        assert report_outputs(out) == c.ref_after_earlier.outputs, label


# =========================================================================== extract jobs side by side
def test_extract_jobs_side_by_side_and_a_job_killed_holding_the_lock(videos, extract_ref, tmp_path, capsys):
    """A second job on a folder being written is refused naming the first; a job on another
    folder over the same videos runs alongside and completes; the first, killed while it holds
    the lock, leaves a lock file naming it but no lock (flock dies with it): the next job runs
    at once, and both folders hold the uninterrupted run's output."""
    from pipeline.job_lock import LOCK_NAME

    first, other = tmp_path / "first", tmp_path / "other"
    jobs = [Command(extract_args(videos, first), tmp_path / "job1"),
            Command(extract_args(videos, other), tmp_path / "job2")]
    lock = first / LOCK_NAME
    while jobs[0].running() and not (lock.exists() and lock.read_text() == f"pid {jobs[0].pid}"):
        time.sleep(0.002)
    assert jobs[0].running(), "the first job ended before the test saw it holding the lock"
    assert cli(*extract_args(videos, first)) == 2
    line = error_line(capsys, "extract")
    assert f"another extract job is writing to {first} (pid {jobs[0].pid})" in line, line
    jobs[0].kill()
    assert jobs[0].wait().killed
    assert lock.read_text() == f"pid {jobs[0].pid}"
    assert cli(*extract_args(videos, first)) == 0
    done = jobs[1].wait()
    assert done.exitcode == 0, done.log[-3000:]
    for out in (first, other):
        assert_same_extract(extract_outputs(out), extract_ref.outputs)


_LAUNCHER = """
import subprocess, sys, time
from pipeline.job_lock import exclusive_folder
with exclusive_folder(sys.argv[1], "extract job"):
    worker = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True); open(sys.argv[1]).read()", sys.argv[2]],
                              stdout=subprocess.PIPE)
    worker.stdout.readline()  # it runs: /proc shows its environment (empty for a moment after exec returns)
    print(worker.pid, flush=True)
    time.sleep(120)
"""


def _orphaned_worker(folder: Path, release: Path) -> int:
    """A job that holds ``folder``'s lock and started a worker process, killed alone (kill -9 PID,
    the OOM killer), as Beam's DirectRunner workers outlive a killed launcher: the worker's pid.
    The worker runs until something is written to the FIFO ``release`` (or it is killed)."""
    os.mkfifo(release)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(folder), str(release)], env=env, cwd=str(REPO),
                                stdout=subprocess.PIPE, text=True)
    worker = int(launcher.stdout.readline())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    launcher.stdout.close()
    return worker


class _ReleaseWhenWaiting(logging.Handler):
    """Ends the orphaned worker once the next job says it waits for it: the worker ends during the
    wait on any machine, however slow, instead of after a fixed time the wait might not reach."""

    def __init__(self, fifo_path: Path):
        super().__init__()
        self.fifo_path, self.seen = fifo_path, []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "waiting up to" in message and not self.seen:
            self.seen.append(message)
            with open(self.fifo_path, "w") as fifo:  # the worker holds the reading end: this does not block
                fifo.write("go")


def test_a_worker_outliving_its_killed_job_is_waited_for_then_refused_naming_it(tmp_path):
    from pipeline.job_lock import FolderLockedError, exclusive_folder, leftover_writers

    folder = tmp_path / "features"
    worker = _orphaned_worker(folder, tmp_path / "never")
    try:
        with pytest.raises(FolderLockedError, match=rf"killed still run and may write there \(pids {worker}\)"):
            with exclusive_folder(str(folder), "extract job", orphan_wait_s=0.3):
                pass
    finally:
        os.kill(worker, signal.SIGKILL)
    worker = _orphaned_worker(folder, tmp_path / "release")  # one that ends meanwhile: the next job waits, then goes on
    releaser = _ReleaseWhenWaiting(tmp_path / "release")
    job_log = logging.getLogger("pipeline.job_lock")
    job_log.addHandler(releaser)
    try:
        with exclusive_folder(str(folder), "extract job", orphan_wait_s=600):
            assert leftover_writers(os.path.realpath(folder / ".vidfuse.lock")) == []
    finally:
        job_log.removeHandler(releaser)
    assert len(releaser.seen) == 1 and f"pids [{worker}]" in releaser.seen[0]
