"""A full disk, a read-only folder, permission denied: one line naming the folder and the cause, exit 2.

Disk full is a real small tmpfs (the tests run as root and may mount), filled by the stage
itself; it is then remounted larger and the same command reruns to the rows, run, index or
report of an undisturbed run, leaving no temp file. A read-only folder is a read-only bind
mount (chmod does not stop root). Permission denied cannot be made for root by the file
system, so it is injected at the write layer (a PermissionError from ``os.makedirs``).
Every mount is undone in the fixture's teardown, whatever the test did.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from extract_helpers import IN_PROCESS, assert_same_rows, leftover_files, make_synth, read_rows
from pipeline.features import load_feature_set
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)
from vidfuse.errors import failure_as_error


class Mounts:
    """tmpfs and bind mounts made by one test, all unmounted at its end."""

    def __init__(self, root: Path):
        self.root, self.points = root, []

    def _mount(self, *args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    def tmpfs(self, name: str, size: str) -> Path:
        point = self.root / name
        point.mkdir(parents=True)
        self._mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point))
        self.points.append(point)
        return point

    def resize(self, point: Path, size: str) -> None:
        self._mount("-o", f"remount,size={size}", str(point))

    def read_only(self, name: str) -> Path:
        source, point = self.root / (name + "-source"), self.root / name
        source.mkdir(parents=True)
        point.mkdir()
        self._mount("--bind", str(source), str(point))
        self.points.append(point)
        self._mount("-o", "remount,bind,ro", str(point))
        return point

    def undo(self) -> None:
        for point in reversed(self.points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path / "mnt")
    yield m
    m.undo()


_PROGRESS = re.compile(r"\d\d:\d\d:\d\d INFO (vidfuse|pipeline|extractors|fusion|index)[.\w]*: ")


def _one_line_error(capsys, command: str, folder: Path, cause: str) -> str:
    # the command's INFO progress lines ("4 videos found ...") may come first: the failure is one line
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not _PROGRESS.match(line)]
    assert len(err) == 1, err
    assert err[0].startswith(f"vidfuse {command}: error: {folder}") and cause in err[0], err[0]
    return err[0]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("disk_videos"), 4, seed=7).videos_dir


def _extract(videos, out) -> int:
    return cli("extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress", *IN_PROCESS)


def test_extract_on_a_full_disk_then_after_freeing_space(videos, mounts, tmp_path, capsys):
    assert _extract(videos, tmp_path / "reference") == 0
    disk = mounts.tmpfs("disk", "24k")  # the manifest fits, the first shard does not
    assert _extract(videos, disk / "features") == 2
    _one_line_error(capsys, "extract", disk / "features", "no space left on the device")
    mounts.resize(disk, "16m")
    assert _extract(videos, disk / "features") == 0
    for fmt in ("parquet", "hdf5"):
        assert_same_rows(read_rows(disk / "features" / "clip", fmt), read_rows(tmp_path / "reference" / "clip", fmt),
                         exact=True)
    assert leftover_files(disk / "features") == []


def test_extract_text_on_a_full_disk_then_after_freeing_space(stage_data, mounts, capsys):
    disk = mounts.tmpfs("disk", "40k")
    args = ["extract-text", stage_data.captions, "--out", disk / "features", "--config", "tiny", "--encoders", "clip",
            "--no-progress"]
    assert cli(*args) == 2
    _one_line_error(capsys, "extract-text", disk / "features", "no space left on the device")
    mounts.resize(disk, "16m")
    assert cli(*args) == 0
    got, want = (load_feature_set(str(f / "text" / "clip")) for f in (disk / "features", stage_data.features))
    assert sorted(got.ids) == sorted(want.ids)
    assert (got.subset(want.ids).features == want.features).all()
    assert leftover_files(disk / "features") == []


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_index_and_benchmark_on_a_full_disk_then_after_freeing_space(stage_data, mounts, capsys):
    reference = trained_run(stage_data, "tiny_laff_ml", "epochs=1")
    disk = mounts.tmpfs("disk", "64k")  # config and metrics fit, the checkpoint does not
    train = ["train", "--features", stage_data.features, "--captions", stage_data.captions, "--config",
             "tiny_laff_ml", "--out", disk / "run", "--no-progress", "--set", "epochs=1"]
    assert cli(*train) == 2
    _one_line_error(capsys, "train", disk / "run", "no space left on the device")
    mounts.resize(disk, "32m")
    assert cli(*train) == 0
    assert _history(disk / "run") == _history(reference)

    index = built_index(stage_data, reference)
    small = mounts.tmpfs("small", "8k")
    assert cli("index", "--run", reference, "--out", small / "index", "--factory", "Flat") == 2
    _one_line_error(capsys, "index", small / "index", "no space left on the device")
    mounts.resize(small, "16m")
    assert cli("index", "--run", reference, "--out", small / "index", "--factory", "Flat") == 0
    assert (small / "index" / "ids.parquet").read_bytes() == (index / "ids.parquet").read_bytes()

    report = mounts.tmpfs("report", "4k")  # one page: the report does not fit
    bench = ["benchmark", "--run", reference, "--index", index, "--out", report / "bench"]
    assert cli(*bench) == 2
    _one_line_error(capsys, "benchmark", report / "bench", "no space left on the device")
    mounts.resize(report, "16m")
    assert cli(*bench) == 0
    assert cli("benchmark", "--run", reference, "--index", index, "--out", disk / "bench") == 0
    got, want = (json.loads((f / "metrics.json").read_text()) for f in (report / "bench", disk / "bench"))
    assert got["exact"] == want["exact"] and got["via_index"] == want["via_index"]
    for folder in (disk / "run", small / "index", report / "bench"):
        assert not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".partial")], folder


@pytest.mark.parametrize("stage", ["extract", "extract-text", "train", "index", "benchmark"])
def test_a_read_only_output_folder_is_one_line_naming_it(stage, stage_data, videos, mounts, capsys):
    ro = mounts.read_only("ro")
    out = ro / "out"
    if stage in ("index", "benchmark"):
        reference = trained_run(stage_data, "tiny_laff_ml", "epochs=1")
    args = {
        "extract": ["extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress",
                    *IN_PROCESS],
        "extract-text": ["extract-text", stage_data.captions, "--out", out, "--config", "tiny", "--encoders", "bow",
                         "--no-progress"],
        "train": ["train", "--features", stage_data.features, "--captions", stage_data.captions, "--config",
                  "tiny_laff_ml", "--out", out, "--no-progress", "--set", "epochs=1"],
        "index": ["index", "--run", reference if stage == "index" else None, "--out", out, "--factory", "Flat"],
        "benchmark": ["benchmark", "--run", reference if stage == "benchmark" else None, "--index",
                      built_index(stage_data, reference) if stage == "benchmark" else None, "--out", out],
    }[stage]
    assert cli(*args) == 2
    _one_line_error(capsys, stage, ro, "read-only file system")


def test_permission_denied_is_one_line_naming_the_folder(stage_data, tmp_path, monkeypatch, capsys):
    """Injected: root passes every permission check, so a PermissionError is raised where the job
    makes its output folder."""
    import pipeline.job_lock

    real = os.makedirs

    def makedirs(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "denied")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pipeline.job_lock.os, "makedirs", makedirs)
    assert cli("extract-text", stage_data.captions, "--out", tmp_path / "denied" / "out", "--config", "tiny",
               "--encoders", "bow", "--no-progress") == 2
    _one_line_error(capsys, "extract-text", tmp_path / "denied" / "out", "permission denied")


def test_failures_of_the_machine_are_told_apart_from_other_errors(tmp_path):
    full = failure_as_error(RuntimeError("file write failed: filename = '/data/out/clip/.tmp-part-1.h5.partial', "
                                         "errno = 28, error message = 'No space left on device'"))
    assert str(full).startswith("/data/out/clip: no space left on the device")
    assert "read-only" in str(failure_as_error(OSError(errno.EROFS, "Read-only file system", "/mnt/x/f")))
    assert "died" in str(failure_as_error(RuntimeError("Worker subprocess exited with return code -9")))
    assert failure_as_error(RuntimeError("unexpected pos 54400 vs 54288"), str(tmp_path)) is None  # space left
    assert failure_as_error(ValueError("a bug")) is None
