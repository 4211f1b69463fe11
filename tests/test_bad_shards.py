"""Bad-input corpus (issue #7): damaged feature shards and folders, runs and indexes, through
every stage that reads them, as a user runs them (`vidfuse train / index [--add] / benchmark /
search / extract`).

Policy asserted here:
- A damaged file (truncated, zero bytes, not Parquet/HDF5, a Parquet/HDF5 pair that disagree,
  a manifest that does not describe its shards, ids held twice) makes the whole feature set
  unusable: every stage reading it exits 2 with one line naming the file and the reason, and
  writes nothing (an existing index / run folder stays byte-identical).
- NaN/inf rows are refused, never skipped, but only by a stage that uses them: the message
  names each video (or caption), its shard and row; stages that do not read those rows go on
  and produce exactly their normal output.
- What a killed writer leaves (temp files) and shards a killed job did not yet list in the
  manifest are not damage: outputs equal those of the clean folder.
- A damaged checkpoint.pt / last.pt / index folder is refused naming the file; a refused train
  leaves the run byte-identical, and the way out the message names (--fresh, a rebuild without
  --add, deleting a shard and rerunning extract) works.

"Wrong row count": manifest.json records no row counts (DESIGN section 4), so the row-count
disagreements that can exist are inside one shard (HDF5 datasets of different lengths) and
between a shard's Parquet and HDF5 copies: both are cases below.

Covered elsewhere, not repeated (unit level unless said):
- truncated shard named, NaN vectors/frames named, shard dim != manifest dim, foreign manifest
  hash, duplicate ids, temp files never read, an orphan of one format, a manifest listing a
  missing shard, malformed manifest JSON/fields: tests/test_shards.py
- BigFile truncation / inconsistency: tests/test_bigfile.py
- index folder damage at VideoIndex level (truncated/garbage index.faiss, ids count/column,
  meta dim, bad meta JSON, interrupted swap): tests/test_index.py::test_load_refuses_damaged_folders
- an index of another run given to benchmark/search/index --add, a missing run or index:
  tests/test_index_stage.py::test_missing_or_mismatched_run_and_index_are_clear_errors
- features of other dims than the run (index, benchmark, search):
  tests/test_index_stage.py::test_features_of_other_dims_than_the_run_are_a_clear_error,
  and resuming train on them: tests/test_train_stage.py::test_resuming_with_features_of_other_dims_is_a_clear_error
- a video of the split missing from the features: tests/test_train_stage.py::test_features_missing_a_video_of_the_split_is_a_clear_error
- extract rerun removes temp files and orphans: tests/test_extract_job.py::test_rerun_removes_what_a_killed_writer_left
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from extract_helpers import IN_PROCESS
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)

VIDEO_SET = "x3d"  # the video feature set damaged (laff_ml reads clip and x3d vectors)
FRAME_SET = "clip"  # meanP / DLLFA read clip frames
TEXT_SET = "clip"  # text/clip


# --------------------------------------------------------------------------- helpers


def _error(capsys, command: str) -> str:
    """The one error line of a refused command (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"vidfuse {command}: error:"), err
    assert "Traceback" not in "\n".join(err), err
    return err[-1]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _file(folder: Path, stem: str, ext: str) -> Path:
    """Shard ``stem``'s file in the format of ``ext`` (HDF5 twins are named with a leading '_')."""
    return folder / f"{'_' if ext == '.h5' else ''}{stem}{ext}"


def _shards(folder: Path, ext: str = ".parquet") -> list[Path]:
    return sorted(folder.glob(f"{'_' if ext == '.h5' else ''}part-*{ext}"))


def _read_rows(path: Path, dim: int):
    """Every row of one shard file as FeatureRows."""
    from pipeline.shards import FeatureRow, open_shard

    with open_shard(str(path)) as shard:
        ids, feats = shard.ids(), shard.read_features(dim)
        nums = shard.read_num_frames()
        values, offsets = shard.read_frame_indices()
        frames = shard.read_frames(dim) if shard.has_frames else None
    return [
        FeatureRow(
            video_id=v, feature=feats[i].copy(), num_frames=int(nums[i]),
            frames=None if frames is None else frames[0][frames[1][i]:frames[1][i + 1]].copy(),
            frame_indices=values[offsets[i]:offsets[i + 1]].copy(),
        )
        for i, v in enumerate(ids)
    ]


def _locate(folder: Path, row_id: str) -> tuple[str, int]:
    """(shard stem, row) of the shard holding ``row_id``."""
    from pipeline.shards import open_shard

    for path in _shards(folder, ".parquet") or _shards(folder, ".h5"):
        with open_shard(str(path)) as shard:
            ids = shard.ids()
        if row_id in ids:
            return path.name.rsplit(".", 1)[0].lstrip("_"), ids.index(row_id)
    raise AssertionError(f"{row_id} not in {folder}")


