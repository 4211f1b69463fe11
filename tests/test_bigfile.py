"""LAFF / W2VV++ BigFile interchange: read, write, import into shards, export back."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.bigfile import (
    BigFileError,
    export_bigfile,
    import_bigfile,
    read_bigfile,
    split_frame_id,
    write_bigfile,
)
from pipeline.features import load_feature_set
from pipeline.manifest import read_manifest


def _laff_reader(path):
    """What LAFF's BigFile class does: shape.txt 'N D', ids by whitespace split, float32 rows."""
    n, d = map(int, open(os.path.join(path, "shape.txt")).readline().split())
    names = open(os.path.join(path, "id.txt")).read().strip().split()
    data = np.fromfile(os.path.join(path, "feature.bin"), dtype=np.float32).reshape(n, d)
    return names, data


def test_write_read_matches_laff_layout(tmp_path):
    ids = ["video0", "video1", "video10", "v-x_y"]
    matrix = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    path = str(tmp_path / "bf")
    write_bigfile(path, ids, matrix)
    assert sorted(os.listdir(path)) == ["feature.bin", "id.txt", "shape.txt"]
    assert open(os.path.join(path, "shape.txt")).read().strip() == "4 6"
    assert len(open(os.path.join(path, "id.txt")).read().strip().splitlines()) == 1  # one line, spaces
    names, data = _laff_reader(path)
    assert names == ids
    np.testing.assert_array_equal(data, matrix)
    got_ids, got = read_bigfile(path)
    assert got_ids == ids and isinstance(got, np.memmap) and got.dtype == np.float32
    np.testing.assert_array_equal(got, matrix)
    # overwrite in place: the new content replaces the old, no leftovers beside it
    write_bigfile(path, ids[:2], matrix[:2] * 2)
    got_ids, got = read_bigfile(path)
    assert got_ids == ids[:2]
    np.testing.assert_array_equal(got, matrix[:2] * 2)
    assert os.listdir(tmp_path) == ["bf"]


def test_read_refuses_inconsistent_bigfiles(tmp_path):
    path = str(tmp_path / "bf")
    write_bigfile(path, ["a", "b", "c"], np.ones((3, 4), np.float32))
    with open(os.path.join(path, "feature.bin"), "r+b") as f:
        f.truncate(3 * 4 * 4 - 4)
    with pytest.raises(BigFileError, match=r"feature\.bin.*truncated"):
        read_bigfile(path)
    write_bigfile(path, ["a", "b", "c"], np.ones((3, 4), np.float32))
    open(os.path.join(path, "id.txt"), "w").write("a b")
    with pytest.raises(BigFileError, match=r"id\.txt: holds 2 ids.*3"):
        read_bigfile(path)
    os.remove(os.path.join(path, "shape.txt"))
    with pytest.raises(BigFileError, match=r"missing \['shape\.txt'\]"):
        read_bigfile(path)


def test_write_refuses_ids_with_whitespace(tmp_path):
    with pytest.raises(BigFileError, match="whitespace"):
        write_bigfile(str(tmp_path / "bf"), ["a b", "c"], np.zeros((2, 3), np.float32))
    assert not (tmp_path / "bf").exists() and os.listdir(tmp_path) == []


def test_split_frame_id():
    assert split_frame_id("video7_12") == ("video7", 12)
    assert split_frame_id("-4wsuPCjDBc_5_15_3") == ("-4wsuPCjDBc_5_15", 3)
    with pytest.raises(BigFileError, match="video7"):
        split_frame_id("video7")


