"""The bad-video corpus through the extraction job: every odd, broken or hostile entry a real
video folder holds, each with the outcome a user should get.

One folder holds good synthetic videos beside the corpus; one in-process job extracts it.
Each case is either extracted (its rows are those of the bare decoder calls on the same file)
or a dead letter in ``errors.jsonl`` naming its path and the reason, while every other video
is extracted. A rerun changes nothing that was done and retries what failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import video_factory as vf
from extract_helpers import IN_PROCESS, direct_features, leftover_files, make_synth, read_rows, shard_files, tiny_config
from extractors.registry import build_extractor
from pipeline.extract_job import ERRORS_FILE, run_extraction

EXTRACTORS = ("clip", "x3d")  # a frame-level and a clip-level sampler


@dataclass(frozen=True)
class Case:
    """One entry of the folder: where it goes, how it is made, and the expected reason
    (``None``: extracted)."""

    rel: str
    make: Callable[[Path, Path], object]  # (path, folder root) -> anything
    reason: str | None


def _copy_synth(index: int) -> Callable[[Path, Path], object]:
    """The ``index``-th synthetic video (made in ``<root>/../synth``)."""
    return lambda path, root: shutil.copy(sorted((root.parent / "synth" / "videos").glob("*.mp4"))[index], path)


def _truncated(fraction: float, faststart: bool) -> Callable[[Path, Path], object]:
    def make(path: Path, root: Path) -> None:
        src = vf.write_video(path.with_name(path.stem + "_src.mp4"), 60, pattern="textured", faststart=faststart)
        vf.write_truncated(src, path, fraction)
        src.unlink()

    return make


def _link(target: str) -> Callable[[Path, Path], object]:
    return lambda path, root: path.symlink_to(target)


def _linked_dataset(link: Path, elsewhere: Path) -> None:
    """A dataset kept elsewhere and linked into the folder, with a link back that loops."""
    vf.write_video(elsewhere / "x.mp4", 25, pattern="textured")
    (elsewhere / "back").symlink_to(link.parent, target_is_directory=True)
    link.rmdir()
    link.symlink_to(elsewhere, target_is_directory=True)


def _unreadable(path: Path, root: Path) -> None:
    vf.write_video(path, 20)
    path.chmod(0)


CASES = [
    # extracted
    Case("good/a.avi", lambda p, r: vf.write_video(p, 20, codec="mpeg4"), None),  # sorts first: keeps id good/a
    Case("good/b.mp4", _copy_synth(1), None),
    Case("one/clip.mp4", _copy_synth(2), None),  # the same stem in two folders: two videos
    Case("two/clip.mp4", _copy_synth(3), None),
    Case("vidéo été/日本語 clip #1 50%.mp4", _copy_synth(4), None),  # non-ASCII, spaces, # and %
    Case("odd/ünïcödé_日本.mp4", lambda p, r: vf.write_video(p, 30, pattern="textured"), None),
    Case("odd/rotated.mp4", lambda p, r: vf.write_video(p, 30, rotation=-90), None),
    Case("odd/ten_bit.mp4", lambda p, r: vf.write_video(p, 30, pix_fmt="yuv420p10le"), None),
    Case("odd/ten_bit_hevc.mp4", lambda p, r: vf.write_video(p, 30, codec="hevc", pix_fmt="yuv420p10le", open_gop=True),
         None),
    Case("odd/odd_size.mp4", lambda p, r: vf.write_video(p, 30, size=(65, 49), pix_fmt="yuv444p"), None),
    Case("odd/narrow.mp4", lambda p, r: vf.write_video(p, 30, size=(16, 96)), None),
    Case("odd/huge.mp4", lambda p, r: vf.write_video(p, 3, size=(3840, 2160), gop=None), None),
    Case("odd/one_frame.mp4", lambda p, r: vf.write_video(p, 1), None),
    Case("odd/vfr.mp4", lambda p, r: vf.write_vfr_video(p, [0.04] * 10 + [0.3] * 4 + [0.01] * 6), None),
    Case("odd/anim.gif", lambda p, r: vf.write_video(p, 12, codec="gif"), None),
    Case("linked/x.mp4", lambda p, r: _linked_dataset(p.parent, r.parent / "elsewhere"), None),
    # dead letters
    Case("bad/zero.mp4", lambda p, r: vf.write_zero_byte(p), "file is empty (0 bytes)"),
    Case("bad/random.mp4", lambda p, r: vf.write_random_bytes(p), "not a readable video container"),
    Case("bad/notes.mp4", lambda p, r: vf.write_text_as_mp4(p), "not a readable video container"),
    Case("bad/audio.mp4", lambda p, r: vf.write_audio_only(p), "no video stream (streams: audio)"),
    Case("bad/no_frames.mp4", lambda p, r: vf.write_video(p, 0), "no video stream"),
    Case("bad/undecodable.mp4", lambda p, r: vf.write_undecodable(p), "no decodable video frames"),
    Case("bad/corrupt.mp4", lambda p, r: vf.write_corrupt(p), "not a readable video container"),
    Case("bad/cut_05.mp4", _truncated(0.05, faststart=False), "not a readable video container"),
    Case("bad/cut_50.mp4", _truncated(0.5, faststart=False), "not a readable video container"),
    Case("bad/cut_95.mp4", _truncated(0.95, faststart=False), "not a readable video container"),
    Case("bad/cut_head_03.mp4", _truncated(0.03, faststart=True), "not a readable video container"),
    Case("bad/cut_head_50.mp4", _truncated(0.5, faststart=True), "could not be decoded"),
    Case("bad/cut_head_90.mp4", _truncated(0.9, faststart=True), "could not be decoded"),
    Case("bad/gone.mp4", _link("nowhere/gone.mp4"), "broken symbolic link (its target nowhere/gone.mp4 does not exist)"),
    Case("bad/pipe.mp4", lambda p, r: os.mkfifo(p), "not a regular file"),
    Case("bad/locked.mp4", _unreadable, "permission denied"),  # root reads it anyway: see the test
    Case("good/a.mp4", _copy_synth(0), "video id 'good/a' is already taken by "),
]
LOCKED = "bad/locked.mp4"


def _vid(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    make_synth(base / "synth", 5, seed=3)
    root = base / "videos"
    for case in CASES:
        path = root / case.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        case.make(path, root)
    (root / "good" / "loop").symlink_to(root, target_is_directory=True)  # a link loop inside the folder
    (root / "bad" / "readme.txt").write_text("no video extension: never listed\n")
    expected = {c.rel: c.reason for c in CASES}
    if os.access(root / LOCKED, os.R_OK):  # running as root: permissions do not stop reading
        expected[LOCKED] = None
    return root, expected


@pytest.fixture(scope="module")
def extracted(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("features")
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("pipeline.extract_job")
    logger.addHandler(handler)
    try:
        summary = run_extraction(str(root), str(out), tiny_config("output.shard_size=8"), extractors=list(EXTRACTORS),
                                 beam_args=IN_PROCESS, progress=False)
    finally:
        logger.removeHandler(handler)
    return out, summary, warnings


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / ERRORS_FILE).read_text(encoding="utf-8").splitlines()]


def test_ids_that_captions_cannot_name_are_extracted_with_a_warning(extracted):
    out, _, warnings = extracted
    assert "vidéo été/日本語 clip #1 50%" in read_rows(out / "clip", "parquet").features
    assert "odd/ünïcödé_日本" in read_rows(out / "clip", "parquet").features
    assert warnings == [
        "1 video id(s) contain '#' or whitespace, which caption files cannot name (caption ids are "
        "'<video id>#<n>'): 'vidéo été/日本語 clip #1 50%'; rename those files to train or benchmark on them"
    ]


def test_every_good_video_is_extracted_once_and_nothing_else(corpus, extracted):
    root, expected = corpus
    out, summary, _ = extracted
    done = sorted(_vid(rel) for rel, reason in expected.items() if reason is None)
    failed = [rel for rel, reason in expected.items() if reason is not None]
    assert (summary.total, summary.done, summary.failed) == (len(expected), len(done), len(failed))
    for name in EXTRACTORS:
        parquet, hdf5 = read_rows(out / name, "parquet"), read_rows(out / name, "hdf5")
        # links followed once: no 'good/loop/...' or 'linked/back/...' copies of the same videos
        assert sorted(parquet.features) == done
        assert sorted(hdf5.features) == done
        for vid in done:
            assert np.isfinite(parquet.frames[vid]).all(), vid
    assert leftover_files(out) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.reason is not None], ids=lambda c: c.rel)
def test_each_bad_entry_is_a_dead_letter_naming_its_path_and_reason(corpus, extracted, case):
    root, expected = corpus
    out, _, _ = extracted
    records = [r for r in _errors(out) if r["path"] == str(root / case.rel)]
    if expected[case.rel] is None:  # the unreadable file, when the tests run as root
        assert records == []
        return
    assert sorted(r["extractor"] for r in records) == sorted(EXTRACTORS)  # one per extractor, never twice
    for record in records:
        assert record["video_id"] == _vid(case.rel)
        assert case.reason in record["reason"], record
        assert "\n" not in record["reason"] and "Traceback" not in record["reason"]


@pytest.mark.parametrize("rel", ["odd/rotated.mp4", "odd/narrow.mp4", "odd/ten_bit.mp4", "odd/ten_bit_hevc.mp4", "odd/huge.mp4",
                                 "odd/one_frame.mp4", "vidéo été/日本語 clip #1 50%.mp4", "linked/x.mp4", "good/a.avi"])
def test_unusual_videos_get_the_features_of_the_bare_decoder_calls(corpus, extracted, rel):
    root, _ = corpus
    out, _, _ = extracted
    for name in EXTRACTORS:
        extractor = build_extractor(name, tiny_config().extractors[name], device="cpu")
        vector, matrix, indices = direct_features(extractor, root / rel)
        rows = read_rows(out / name, "parquet")
        vid = _vid(rel)
        np.testing.assert_allclose(rows.features[vid], vector, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rows.frames[vid], matrix, rtol=1e-5, atol=1e-6)
        assert np.array_equal(rows.indices[vid], indices)


def test_rotated_video_is_embedded_upright(corpus, extracted):
    """Its frame features are those of the same pattern stored upright, not of sideways frames."""
    from pipeline.decode import open_video
    from pipeline.sampling import sample_indices

    root, _ = corpus
    out, _, _ = extracted
    upright = vf.write_video(root.parent / "upright.mp4", 30)  # same frames, no display matrix
    extractor = build_extractor("clip", tiny_config().extractors["clip"], device="cpu")
    _, want, _ = direct_features(extractor, upright)
    with open_video(str(upright), backend="pyav") as reader:
        frames = reader.get_frames(sample_indices(extractor.config.sampling, reader.info.num_frames).ravel())
    sideways = extractor.embed(extractor.preprocess(np.ascontiguousarray(np.rot90(frames, 1, axes=(1, 2)))))
    got = read_rows(out / "clip", "parquet").frames["odd/rotated"]
    assert np.abs(got - want).max() < 0.2 * np.abs(got - sideways).max()


def test_rerun_keeps_every_row_and_retries_only_the_failures(corpus, extracted, tmp_path):
    root, expected = corpus
    out, _, _ = extracted
    copy = tmp_path / "features"
    shutil.copytree(out, copy, symlinks=True)
    before = {n: read_rows(copy / n, "parquet") for n in EXTRACTORS}
    files = shard_files(copy)
    summary = run_extraction(str(root), str(copy), tiny_config("output.shard_size=8"), extractors=list(EXTRACTORS),
                             beam_args=IN_PROCESS, progress=False)
    failed = sum(reason is not None for reason in expected.values())
    assert (summary.done, summary.skipped) == (0, len(expected) - failed)
    assert summary.failed == failed - 1  # the duplicate id is refused before decoding
    assert shard_files(copy) == files
    for name in EXTRACTORS:
        after = read_rows(copy / name, "parquet")
        assert sorted(after.features) == sorted(before[name].features)
        for vid, vector in before[name].features.items():
            assert np.array_equal(after.features[vid], vector)
    assert sorted((r["path"], r["extractor"]) for r in _errors(copy)) == sorted(
        (r["path"], r["extractor"]) for r in _errors(out)
    )


# ------------------------------------------------------------------ the later stages
WORDS = ("red", "green", "blue", "circle", "square", "moves", "left", "right", "slowly", "quickly")


def test_later_stages_go_on_without_the_videos_whose_extraction_failed(corpus, extracted, tmp_path, caplog):
    """Captions and splits name every file of the folder, as a dataset release does; train,
    index and benchmark leave out the dead letters, say so, and use every other video."""
    from stage_fixtures import cli

    root, expected = corpus
    features = tmp_path / "features"
    shutil.copytree(extracted[0], features, symlinks=True)
    # caption ids are '<video id>#<n>': a video id with '#' or whitespace cannot be captioned
    # (the extraction warns about it); the non-ASCII 'odd/ünïcödé' stands for the rest
    done = sorted({_vid(rel) for rel, reason in expected.items() if reason is None and " " not in rel})
    failed = sorted({_vid(rel) for rel, reason in expected.items() if reason is not None} - set(done))
    splits = {"train": done[:10] + failed[:6], "val": done[10:14] + failed[6:9], "test": done[14:] + failed[9:]}
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    with open(data / "captions.jsonl", "w", encoding="utf-8") as f:
        for vid in done + failed:
            for _ in range(3):
                f.write(json.dumps({"video_id": vid, "caption": " ".join(rng.choice(WORDS, 5))}, ensure_ascii=False) + "\n")
    for name, ids in splits.items():
        (data / f"{name}.txt").write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")
    captions = data / "captions.jsonl"
    assert cli("extract-text", captions, "--out", features, "--config", "tiny", "--encoders", "clip,bow",
               "--no-progress") == 0

    run = tmp_path / "run"
    with caplog.at_level("WARNING", logger="pipeline.training_set"):
        assert cli("train", "--features", features, "--captions", captions, "--config", "tiny_laff_ml",
                   "--out", run, "--set", "epochs=1", "--no-progress") == 0
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert f"6 of 16 train videos left out: their extraction failed (see {features}/errors.jsonl)" in warned
    assert f"3 of 7 val videos left out" in warned
    assert f"{failed[0]} (clip: {expected[next(r for r in expected if _vid(r) == failed[0])]}" in warned

    index = tmp_path / "index"
    assert cli("index", "--run", run, "--out", index, "--split", "test", "--device", "cpu") == 0
    assert pq_ids(index) == sorted(splits["test"][: len(done) - 14])  # the test videos that have features
    report = tmp_path / "report"
    assert cli("benchmark", "--run", run, "--index", index, "--out", report) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["num_videos"] == len(done) - 14 and metrics["num_captions"] == 3 * (len(done) - 14)
    assert sorted(metrics["left_out_videos"]) == sorted(failed[9:])


def pq_ids(index: Path) -> list[str]:
    import pyarrow.parquet as pq

    return sorted(pq.read_table(index / "ids.parquet").column(0).to_pylist())


@pytest.mark.parametrize("line", ['{"path": "a.mp4", "video_id": "a"}', "not json", '["a list"]', "\udcff"],
                         ids=["missing_keys", "not_json", "not_an_object", "bad_utf8"])
def test_a_damaged_errors_file_is_named_by_every_reader(extracted, tmp_path, line, capsys):
    """errors.jsonl is read by the next extraction (to merge) and by train, index and benchmark."""
    from pipeline.extract_job import read_dead_letters
    from vidfuse.errors import VidfuseError

    errors = tmp_path / ERRORS_FILE
    good = (extracted[0] / ERRORS_FILE).read_bytes()
    errors.write_bytes(good + line.encode("utf-8", "surrogateescape") + b"\n")
    number = len(good.splitlines()) + 1
    with pytest.raises(VidfuseError, match=f"^{re.escape(str(errors))} line {number}: not an extraction error record$"):
        read_dead_letters(str(errors))