def _rewrite(folder: Path, stem: str, edit: Callable[[list], None], formats=None) -> None:
    """Rewrite shard ``stem`` (every format it has, or ``formats``) with rows passed through ``edit``."""
    from pipeline.manifest import read_manifest
    from pipeline.shards import write_shard

    manifest = read_manifest(str(folder))
    have = [f for f, ext in (("parquet", ".parquet"), ("hdf5", ".h5")) if _file(folder, stem, ext).exists()]
    rows = _read_rows(_file(folder, stem, ".parquet" if "parquet" in have else ".h5"), manifest.dim)
    edit(rows)
    write_shard(str(folder), stem, rows, formats or have, manifest.hash())


def _poison(folder: Path, row_id: str, where: str, value: float = np.nan) -> str:
    """Put NaN/inf into one row's vector or frame matrix (every format); returns '<shard file> row <r>'."""
    stem, row = _locate(folder, row_id)

    def edit(rows):
        target = rows[row].feature if where == "vector" else rows[row].frames[-1]
        target[1] = value

    _rewrite(folder, stem, edit)
    ext = ".parquet" if (folder / f"{stem}.parquet").exists() else ".h5"
    return f"{_file(folder, stem, ext).name} row {row}"


def _hdf5_only(folder: Path) -> None:
    """The folder as `vidfuse extract --format hdf5` writes it (formats are not part of the hash)."""
    from pipeline.manifest import read_manifest, write_manifest

    for path in _shards(folder, ".parquet"):
        path.unlink()
    manifest = read_manifest(str(folder))
    manifest.formats = ["hdf5"]
    write_manifest(str(folder), manifest)


