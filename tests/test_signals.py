"""SIGTERM (what a batch scheduler sends) stops extract and train like Ctrl-C, then a resume completes.

The signal goes to the command's process only, as ``kill PID`` does: Beam's worker processes
are the command's business. Expected: exit 143 (128 + SIGTERM), one line ``vidfuse <cmd>:
interrupted``, no traceback (Beam's runner used to wait for its workers for ever, or they
printed gRPC tracebacks once the launcher was gone), no worker left running, and a rerun that
ends with every row once. Moments are events the test waits on (a worker running, a shard
written, an epoch checkpointed), never sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from extract_helpers import leftover_files, make_synth
from kills_helpers import Command
from pipeline.features import load_feature_set
from pipeline.job_lock import LOCK_NAME, leftover_writers
from stage_fixtures import cli, stage_data  # noqa: F401  (fixture)


def _wait_for(condition, command: Command, what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert command.running(), f"the command ended before {what}:\n{command.log.read_text(errors='replace')[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def _assert_interrupted(outcome, command: str) -> None:
    lines = [line for line in outcome.log.splitlines() if line.strip()]
    assert outcome.exitcode == 128 + signal.SIGTERM, outcome.log[-3000:]
    assert lines[-1] == f"vidfuse {command}: interrupted", outcome.log[-3000:]
    assert "Traceback" not in outcome.log, outcome.log[-3000:]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("sigterm_videos"), 12, seed=3).videos_dir


def test_sigterm_during_extract_stops_its_workers_and_a_rerun_completes(videos, tmp_path):
    out = tmp_path / "features"
    args = ["extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress",
            "--set", "output.shard_size=1", "--direct_num_workers=2"]  # two Beam worker processes
    command = Command(args, tmp_path / "child")
    lock = os.path.realpath(out / LOCK_NAME)
    _wait_for(lambda: leftover_writers(lock) and any((out / "clip").glob("part-*.parquet")), command,
              "worker process writing a shard")
    os.kill(command.pid, signal.SIGTERM)
    _assert_interrupted(command.wait(), "extract")
    assert leftover_writers(lock) == []  # its workers were stopped with it

    assert cli("extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress",
               "--direct_num_workers=1") == 0
    rows = load_feature_set(str(out / "clip"))
    assert sorted(rows.ids) == sorted(p.stem for p in videos.iterdir())
    assert leftover_files(out) == []


def test_sigterm_during_train_then_a_resume_runs_every_epoch(stage_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--features", stage_data.features, "--captions", stage_data.captions, "--config",
            "tiny_laff_ml", "--out", run, "--no-progress", "--set", "epochs=3", "--set", "early_stop=0"]
    command = Command(args, tmp_path / "child")
    _wait_for(lambda: (run / "last.pt").exists(), command, "first epoch checkpoint")
    os.kill(command.pid, signal.SIGTERM)
    outcome = command.wait()
    if outcome.exitcode == 0:  # pragma: no cover - the last epochs ran before the signal landed
        pytest.fail(f"train finished before SIGTERM arrived:\n{outcome.log[-2000:]}")
    _assert_interrupted(outcome, "train")

    assert cli(*args) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_a_beam_worker_killed_under_extract_is_one_line_and_a_rerun_completes(videos, tmp_path):
    out = tmp_path / "features"
    args = ["extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress",
            "--set", "output.shard_size=1", "--direct_num_workers=2"]
    command = Command(args, tmp_path / "child")
    lock = os.path.realpath(out / LOCK_NAME)
    _wait_for(lambda: leftover_writers(lock) and any((out / "clip").glob("part-*.parquet")), command,
              "worker process writing a shard")
    os.kill(leftover_writers(lock)[-1], signal.SIGKILL)  # as the OOM killer would
    outcome = command.wait()
    assert outcome.exitcode == 2, outcome.log[-3000:]
    lines = [line for line in outcome.log.splitlines() if line.strip()]
    assert lines[-1].startswith("vidfuse extract: error: a Beam worker process died under the job"), lines[-5:]
    assert "Traceback" not in outcome.log, outcome.log[-3000:]

    assert cli(*args[:-1], "--direct_num_workers=1") == 0
    assert sorted(load_feature_set(str(out / "clip")).ids) == sorted(p.stem for p in videos.iterdir())
    assert leftover_files(out) == []
