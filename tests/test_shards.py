"""Feature shards (Parquet/HDF5), manifest.json, and the FeatureSet reader."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import shards as shards_mod
from pipeline.features import FeatureSet, MissingIdError, load_feature_set
from pipeline.manifest import (
    ManifestError,
    ManifestMismatchError,
    check_compatible,
    read_manifest,
    write_manifest,
)
from pipeline.shards import (
    FeatureSetError,
    ShardError,
    existing_ids,
    incomplete_shards,
    list_shards,
    remove_incomplete_shards,
    write_shard,
)
from vidfuse.errors import VidfuseError

from shards_helpers import ObjectStoreFileSystem, make_manifest, make_rows

BOTH = ["parquet", "hdf5"]


def _folder(tmp_path, rows_per_shard=(5, 4), frames=True, formats=BOTH, dim=8, name="feat"):
    """A feature folder with a manifest and shards part-00000.. of the given sizes; returns (dir, manifest, rows)."""
    out = str(tmp_path / name)
    manifest = make_manifest(dim=dim, level="frame" if frames else "video", formats=formats)
    write_manifest(out, manifest)
    rows = []
    for s, n in enumerate(rows_per_shard):
        part = make_rows(f"s{s}v", n, dim=dim, frames=frames, seed=s)
        write_shard(out, f"part-{s:05d}", part, formats, manifest.hash())
        rows.extend(part)
    return out, manifest, rows


def _expected_offsets(rows):
    return np.concatenate([[0], np.cumsum([len(r.frames) for r in rows])])


@pytest.mark.parametrize("fmt", BOTH)
def test_round_trip_with_frames(tmp_path, fmt):
    out, manifest, rows = _folder(tmp_path)
    fs = load_feature_set(out, fmt)
    assert fs.ids == [r.video_id for r in rows]
    assert fs.dim == 8 and fs.has_frames and fs.manifest == manifest
    assert fs.features.dtype == np.float32 and fs.features.shape == (len(rows), 8)
    np.testing.assert_array_equal(fs.features, np.stack([r.feature for r in rows]))
    np.testing.assert_array_equal(fs.frames_matrix, np.concatenate([r.frames for r in rows]))
    np.testing.assert_array_equal(fs.offsets, _expected_offsets(rows))
    np.testing.assert_array_equal(fs.num_frames, [r.num_frames for r in rows])
    for r in rows:
        np.testing.assert_array_equal(fs.get(r.video_id), r.feature)
        np.testing.assert_array_equal(fs.frames(r.video_id), r.frames)
        expected_idx = np.zeros(0, np.int64) if r.frame_indices is None else r.frame_indices
        np.testing.assert_array_equal(fs.frame_indices(r.video_id), expected_idx)


def test_parquet_and_hdf5_load_identical(tmp_path):
    out, _, _ = _folder(tmp_path, rows_per_shard=(3, 6, 2))
    a, b = load_feature_set(out, "parquet"), load_feature_set(out, "hdf5")
    assert a.ids == b.ids
    for attr in ("features", "frames_matrix", "offsets", "num_frames"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)
    for video_id in a.ids:
        np.testing.assert_array_equal(a.frame_indices(video_id), b.frame_indices(video_id))
    assert load_feature_set(out).fmt == "parquet"  # default: parquet when present


@pytest.mark.parametrize("fmt", BOTH)
def test_round_trip_without_frames(tmp_path, fmt):
    out, _, rows = _folder(tmp_path, frames=False, formats=[fmt])
    fs = load_feature_set(out)
    assert fs.fmt == fmt and not fs.has_frames
    np.testing.assert_array_equal(fs.features, np.stack([r.feature for r in rows]))
    with pytest.raises(FeatureSetError, match="no frame-level features"):
        fs.frames(rows[0].video_id)
    with pytest.raises(FeatureSetError, match="no frame-level features"):
        _ = fs.offsets


def test_parquet_schema_matches_design(tmp_path):
    out, manifest, _ = _folder(tmp_path, formats=["parquet"])
    schema = pq.read_schema(list_shards(out, "parquet")[0])
    assert schema.field("video_id").type == pa.string()
    assert schema.field("num_frames").type == pa.int64()
    assert schema.field("frame_indices").type == pa.list_(pa.int64())
    assert schema.field("feature").type == pa.list_(pa.float32(), 8)
    assert schema.field("frames").type == pa.list_(pa.list_(pa.float32(), 8))
    assert schema.metadata[b"manifest_hash"].decode() == manifest.hash()
    # video-level shards keep the column, null
    out2, _, _ = _folder(tmp_path, frames=False, formats=["parquet"], name="noframes")
    table = pq.read_table(list_shards(out2, "parquet")[0])
    assert table.column("frames").null_count == table.num_rows


def test_hdf5_layout(tmp_path):
    import h5py

    out, manifest, rows = _folder(tmp_path, rows_per_shard=(4,), formats=["hdf5"])
    with h5py.File(list_shards(out, "hdf5")[0], "r") as f:
        assert f.attrs["manifest_hash"] == manifest.hash()
        assert f["video_ids"].asstr()[()].tolist() == [r.video_id for r in rows]
        assert f["features"].shape == (4, 8) and f["features"].dtype == np.float32
        assert f["frames"].shape == (sum(len(r.frames) for r in rows), 8)
        np.testing.assert_array_equal(f["offsets"][()], _expected_offsets(rows))
        assert f["frame_indices_offsets"].shape == (5,)


def test_temp_files_ignored_and_never_read(tmp_path):
    out, manifest, rows = _folder(tmp_path, rows_per_shard=(3,))
    # A killed writer leaves temps: garbage bytes under every temp name the writer uses.
    for ext in (".parquet", ".h5"):
        with open(os.path.join(out, f".tmp-part-00009.abcdef{ext}.partial"), "wb") as f:
            f.write(b"half a shard")
    assert [os.path.basename(p) for p in list_shards(out, "parquet")] == ["part-00000.parquet"]
    assert [os.path.basename(p) for p in list_shards(out, "hdf5")] == ["_part-00000.h5"]
    assert existing_ids(out) == {r.video_id for r in rows}
    for fmt in BOTH:
        assert load_feature_set(out, fmt).ids == [r.video_id for r in rows]
    with pytest.raises(ShardError, match="temporary"):
        shards_mod.open_shard(os.path.join(out, ".tmp-part-00009.abcdef.parquet.partial"))
    removed = remove_incomplete_shards(out)
    assert sorted(os.path.basename(p) for p in removed) == [
        ".tmp-part-00009.abcdef.h5.partial", ".tmp-part-00009.abcdef.parquet.partial"
    ]


@pytest.mark.parametrize("fail_in", ["parquet", "hdf5"])
def test_failed_write_leaves_no_shard(tmp_path, monkeypatch, fail_in):
    out = str(tmp_path / "feat")

    def boom(path, packed, manifest_hash):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setitem(shards_mod._WRITERS, fail_in, boom)
    with pytest.raises(RuntimeError, match="killed"):
        write_shard(out, "part-00000", make_rows("v", 3), BOTH, "h")
    assert os.listdir(out) == []  # neither format under a final name, temps cleaned up


def test_orphan_of_one_format_is_not_complete(tmp_path):
    """Killed between the two renames: the parquet exists, its .h5 twin does not."""
    out, manifest, rows = _folder(tmp_path, rows_per_shard=(3, 2))
    os.remove(os.path.join(out, "_part-00001.h5"))
    orphan = [r.video_id for r in rows[3:]]
    assert existing_ids(out) == {r.video_id for r in rows[:3]}  # a rerun re-extracts the orphan's videos
    assert [os.path.basename(p) for p in list_shards(out, "parquet")] == ["part-00000.parquet"]
    assert [os.path.basename(p) for p in incomplete_shards(out)] == ["part-00001.parquet"]
    # rerun writes those videos again under a new name: the folder stays loadable, no duplicates
    write_shard(out, "part-00002", rows[3:], BOTH, manifest.hash())
    fs = load_feature_set(out, "parquet")
    assert fs.ids == [r.video_id for r in rows[:3]] + orphan
    assert [os.path.basename(p) for p in remove_incomplete_shards(out)] == ["part-00001.parquet"]
    assert existing_ids(out) == {r.video_id for r in rows}


def test_existing_ids_reads_complete_shards(tmp_path):
    assert existing_ids(str(tmp_path / "nothing-here")) == set()
    out, _, rows = _folder(tmp_path, rows_per_shard=(4, 3))
    assert existing_ids(out) == {r.video_id for r in rows}
    assert existing_ids(out, formats=["hdf5"]) == {r.video_id for r in rows}


def test_foreign_manifest_hash_refused(tmp_path):
    out, manifest, _ = _folder(tmp_path, rows_per_shard=(3,))
    other = make_manifest(config={"model": "ViT-L-14", "pretrained": None, "num_frames": 4})
    write_shard(out, "part-00007", make_rows("x", 2), BOTH, other.hash())
    for fmt in BOTH:
        with pytest.raises(ShardError) as err:
            load_feature_set(out, fmt)
        msg = str(err.value)
        assert out in msg and "part-00007" in msg and other.hash() in msg and manifest.hash() in msg


@pytest.mark.parametrize("fmt", BOTH)
def test_duplicate_id_across_shards_refused(tmp_path, fmt):
    out, manifest, rows = _folder(tmp_path, rows_per_shard=(3,), formats=[fmt])
    write_shard(out, "part-00001", [rows[1]], [fmt], manifest.hash())
    with pytest.raises(ShardError, match=rf"{rows[1].video_id!r}.*part-00000.*part-00001"):
        load_feature_set(out)


def test_duplicate_id_within_shard_refused_by_writer(tmp_path):
    rows = make_rows("v", 2)
    with pytest.raises(ValueError, match="duplicate"):
        write_shard(str(tmp_path), "part-0", rows + [rows[0]], ["parquet"], "h")


def _truncate(path, keep=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


@pytest.mark.parametrize("fmt,ext", [("parquet", ".parquet"), ("hdf5", ".h5")])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_shard_named(tmp_path, fmt, ext, keep):
    out, _, _ = _folder(tmp_path, rows_per_shard=(3, 4), formats=[fmt])
    bad = os.path.join(out, ("_" if fmt == "hdf5" else "") + "part-00001" + ext)
    _truncate(bad, keep)
    with pytest.raises(ShardError, match="part-00001" + ext.replace(".", r"\.")):
        fs = load_feature_set(out)
        _ = fs.frames_matrix
    with pytest.raises(ShardError, match="part-00001"):
        existing_ids(out)


@pytest.mark.parametrize("fmt", BOTH)
def test_nonfinite_rows_refused_naming_ids(tmp_path, fmt):
    out = str(tmp_path / "feat")
    manifest = make_manifest(formats=[fmt])
    write_manifest(out, manifest)
    rows = make_rows("v", 5)
    rows[1].feature[3] = np.nan
    rows[4].feature[0] = np.inf
    write_shard(out, "part-00000", rows, [fmt], manifest.hash())
    with pytest.raises(ShardError, match=r"2 row\(s\) hold NaN/inf.*'v1', 'v4'"):
        load_feature_set(out)


@pytest.mark.parametrize("fmt", BOTH)
def test_nonfinite_frames_refused_naming_ids(tmp_path, fmt):
    out = str(tmp_path / "feat")
    manifest = make_manifest(formats=[fmt])
    write_manifest(out, manifest)
    rows = make_rows("v", 4)
    rows[2].frames[-1, 1] = np.nan
    write_shard(out, "part-00000", rows, [fmt], manifest.hash())
    fs = load_feature_set(out)  # video-level vectors are fine; frames are read on first use
    with pytest.raises(ShardError, match="NaN/inf.*'v2'"):
        _ = fs.frames_matrix


@pytest.mark.parametrize("fmt", BOTH)
def test_dim_mismatch_refused(tmp_path, fmt):
    out = str(tmp_path / "feat")
    manifest = make_manifest(dim=16, formats=[fmt])
    write_manifest(out, manifest)
    write_shard(out, "part-00000", make_rows("v", 3, dim=8), [fmt], manifest.hash())
    with pytest.raises(ShardError, match=r"part-00000.*length 8.*dim is 16"):
        load_feature_set(out)


def test_variable_length_rows_named(tmp_path):
    """A hand-made Parquet shard with list<float> vectors: rows of the wrong length are named."""
    out = str(tmp_path / "feat")
    manifest = make_manifest(dim=3, level="video", formats=["parquet"])
    write_manifest(out, manifest)
    table = pa.table(
        {"video_id": ["a", "b", "c"], "feature": pa.array([[1, 2, 3], [1, 2], [4, 5, 6]], pa.list_(pa.float32()))}
    ).replace_schema_metadata({"manifest_hash": manifest.hash()})
    pq.write_table(table, os.path.join(out, "part-00000.parquet"))
    with pytest.raises(ShardError, match=r"1 feature row\(s\) do not have length 3.*\['b'\]"):
        load_feature_set(out)
    # without the bad row it loads, frames absent
    pq.write_table(table.filter(pa.array([True, False, True])), os.path.join(out, "part-00000.parquet"))
    fs = load_feature_set(out)
    assert fs.ids == ["a", "c"] and not fs.has_frames
    np.testing.assert_array_equal(fs.features, [[1, 2, 3], [4, 5, 6]])


def test_empty_and_unmanifested_folders(tmp_path):
    with pytest.raises(FeatureSetError, match="does not exist"):
        load_feature_set(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatureSetError, match=r"empty.*no _manifest\.json"):
        load_feature_set(str(empty))
    write_shard(str(empty), "part-00000", make_rows("v", 2), ["parquet"], "h")
    with pytest.raises(FeatureSetError, match="no _manifest.json"):
        load_feature_set(str(empty))
    noshards = str(tmp_path / "noshards")
    write_manifest(noshards, make_manifest())
    with pytest.raises(FeatureSetError, match="no complete shards"):
        load_feature_set(noshards)
    out, _, _ = _folder(tmp_path, formats=["hdf5"], name="h5only")
    with pytest.raises(FeatureSetError, match="no complete parquet shards.*hdf5"):
        load_feature_set(out, "parquet")
    with pytest.raises(FeatureSetError, match="unknown shard format"):
        load_feature_set(out, "csv")


def test_manifest_listed_shard_missing(tmp_path):
    out, manifest, _ = _folder(tmp_path, formats=["parquet"])
    manifest.shards = ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    write_manifest(out, manifest)
    with pytest.raises(FeatureSetError, match="part-00002.parquet"):
        load_feature_set(out)
    manifest.shards = ["part-00000", "part-00001"]  # stems (every format) are accepted too
    write_manifest(out, manifest)
    assert len(load_feature_set(out).ids) == 9
    manifest.shards = ["part-00000", "part-00003"]
    write_manifest(out, manifest)
    with pytest.raises(FeatureSetError, match="part-00003.parquet"):
        load_feature_set(out)


def test_index_of_get_and_subset(tmp_path):
    out, _, rows = _folder(tmp_path, rows_per_shard=(4, 4))
    fs = load_feature_set(out)
    assert isinstance(fs, FeatureSet) and len(fs) == 8 and "s1v2" in fs
    with pytest.raises(KeyError) as err:
        fs.index_of("nope")
    assert isinstance(err.value, VidfuseError) and "'nope'" in str(err.value) and out in str(err.value)
    want = ["s1v3", "s0v0", "s1v1"]
    sub = fs.subset(want)
    by_id = {r.video_id: r for r in rows}
    assert sub.ids == want
    np.testing.assert_array_equal(sub.features, np.stack([by_id[i].feature for i in want]))
    np.testing.assert_array_equal(sub.frames_matrix, np.concatenate([by_id[i].frames for i in want]))
    np.testing.assert_array_equal(sub.offsets, _expected_offsets([by_id[i] for i in want]))
    np.testing.assert_array_equal(sub.frame_indices("s1v3"), by_id["s1v3"].frame_indices)
    with pytest.raises(MissingIdError, match=r"3 of 4 requested id\(s\).*'x1', 'x2', 'x3'"):
        fs.subset(["s0v0", "x1", "x2", "x3"])


def test_writer_refuses_malformed_rows(tmp_path):
    rows = make_rows("v", 3)
    rows[1].frames = None
    with pytest.raises(ValueError, match="mixed"):
        write_shard(str(tmp_path), "p", rows, ["parquet"], "h")
    rows = make_rows("v", 3)
    rows[2].feature = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="v2"):
        write_shard(str(tmp_path), "p", rows, ["parquet"], "h")
    with pytest.raises(ValueError, match="no rows"):
        write_shard(str(tmp_path), "p", [], ["parquet"], "h")
    with pytest.raises(ValueError, match="shard name"):
        write_shard(str(tmp_path), ".tmp-x", make_rows("v", 1), ["parquet"], "h")
    assert os.listdir(tmp_path) == []


def test_object_store_paths(tmp_path):
    """gs://-like folders: append-only writes, no rename over objects, HDF5 copied from a local temp."""
    ObjectStoreFileSystem.ROOT = str(tmp_path)
    out = "vftest://bucket/feat"
    manifest = make_manifest()
    write_manifest(out, manifest)
    write_manifest(out, manifest)  # rewrite over an existing object
    rows = make_rows("v", 5)
    finals = write_shard(out, "part-00000", rows[:3], BOTH, manifest.hash())
    assert finals == [f"{out}/part-00000.parquet", f"{out}/_part-00000.h5"]
    write_shard(out, "part-00001", rows[3:], BOTH, manifest.hash())
    assert list_shards(out, "hdf5") == [f"{out}/_part-00000.h5", f"{out}/_part-00001.h5"]
    assert existing_ids(out) == {r.video_id for r in rows}
    a, b = load_feature_set(out, "parquet"), load_feature_set(out, "hdf5")
    assert a.ids == b.ids == [r.video_id for r in rows]
    np.testing.assert_array_equal(a.frames_matrix, b.frames_matrix)
    np.testing.assert_array_equal(b.features, np.stack([r.feature for r in rows]))
    assert sorted(os.listdir(tmp_path / "bucket" / "feat")) == [
        "_manifest.json", "_part-00000.h5", "_part-00001.h5", "part-00000.parquet", "part-00001.parquet"
    ]


