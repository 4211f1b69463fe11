"""A video that changed on disk after its extraction is extracted again; one still being written waits.

Rows record the (size, mtime) of the file they were read from. A rerun drops the rows of the
videos whose file differs now and extracts them again: no duplicate row remains and the other
rows are untouched. A file whose size or time moves while the job looks at it (a copy under
way) is left for a later run, with a warning.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading

import numpy as np
import pytest

from extract_helpers import IN_PROCESS, leftover_files, make_synth, read_rows, tiny_config
from pipeline.extract_job import run_extraction
from pipeline.fingerprints import changed_videos, recently_modified
from pipeline.shards import ShardError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("changed_synth"), 3, seed=11)


def _extract(videos, out):
    return run_extraction(str(videos), str(out), tiny_config(), extractors=["clip"], beam_args=IN_PROCESS,
                          progress=False)


def _age(path, seconds: float = 100.0) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(seconds * 1e9)))


def test_fingerprint_comparison():
    recorded = {"a": (10, 1), "b": (10, 1), "c": (5, 5)}
    assert changed_videos(recorded, {"a": (10, 1), "b": (11, 1), "c": (5, 6), "d": (1, 1)}) == ["b", "c"]
    assert recently_modified({"old": (1, 0), "new": (1, 10**18)}, now_ns=10**18 + 10**9) == ["new"]


def test_a_video_rewritten_after_extraction_is_extracted_again(synth, tmp_path, caplog):
    videos = tmp_path / "videos"
    shutil.copytree(synth.videos_dir, videos)
    out = tmp_path / "out"
    first = _extract(videos, out)
    assert first.done == 3 and first.reextracted == 0
    before = read_rows(out / "clip", "parquet").features
    a, b, c = synth.video_ids
    shutil.copyfile(videos / f"{b}.mp4", videos / f"{a}.mp4")  # a now holds b's frames
    _age(videos / f"{a}.mp4")
    with caplog.at_level(logging.WARNING):
        again = _extract(videos, out)
    assert again.reextracted == 1 and "1 re-extracted" in again.line()
    assert any("changed on disk since they were extracted" in r.getMessage() and a in r.getMessage()
               for r in caplog.records)
    for fmt in ("parquet", "hdf5"):
        rows = read_rows(out / "clip", fmt).features  # refuses an id held twice
        assert sorted(rows) == sorted(synth.video_ids)
        assert np.array_equal(rows[a], before[b]) and np.array_equal(rows[b], before[b])
        assert np.array_equal(rows[c], before[c])
    assert leftover_files(out) == []
    assert _extract(videos, out).reextracted == 0  # nothing changed since


def test_a_run_killed_before_dropping_the_old_rows_drops_them_next_time(synth, tmp_path, monkeypatch):
    """The workers write a changed video's new row; the launcher drops the old one after the run.
    Killed in between, the folder holds both: the next run drops the stale one, refusing nothing."""
    import pipeline.extract_job as extract_job

    videos = tmp_path / "videos"
    shutil.copytree(synth.videos_dir, videos)
    out = tmp_path / "out"
    _extract(videos, out)
    before = read_rows(out / "clip", "parquet").features
    a, b, _ = synth.video_ids
    shutil.copyfile(videos / f"{b}.mp4", videos / f"{a}.mp4")
    _age(videos / f"{a}.mp4")
    with monkeypatch.context() as patched:
        patched.setattr(extract_job, "_replace_superseded", lambda *args: None)  # killed right there
        assert _extract(videos, out).reextracted == 1
    with pytest.raises(ShardError, match="more than one shard"):
        read_rows(out / "clip", "parquet")  # both rows of a are there now
    again = _extract(videos, out)
    assert again.reextracted == 0 and again.done == 0 and again.skipped == 3, again
    for fmt in ("parquet", "hdf5"):
        rows = read_rows(out / "clip", fmt).features
        assert sorted(rows) == sorted(synth.video_ids)
        assert np.array_equal(rows[a], before[b])
    assert leftover_files(out) == []


def test_a_file_still_being_written_is_left_for_a_later_run(synth, tmp_path, caplog):
    videos = tmp_path / "videos"
    shutil.copytree(synth.videos_dir, videos)
    growing = videos / "growing.mp4"
    shutil.copyfile(videos / f"{synth.video_ids[0]}.mp4", growing)
    stop = threading.Event()

    def write():
        with open(growing, "ab") as f:
            while not stop.is_set():
                f.write(b"\0" * 512)
                f.flush()
                stop.wait(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with caplog.at_level(logging.WARNING):
            summary = _extract(videos, tmp_path / "out")
    finally:
        stop.set()
        writer.join()
    assert summary.still_written == 1 and summary.done == 3, summary
    assert "growing" not in read_rows(tmp_path / "out" / "clip", "parquet").features
    assert any("still being written" in r.getMessage() and "growing" in r.getMessage() for r in caplog.records)

    shutil.copyfile(videos / f"{synth.video_ids[0]}.mp4", growing)  # the copy finished
    _age(growing)
    summary = _extract(videos, tmp_path / "out")
    assert summary.done == 1 and summary.still_written == 0
    assert "growing" in read_rows(tmp_path / "out" / "clip", "parquet").features