@pytest.mark.parametrize("formats", [("parquet",), ("hdf5",), ("parquet", "hdf5")])
def test_video_level_round_trip(tmp_path, formats):
    ids = [f"video{i}" for i in range(11)]
    matrix = np.random.default_rng(1).standard_normal((11, 5)).astype(np.float32)
    src, feat, back = (str(tmp_path / n) for n in ("src", "feat", "back"))
    write_bigfile(src, ids, matrix)
    manifest = import_bigfile(src, feat, "resnext101", formats=formats, shard_size=4)
    assert manifest.dim == 5 and manifest.level == "video" and manifest.formats == list(formats)
    assert read_manifest(feat) == manifest
    assert len(manifest.shards) == 3 * len(formats)
    for fmt in formats:
        fs = load_feature_set(feat, fmt)
        assert fs.ids == ids and not fs.has_frames
        np.testing.assert_array_equal(fs.features, matrix)
    export_bigfile(feat, back)
    got_ids, got = read_bigfile(back)
    assert got_ids == ids
    np.testing.assert_array_equal(got, matrix)


def test_frame_level_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    videos = {"video0": [0, 15, 30], "video12": [0, 15], "clip_a_b": [3, 7, 11, 100]}
    frame_ids = [f"{v}_{k}" for v, ks in videos.items() for k in ks]
    matrix = rng.standard_normal((len(frame_ids), 6)).astype(np.float32)
    src, feat, back = (str(tmp_path / n) for n in ("src", "feat", "back"))
    write_bigfile(src, frame_ids, matrix)

    manifest = import_bigfile(src, feat, "clip_frames", formats=("parquet", "hdf5"), frame_level=True, shard_size=2)
    assert manifest.level == "frame"
    for fmt in ("parquet", "hdf5"):
        fs = load_feature_set(feat, fmt)
        assert fs.ids == list(videos) and fs.has_frames
        start = 0
        for video_id, ks in videos.items():
            block = matrix[start : start + len(ks)]
            start += len(ks)
            np.testing.assert_array_equal(fs.frames(video_id), block)
            np.testing.assert_allclose(fs.get(video_id), block.mean(axis=0), rtol=1e-6)
            np.testing.assert_array_equal(fs.frame_indices(video_id), ks)
    export_bigfile(feat, back, frame_level=True)
    got_ids, got = read_bigfile(back)
    assert got_ids == frame_ids
    np.testing.assert_array_equal(got, matrix)
    # video-level export of the same folder: the mean-pooled vectors
    export_bigfile(feat, str(tmp_path / "pooled"))
    pooled_ids, pooled = read_bigfile(str(tmp_path / "pooled"))
    assert pooled_ids == list(videos)
    np.testing.assert_array_equal(pooled, load_feature_set(feat).features)


def test_frame_level_import_orders_frames_by_number(tmp_path):
    """Rows of a video may come in any order (and interleaved): frames are grouped and sorted by k."""
    rows = {"v_10": 10.0, "w_0": 5.0, "v_2": 2.0, "v_9": 9.0, "w_1": 6.0}
    src, feat = str(tmp_path / "src"), str(tmp_path / "feat")
    write_bigfile(src, list(rows), np.array([[x, -x] for x in rows.values()], np.float32))
    import_bigfile(src, feat, "f", frame_level=True)
    fs = load_feature_set(feat)
    assert fs.ids == ["v", "w"]
    np.testing.assert_array_equal(fs.frames("v")[:, 0], [2.0, 9.0, 10.0])
    np.testing.assert_array_equal(fs.frame_indices("v"), [2, 9, 10])
    np.testing.assert_array_equal(fs.offsets, [0, 3, 5])


def test_import_refusals(tmp_path):
    src, feat = str(tmp_path / "src"), str(tmp_path / "feat")
    write_bigfile(src, ["video1", "video2"], np.zeros((2, 3), np.float32))
    with pytest.raises(BigFileError, match="not of the form"):
        import_bigfile(src, feat, "f", frame_level=True)
    import_bigfile(src, feat, "f")
    with pytest.raises(BigFileError, match="already holds a feature set"):
        import_bigfile(src, feat, "f")
    with pytest.raises(BigFileError, match="not a BigFile folder"):
        import_bigfile(str(tmp_path / "nope"), str(tmp_path / "feat2"), "f")
    with pytest.raises(Exception, match="no frame-level features"):
        export_bigfile(feat, str(tmp_path / "out"), frame_level=True)