def _edit_manifest(folder: Path, rehash: bool = False, **changes) -> None:
    """Change manifest fields by hand (``rehash``: as a tool would, recomputing manifest_hash)."""
    from pipeline.manifest import read_manifest, write_manifest

    if rehash:
        manifest = read_manifest(str(folder))
        for key, value in changes.items():
            setattr(manifest, key, value)
        write_manifest(str(folder), manifest)
        return
    data = json.loads((folder / "_manifest.json").read_text())
    data.update(changes)
    (folder / "_manifest.json").write_text(json.dumps(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _copy_features(stage, tmp_path: Path) -> Path:
    out = tmp_path / "features"
    shutil.copytree(stage.features, out, ignore=shutil.ignore_patterns(".vidfuse.lock"))
    return out


@pytest.fixture(scope="module")
def runs(stage_data):
    return {"laff_ml": trained_run(stage_data, "tiny_laff_ml"), "meanp": trained_run(stage_data, "tiny_meanp")}


@pytest.fixture(scope="module")
def clean_one_epoch(stage_data, tmp_path_factory) -> Path:
    """LAFF-ml trained one epoch on the clean features (what `_train` runs)."""
    out = tmp_path_factory.mktemp("clean") / "run"
    assert _train(stage_data, stage_data.features, out) == 0
    return out


@pytest.fixture()
def features(stage_data, tmp_path) -> Path:
    return _copy_features(stage_data, tmp_path)


def _train(stage, features: Path, out: Path, config: str = "tiny_laff_ml", *extra: str) -> int:
    return cli("train", "--features", features, "--captions", stage.captions, "--config", config,
               "--set", "epochs=1", "--out", out, "--no-progress", *extra)


def _index(run: Path, features: Path, out: Path, *extra: str) -> int:
    return cli("index", "--run", run, "--features", features, "--out", out, "--device", "cpu", *extra)


def _index_vectors(index_dir: Path) -> tuple[list[str], np.ndarray]:
    from index.faiss_index import VideoIndex

    index = VideoIndex.load(str(index_dir))
    return list(index.ids), index.reconstruct_all()


# --------------------------------------------------------------------------- damaged video feature folders
# Each case damages a copy of features/x3d and returns the words the message must hold
# (file name, reason). Every stage that reads x3d refuses with them and writes nothing.


def _first(folder: Path, ext: str) -> Path:
    return _shards(folder, ext)[0]


def _dmg_truncated_parquet(f):
    path = _first(f, ".parquet")
    _truncate(path)
    return [path.name, "truncated or corrupt"]


def _dmg_zero_byte_parquet(f):
    path = _first(f, ".parquet")
    path.write_bytes(b"")
    return [path.name, "0 bytes"]


def _dmg_not_a_shard(f):
    path = _first(f, ".parquet")
    path.write_text("video_id,feature\nvideo1,0.5\n")  # a CSV under a shard's name
    return [path.name, "not a parquet file"]


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _dmg_flipped_byte_in_parquet_vectors(f):  # bit rot inside a data page; the footer is fine
    import pyarrow.parquet as pq

    # in every shard: a stage reads the vectors only of the shards holding the videos it needs
    for path in _shards(f, ".parquet"):
        meta = pq.ParquetFile(path).metadata.row_group(0)
        chunk = next(meta.column(i) for i in range(meta.num_columns) if meta.column(i).path_in_schema.startswith("feature"))
        start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
        _flip_byte(path, start + chunk.total_compressed_size // 2)
    return [".parquet", "cannot read column 'feature'"]


def _dmg_flipped_byte_in_hdf5_vectors(f):
    import h5py

    _hdf5_only(f)
    for path in _shards(f, ".h5"):  # in every shard, as above
        with h5py.File(path, "r") as h5:
            chunk = h5["features"].id.get_chunk_info(0)
        _flip_byte(path, chunk.byte_offset + chunk.size // 2)
    return [".h5", "cannot read dataset 'features'"]


def _dmg_truncated_hdf5_copy(f):  # the Parquet copy, which is read, is fine
    path = _first(f, ".h5")
    _truncate(path, 0.9)
    return [path.name, "truncated file", "same rows"]


def _dmg_zero_byte_hdf5_copy(f):
    path = _first(f, ".h5")
    path.write_bytes(b"")
    return [path.name, "cannot read the HDF5 file", "same rows"]


def _dmg_copies_hold_other_ids(f):
    stem = _first(f, ".parquet").stem
    _rewrite(f, stem, lambda rows: rows.reverse(), formats=["hdf5"])
    return [_file(f, stem, ".h5").name, "disagree", "row 0 holds id"]


def _dmg_copies_hold_other_row_counts(f):
    stem = _first(f, ".parquet").stem
    n = len(_read_rows(_file(f, stem, ".h5"), 128))
    _rewrite(f, stem, lambda rows: rows.pop(), formats=["hdf5"])
    return [_file(f, stem, ".h5").name, "disagree", f"rows {n} vs {n - 1}"]


def _dmg_shard_of_other_dim(f):
    from pipeline.manifest import read_manifest
    from pipeline.shards import FeatureRow, write_shard

    manifest = read_manifest(str(f))
    rows = [FeatureRow(video_id=f"extra{i}", feature=np.ones(96, np.float32), frames=np.ones((2, 96), np.float32))
            for i in range(2)]
    write_shard(str(f), "part-zzzz", rows, ["parquet", "hdf5"], manifest.hash())
    return ["part-zzzz.parquet", "length 96", "manifest dim is 128"]


def _dmg_ids_in_two_shards(f):
    shard = _first(f, ".parquet")
    for ext in (".parquet", ".h5"):
        shutil.copy(_file(f, shard.stem, ext), _file(f, "part-copy", ext))
    return [shard.name, "part-copy.parquet", "more than one shard"]


def _dmg_manifest_lists_lost_shard(f):
    stem = _first(f, ".parquet").stem
    for ext in (".parquet", ".h5"):
        _file(f, stem, ext).unlink()
    return ["manifest.json lists shard(s) missing", stem, "rerun the extraction"]


def _dmg_manifest_dim_edited(f):
    _edit_manifest(f, dim=99)
    return ["manifest.json", "edited after extraction"]


def _dmg_manifest_name_edited(f):
    _edit_manifest(f, name="clip")
    return ["manifest.json", "edited after extraction"]


def _dmg_manifest_dim_rewritten(f):
    _edit_manifest(f, rehash=True, dim=99)
    return [_first(f, ".parquet").name, "length 128", "manifest dim is 99"]


def _dmg_manifest_of_other_set(f):  # the clip folder copied over x3d: consistent, but not x3d
    for p in f.iterdir():
        p.unlink()
    for p in (f.parent / FRAME_SET).iterdir():
        shutil.copy(p, f / p.name)
    return ["manifest.json describes feature set 'clip', not 'x3d'"]


def _dmg_manifest_corrupt_json(f):
    (f / "_manifest.json").write_text('{"name": "x3d", "dim": ')
    return ["manifest.json", "not valid JSON"]


def _dmg_manifest_missing(f):
    (f / "_manifest.json").unlink()
    return ["no _manifest.json"]


def _dmg_hdf5_ids_fewer_than_rows(f):  # one shard file whose datasets disagree on the row count
    import h5py

    _hdf5_only(f)
    path = _first(f, ".h5")
    with h5py.File(path, "r+") as h5:
        ids = h5["video_ids"].asstr()[()].tolist()
        del h5["video_ids"]
        h5.create_dataset("video_ids", data=ids[:-1], dtype=h5py.string_dtype("utf-8"))
    return [path.name, f"'video_ids' has {len(ids) - 1} rows, expected {len(ids)}"]


def _dmg_foreign_shard(f):  # a shard written under another extraction config
    from pipeline.shards import write_shard

    rows = _read_rows(_first(f, ".parquet"), 128)[:2]
    for r in rows:
        r.video_id += "-other"
    write_shard(str(f), "part-foreign", rows, ["parquet", "hdf5"], "0123456789abcdef")
    return ["part-foreign.parquet", "written under manifest 0123456789abcdef", "another config"]


FOLDER_DAMAGE = {
    "truncated_parquet": _dmg_truncated_parquet,
    "zero_byte_parquet": _dmg_zero_byte_parquet,
    "not_parquet_or_hdf5": _dmg_not_a_shard,
    "flipped_byte_in_parquet_vectors": _dmg_flipped_byte_in_parquet_vectors,
    "flipped_byte_in_hdf5_vectors": _dmg_flipped_byte_in_hdf5_vectors,
    "truncated_hdf5_copy": _dmg_truncated_hdf5_copy,
    "zero_byte_hdf5_copy": _dmg_zero_byte_hdf5_copy,
    "copies_hold_other_ids": _dmg_copies_hold_other_ids,
    "copies_hold_other_row_counts": _dmg_copies_hold_other_row_counts,
    "shard_of_other_dim": _dmg_shard_of_other_dim,
    "foreign_shard": _dmg_foreign_shard,
    "ids_in_two_shards": _dmg_ids_in_two_shards,
    "hdf5_ids_fewer_than_rows": _dmg_hdf5_ids_fewer_than_rows,
    "manifest_lists_lost_shard": _dmg_manifest_lists_lost_shard,
    "manifest_dim_edited": _dmg_manifest_dim_edited,
    "manifest_name_edited": _dmg_manifest_name_edited,
    "manifest_dim_rewritten": _dmg_manifest_dim_rewritten,
    "manifest_of_other_set": _dmg_manifest_of_other_set,
    "manifest_corrupt_json": _dmg_manifest_corrupt_json,
    "manifest_missing": _dmg_manifest_missing,
}


@pytest.mark.parametrize("case", list(FOLDER_DAMAGE))
def test_damaged_video_folder_is_refused_by_every_stage_and_nothing_is_written(
    stage_data, runs, features, tmp_path, capsys, case
):
    needles = FOLDER_DAMAGE[case](features / VIDEO_SET)
    run = runs["laff_ml"]
    index = tmp_path / "index"  # an index built before the damage: --add and a rebuild must keep it
    shutil.copytree(built_index(stage_data, run), index)
    run_copy = tmp_path / "run"  # a run trained before the damage: resuming it must keep it
    shutil.copytree(run, run_copy)
    before = _snapshot(index), _snapshot(run_copy)
    commands = {
        "train": lambda: _train(stage_data, features, run_copy),
        "train (new run)": lambda: _train(stage_data, features, tmp_path / "new-run"),
        "index": lambda: _index(run, features, tmp_path / "new-index"),
        "index --add": lambda: _index(run, features, index, "--add", "--split", "val"),
        "index (rebuild)": lambda: _index(run, features, index, "--split", "all"),
        "benchmark": lambda: cli("benchmark", "--run", run, "--index", index, "--features", features,
                                 "--out", tmp_path / "report"),
    }
    for what, command in commands.items():
        assert command() == 2, what
        err = _error(capsys, what.split()[0])
        for needle in needles:
            assert needle in err, (what, needle, err)
        assert "x3d" in err, err
    assert not any((tmp_path / name).exists() for name in ("new-run", "new-index", "report"))
    assert (_snapshot(index), _snapshot(run_copy)) == before


# --------------------------------------------------------------------------- extract resuming into a damaged folder


EXTRACT_REFUSALS = ["truncated_parquet", "zero_byte_parquet", "not_parquet_or_hdf5", "truncated_hdf5_copy",
                    "copies_hold_other_row_counts", "ids_in_two_shards", "foreign_shard", "manifest_dim_edited",
                    "manifest_corrupt_json"]


@pytest.mark.parametrize("case", EXTRACT_REFUSALS)
def test_extract_refuses_to_resume_into_a_damaged_folder(stage_data, features, capsys, case):
    """A resume trusts the rows on disk: it must not count a broken shard's videos as done."""
    needles = FOLDER_DAMAGE[case](features / VIDEO_SET)
    shards_before = {k: v for k, v in _snapshot(features).items() if "part-" in k}
    assert cli("extract", stage_data.dataset.videos_dir, "--out", features, "--config", "tiny",
               "--extractors", VIDEO_SET, "--no-progress", *IN_PROCESS) == 2
    err = _error(capsys, "extract")
    for needle in needles:
        assert needle in err, (needle, err)
    assert {k: v for k, v in _snapshot(features).items() if "part-" in k} == shards_before


def test_extract_into_a_folder_that_lost_its_manifest_refuses_shards_of_another_config(stage_data, features, capsys):
    """Without manifest.json the resume cannot tell foreign shards by the folder's manifest: the
    job writes its own manifest first, then every existing shard must carry its hash."""
    folder = features / VIDEO_SET
    (folder / "_manifest.json").unlink()
    args = ["extract", stage_data.dataset.videos_dir, "--out", features, "--config", "tiny", "--extractors", VIDEO_SET,
            "--no-progress", *IN_PROCESS]
    assert cli(*args, "--set", "extractors.x3d.sampling.clips=3") == 2
    err = _error(capsys, "extract")
    assert "written under manifest" in err and "part-" in err and "another config" in err


def test_the_way_out_the_messages_give_works(stage_data, features, tmp_path, capsys):
    """NaN in a train video: resuming extract keeps the row (a resume is by id), train refuses
    naming the shard; deleting that shard as told and rerunning extract re-extracts exactly its
    videos, with the rows of the clean extraction, and train then runs."""
    from pipeline.features import load_feature_set
    from pipeline.shards import open_shard

    folder = features / VIDEO_SET
    bad = stage_data.split("train")[7]
    place = _poison(folder, bad, "vector")
    stem = place.split(".", 1)[0].lstrip("_")
    extract = ["extract", stage_data.dataset.videos_dir, "--out", features, "--config", "tiny",
               "--extractors", VIDEO_SET, "--no-progress", *IN_PROCESS]
    assert cli(*extract) == 0
    assert "0 done, 80 skipped" in capsys.readouterr().out
    assert _train(stage_data, features, tmp_path / "run") == 2
    assert place in _error(capsys, "train")

    with open_shard(str(_file(folder, stem, ".h5"))) as shard:
        lost = shard.ids()  # the videos of the shard to delete
    for path in [*folder.glob(f"{stem}.*"), *folder.glob(f"_{stem}.*")]:
        path.unlink()
    assert cli(*extract) == 0
    assert f"{len(lost)} done, {80 - len(lost)} skipped" in capsys.readouterr().out
    clean = load_feature_set(str(stage_data.features / VIDEO_SET))
    fixed = load_feature_set(str(folder))
    assert sorted(fixed.ids) == sorted(clean.ids)
    np.testing.assert_allclose(fixed.subset(lost).features, clean.subset(lost).features, rtol=1e-5, atol=1e-6)
    assert _train(stage_data, features, tmp_path / "run") == 0


# --------------------------------------------------------------------------- NaN / inf rows


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_vector_of_a_train_video_refuses_training_only(stage_data, runs, features, tmp_path, capsys, fmt, value):
    """Train refuses naming video, shard and row; index and benchmark of the test split, which
    never read that video, give exactly the index of the clean features."""
    folder = features / VIDEO_SET
    if fmt == "hdf5":
        _hdf5_only(folder)
    bad = stage_data.split("train")[5]
    place = _poison(folder, bad, "vector", value)
    assert (".h5 row" in place) == (fmt == "hdf5")

    assert _train(stage_data, features, tmp_path / "run") == 2
    err = _error(capsys, "train")
    assert repr(bad) in err and place in err and "NaN/inf" in err and "feature vector" in err, err
    assert "leave those videos out of the split files" in err
    assert not (tmp_path / "run").exists()

    run = runs["laff_ml"]
    assert _index(run, features, tmp_path / "index") == 0
    ids, vectors = _index_vectors(tmp_path / "index")
    clean_ids, clean = _index_vectors(built_index(stage_data, run))
    assert ids == clean_ids == stage_data.split("test")
    np.testing.assert_array_equal(vectors, clean)
    assert cli("benchmark", "--run", run, "--index", tmp_path / "index", "--features", features,
               "--out", tmp_path / "report") == 0


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_nonfinite_vector_of_a_test_video_refuses_its_index_and_benchmark(stage_data, runs, features, tmp_path, capsys, fmt):
    """Training (train + val videos) goes on; indexing or benchmarking the test split refuses
    naming the video; an existing index is kept; the val split indexes in full."""
    folder = features / VIDEO_SET
    if fmt == "hdf5":
        _hdf5_only(folder)
    bad = stage_data.split("test")[2]
    place = _poison(folder, bad, "vector")
    run = runs["laff_ml"]
    index = tmp_path / "index"
    shutil.copytree(built_index(stage_data, run), index)
    before = _snapshot(index)

    for command, args in (("index", ("--run", run, "--features", features, "--out", index, "--device", "cpu")),
                          ("benchmark", ("--run", run, "--index", index, "--features", features,
                                         "--out", tmp_path / "report"))):
        assert cli(command, *args) == 2
        err = _error(capsys, command)
        assert repr(bad) in err and place in err and "NaN/inf" in err, err
    assert _snapshot(index) == before and not (tmp_path / "report").exists()

    assert _index(run, features, tmp_path / "val-index", "--split", "val") == 0
    assert _index_vectors(tmp_path / "val-index")[0] == stage_data.split("val")
    assert _train(stage_data, features, tmp_path / "run") == 0
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


@pytest.mark.parametrize("fmt", ["parquet", "hdf5"])
def test_nonfinite_frames_refuse_only_heads_that_read_frames(stage_data, runs, features, tmp_path, capsys, fmt):
    """NaN in one frame of a val video: meanP (reads clip frames) refuses naming it; LAFF (reads
    the pooled clip vector, which is finite) trains; the meanP index of the test split is the clean one.
    (LAFF-ml reads the frames: its frame level is multi-level LAFF's.)"""
    folder = features / FRAME_SET
    if fmt == "hdf5":
        _hdf5_only(folder)
    bad = stage_data.split("val")[0]
    place = _poison(folder, bad, "frames")

    assert _train(stage_data, features, tmp_path / "meanp", "tiny_meanp") == 2
    err = _error(capsys, "train")
    assert repr(bad) in err and place in err and "frame matrix" in err and "NaN/inf" in err, err
    assert not (tmp_path / "meanp").exists()
    assert _train(stage_data, features, tmp_path / "laff", "tiny_laff") == 0
    assert _train(stage_data, features, tmp_path / "laff_ml", "tiny_laff_ml") == 2
    err = _error(capsys, "train")
    assert repr(bad) in err and "frame matrix" in err, err

    meanp = runs["meanp"]
    assert _index(meanp, features, tmp_path / "index") == 0
    np.testing.assert_array_equal(_index_vectors(tmp_path / "index")[1],
                                  _index_vectors(built_index(stage_data, meanp))[1])


def test_nonfinite_frames_of_an_indexed_video_refuse_dllfa_search(stage_data, features, tmp_path, capsys):
    """DLLFA search re-ranks with the indexed videos' frames: it refuses naming the video, while
    the same query on the clean features answers."""
    run = trained_run(stage_data, "tiny_dllfa")
    index = built_index(stage_data, run)
    bad = stage_data.split("test")[4]
    place = _poison(features / FRAME_SET, bad, "frames", np.inf)
    assert cli("search", "--run", run, "--index", index, "--features", features, "a red circle") == 2
    err = _error(capsys, "search")
    assert repr(bad) in err and place in err and "frame matrix" in err, err
    assert cli("search", "--run", run, "--index", index, "-k", "3", "a red circle") == 0
    assert len([line for line in capsys.readouterr().out.splitlines() if not line.startswith("query:")]) == 3


# --------------------------------------------------------------------------- damage that is not damage


def _ok_temp_files(f):
    shard = _first(f, ".parquet")
    shutil.copy(shard, f / f".tmp-{shard.stem}.0123456789ab.parquet.partial")
    (f / f".tmp-part-dead.0123456789ab.h5.partial").write_bytes(b"half a shard")
    (f / ".tmp-0123456789ab-manifest.json.partial").write_text('{"name": ')


def _ok_shard_not_in_manifest(f):  # a job killed before its last manifest update
    data = json.loads((f / "_manifest.json").read_text())
    data["shards"] = data["shards"][1:]
    (f / "_manifest.json").write_text(json.dumps(data, indent=2))


@pytest.mark.parametrize("case", [_ok_temp_files, _ok_shard_not_in_manifest], ids=["killed_writer_temp_files",
                                                                                  "shard_not_yet_in_manifest"])
def test_what_a_killed_job_leaves_gives_the_clean_outputs(stage_data, runs, clean_one_epoch, features, tmp_path, case):
    case(features / VIDEO_SET)
    run = runs["laff_ml"]
    assert _index(run, features, tmp_path / "index", "--split", "all") == 0
    ids, vectors = _index_vectors(tmp_path / "index")
    assert sorted(ids) == sorted(stage_data.dataset.video_ids)
    clean_ids, clean = _index_vectors(built_index(stage_data, run))
    position = {v: i for i, v in enumerate(ids)}
    np.testing.assert_array_equal(vectors[[position[v] for v in clean_ids]], clean)

    # training reads the same rows: one epoch on the damaged copy = one epoch on the clean folder
    assert _train(stage_data, features, tmp_path / "run") == 0
    got = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    want = torch.load(clean_one_epoch / "checkpoint.pt", weights_only=False)["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)


def test_a_shard_not_yet_in_the_manifest_is_read_with_a_warning_that_the_set_may_be_incomplete(features, caplog):
    from pipeline.features import load_feature_set

    _ok_shard_not_in_manifest(features / VIDEO_SET)
    with caplog.at_level("WARNING", logger="pipeline.features"):
        load_feature_set(str(features / VIDEO_SET))
    assert "an extraction into it is running or was killed, so the set may be incomplete" in caplog.text
    assert "rerun `vidfuse extract` to finish it" in caplog.text


# --------------------------------------------------------------------------- text feature sets


def _text_other_set(f):  # text/bow copied over text/clip: consistent, but not text/clip
    for p in f.iterdir():
        p.unlink()
    for p in (f.parent / "bow").iterdir():
        shutil.copy(p, f / p.name)
    return ["manifest.json describes feature set 'text/bow', not 'text/clip'"]


# case -> (damage, what it damages: shards are read by train/benchmark, the manifest by search too)
TEXT_DAMAGE = {
    "truncated_parquet": (_dmg_truncated_parquet, "shards"),
    "zero_byte_hdf5_copy": (_dmg_zero_byte_hdf5_copy, "shards"),
    "not_parquet_or_hdf5": (_dmg_not_a_shard, "shards"),
    "caption_ids_in_two_shards": (_dmg_ids_in_two_shards, "shards"),
    "manifest_dim_edited": (_dmg_manifest_dim_edited, "manifest"),
    "manifest_of_other_set": (_text_other_set, "manifest"),
    "manifest_corrupt_json": (_dmg_manifest_corrupt_json, "manifest"),
    "manifest_missing": (_dmg_manifest_missing, "manifest"),
}


@pytest.mark.parametrize("case", list(TEXT_DAMAGE))
def test_damaged_text_folder(stage_data, runs, features, tmp_path, capsys, case):
    """Train and benchmark (which read caption features) refuse; search, which encodes queries
    with what the manifest describes, refuses manifest damage and answers despite damaged shards
    (it never reads them)."""
    damage, kind = TEXT_DAMAGE[case]
    needles = damage(features / "text" / TEXT_SET)
    run = runs["laff_ml"]
    index = built_index(stage_data, run)
    commands = {
        "train": lambda: _train(stage_data, features, tmp_path / "run"),
        "benchmark": lambda: cli("benchmark", "--run", run, "--index", index, "--features", features,
                                 "--out", tmp_path / "report"),
    }
    search = ("search", "--run", run, "--index", index, "--features", features, "-k", "2", "a red circle")
    if kind == "manifest":
        commands["search"] = lambda: cli(*search)
    for what, command in commands.items():
        assert command() == 2, what
        err = _error(capsys, what)
        for needle in needles:
            assert needle in err, (what, needle, err)
        assert "text/clip" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "report").exists()
    if kind == "shards":
        assert cli(*search) == 0
        assert capsys.readouterr().out.count("\n") == 3  # query line + 2 hits


@pytest.mark.parametrize("case", ["truncated", "missing", "not_a_vocabulary"])
def test_damaged_gru_vocabulary_is_refused_by_every_stage_that_tokenizes(stage_data, runs, features, tmp_path, capsys,
                                                                         case):
    """text/bow/_gru_vocab.json, the side file the learned 'gru' text feature reads (train, benchmark, search)."""
    vocab = features / "text" / "bow" / "_gru_vocab.json"
    {"truncated": _truncate, "missing": Path.unlink, "not_a_vocabulary": lambda p: p.write_text("{}")}[case](vocab)
    run = runs["laff_ml"]
    index = built_index(stage_data, run)
    for command, args in (("train", None), ("benchmark", ("--index", index, "--out", tmp_path / "report")),
                          ("search", ("--index", index, "a red circle"))):
        rc = _train(stage_data, features, tmp_path / "run") if args is None else cli(
            command, "--run", run, "--features", features, *args)
        assert rc == 2, command
        err = _error(capsys, command)
        assert str(vocab) in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("split,refused", [("train", "train"), ("test", "benchmark")])
def test_nonfinite_caption_vector_refuses_the_stage_that_reads_it(stage_data, runs, features, tmp_path, capsys,
                                                                   split, refused):
    folder = features / "text" / TEXT_SET
    caption = f"{stage_data.split(split)[1]}#2"
    place = _poison(folder, caption, "vector")
    run = runs["laff_ml"]
    commands = {
        "train": lambda: _train(stage_data, features, tmp_path / "run"),
        "benchmark": lambda: cli("benchmark", "--run", run, "--index", built_index(stage_data, run),
                                 "--features", features, "--out", tmp_path / "report"),
    }
    for what, command in commands.items():
        rc = command()
        if what != refused:
            assert rc == 0, what
            continue
        assert rc == 2, what
        err = _error(capsys, what)
        assert repr(caption) in err and place in err and "NaN/inf" in err and "extract-text" in err, err
    assert (tmp_path / "run" / "checkpoint.pt").is_file() == (refused != "train")
    if refused == "train":
        assert json.loads((tmp_path / "report" / "metrics.json").read_text())["num_videos"] == len(stage_data.split("test"))


# --------------------------------------------------------------------------- run checkpoints


def _ckpt_truncated(path: Path):
    _truncate(path)
    return "truncated or not a checkpoint"


def _ckpt_zero(path: Path):
    path.write_bytes(b"")
    return "truncated or not a checkpoint"


def _ckpt_text(path: Path):
    path.write_text("epoch 5 checkpoint\n")
    return "truncated or not a checkpoint"


def _ckpt_other_dict(path: Path):
    torch.save({"weights": [1, 2, 3]}, path)
    return "is not a vidfuse checkpoint"


def _ckpt_tensor(path: Path):
    torch.save(torch.zeros(3), path)
    return "is not a vidfuse checkpoint"


CHECKPOINT_DAMAGE = {"truncated": _ckpt_truncated, "zero_byte": _ckpt_zero, "text_file": _ckpt_text,
                     "other_dict": _ckpt_other_dict, "tensor": _ckpt_tensor}


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_damaged_checkpoint_is_refused_by_index_benchmark_and_search(stage_data, runs, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(runs["laff_ml"], run)
    reason = CHECKPOINT_DAMAGE[case](run / "checkpoint.pt")
    index = built_index(stage_data, runs["laff_ml"])
    for command, args in (("index", ("--out", tmp_path / "index", "--device", "cpu")),
                          ("benchmark", ("--index", index, "--out", tmp_path / "report")),
                          ("search", ("--index", index, "a red circle"))):
        assert cli(command, "--run", run, *args) == 2
        err = _error(capsys, command)
        assert str(run / "checkpoint.pt") in err and reason in err, err
    assert not (tmp_path / "index").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("case", list(CHECKPOINT_DAMAGE))
def test_damaged_resume_state_refuses_train_and_keeps_the_run(stage_data, runs, tmp_path, capsys, case):
    """last.pt unusable: train refuses naming it and --fresh, touching none of the run's files;
    --fresh then trains."""
    run = tmp_path / "run"
    shutil.copytree(runs["laff_ml"], run)
    reason = CHECKPOINT_DAMAGE[case](run / "last.pt")
    before = _snapshot(run)
    assert _train(stage_data, stage_data.features, run) == 2
    err = _error(capsys, "train")
    assert str(run / "last.pt") in err and reason in err and "--fresh" in err, err
    assert _snapshot(run) == before
    assert _train(stage_data, stage_data.features, run, "tiny_laff_ml", "--fresh") == 0
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 1


# --------------------------------------------------------------------------- index folders


def _idx_truncated_faiss(index: Path):
    _truncate(index / "index.faiss")
    return ["index.faiss", "not a readable FAISS index"]


def _idx_truncated_ids(index: Path):
    _truncate(index / "ids.parquet")
    return ["ids.parquet", "not a readable parquet file"]


def _idx_zero_byte_ids(index: Path):
    (index / "ids.parquet").write_bytes(b"")
    return ["ids.parquet", "not a readable parquet file"]


def _idx_meta_missing(index: Path):
    (index / "meta.json").unlink()
    return ["has no meta.json"]


def _idx_meta_corrupt(index: Path):
    (index / "meta.json").write_text('{"run": ')
    return ["meta.json", "not valid index metadata"]


def _idx_meta_stale_weights(index: Path):  # built from this run before it was retrained
    meta = json.loads((index / "meta.json").read_text())
    meta["extra"]["weights"] = "0123456789abcdef"
    (index / "meta.json").write_text(json.dumps(meta))
    return ["before it was retrained", "0123456789abcdef", "stale"]


def _idx_meta_other_head(index: Path):
    meta = json.loads((index / "meta.json").read_text())
    meta["head"] = "dllfa"
    (index / "meta.json").write_text(json.dumps(meta))
    return ["'dllfa'", "'laff_ml'", "stale"]


INDEX_DAMAGE = {"truncated_index_faiss": _idx_truncated_faiss, "truncated_ids_parquet": _idx_truncated_ids,
                "zero_byte_ids_parquet": _idx_zero_byte_ids, "meta_json_missing": _idx_meta_missing,
                "meta_json_corrupt": _idx_meta_corrupt, "meta_json_weights_of_a_retrained_run": _idx_meta_stale_weights,
                "meta_json_other_head": _idx_meta_other_head}


@pytest.mark.parametrize("case", list(INDEX_DAMAGE))
def test_damaged_index_folder_is_refused_and_a_rebuild_replaces_it(stage_data, runs, tmp_path, capsys, case):
    run = runs["laff_ml"]
    index = tmp_path / "index"
    shutil.copytree(built_index(stage_data, run), index)
    needles = INDEX_DAMAGE[case](index)
    before = _snapshot(index)
    for command, args in (("benchmark", ("--index", index, "--out", tmp_path / "report")),
                          ("search", ("--index", index, "a red circle")),
                          ("index", ("--out", index, "--add", "--split", "val", "--device", "cpu"))):
        assert cli(command, "--run", run, *args) == 2, command
        err = _error(capsys, command)
        assert str(index) in err, err
        for needle in needles:
            assert needle in err, (command, needle, err)
    assert "rebuild it without --add" in err
    assert _snapshot(index) == before and not (tmp_path / "report").exists()

    # the way out the message gives: rebuild without --add
    assert _index(run, stage_data.features, index) == 0
    np.testing.assert_array_equal(_index_vectors(index)[1], _index_vectors(built_index(stage_data, run))[1])


def test_retrained_run_makes_its_old_index_stale(stage_data, runs, tmp_path, capsys):
    """The real case behind meta_json_weights_of_a_retrained_run: retrain the run in place."""
    run = tmp_path / "run"
    shutil.copytree(runs["laff_ml"], run)
    assert _index(run, stage_data.features, tmp_path / "index") == 0
    assert _train(stage_data, stage_data.features, run, "tiny_laff_ml", "--fresh", "--set", "seed=1") == 0
    assert cli("search", "--run", run, "--index", tmp_path / "index", "a red circle") == 2
    assert "before it was retrained" in _error(capsys, "search")