# ------------------------------------------------------------------------------------ manifest


def test_manifest_round_trip(tmp_path):
    out = str(tmp_path / "feat")
    assert read_manifest(out) is None
    manifest = make_manifest(shards=["part-00000.parquet"], extra={"vocab": "vocab.txt"})
    write_manifest(out, manifest)
    assert read_manifest(out) == manifest
    data = json.loads(open(os.path.join(out, "_manifest.json")).read())
    assert data["manifest_hash"] == manifest.hash() and data["dim"] == 8
    assert [n for n in os.listdir(out)] == ["_manifest.json"]  # the temp was renamed away


def test_manifest_identity_and_hash():
    a = make_manifest()
    b = make_manifest(shards=["x.parquet"], versions={"torch": "0"}, formats=["hdf5"])
    assert a.hash() == b.hash()  # shards, versions, formats are not identity
    assert "shards" not in a.identity() and "versions" not in a.identity()
    assert make_manifest(dim=16).hash() != a.hash()
    assert make_manifest(sampling={"num_frames": 8, "mode": "uniform"}).hash() != a.hash()


def test_check_compatible_lists_differences():
    old = make_manifest()
    check_compatible(old, make_manifest(versions={"torch": "9"}))  # no error
    new = make_manifest(
        model="ViT-L-14",
        dim=768,
        sampling={"num_frames": 12, "mode": "uniform"},
        config={"model": "ViT-L-14", "pretrained": None, "num_frames": 12, "fps": 1},
    )
    with pytest.raises(ManifestMismatchError) as err:
        check_compatible(old, new)
    msg = str(err.value)
    assert isinstance(err.value, VidfuseError)
    for part in (
        "model: 'ViT-B-32' -> 'ViT-L-14'",
        "dim: 8 -> 768",
        "sampling.num_frames: 4 -> 12",
        "config.num_frames: 4 -> 12",
        "config.model: 'ViT-B-32' -> 'ViT-L-14'",
        "config.fps: absent -> 1",
    ):
        assert part in msg
    assert "weights" not in msg and "level" not in msg


def test_malformed_manifest(tmp_path):
    out = tmp_path / "feat"
    out.mkdir()
    (out / "_manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="manifest.json.*not valid JSON"):
        read_manifest(str(out))
    (out / "_manifest.json").write_text(json.dumps({"name": "clip", "kind": "video"}))
    with pytest.raises(ManifestError, match=r"missing field\(s\).*'model'"):
        read_manifest(str(out))
    data = make_manifest().to_dict()
    data["level"] = "pixel"
    (out / "_manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="level must be one of"):
        read_manifest(str(out))
    with pytest.raises(VidfuseError):  # reaches the CLI as one line
        load_feature_set(str(out))
