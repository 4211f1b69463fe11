"""Feature folders are readable by standard tools: Arrow's dataset reader (``pq.read_table(folder)``,
which ``pd.read_parquet(folder)`` calls) reads the Parquet shards of one, skipping the manifest and
the HDF5 twins; folders written before those names changed are still read, and moved over on the
next write."""

from __future__ import annotations

import os

import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.features import load_feature_set
from pipeline.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME, read_manifest, write_manifest
from pipeline.shards import existing_ids, list_shards, write_shard
from pipeline.text_job import LEGACY_VOCAB_FILE, VOCAB_FILE, vocab_path
from shards_helpers import make_manifest, make_rows

BOTH = ("parquet", "hdf5")


def _folder(root, name="feat"):
    out = str(root / name)
    manifest = make_manifest(dim=8, formats=list(BOTH))
    write_manifest(out, manifest)
    rows = make_rows("v", 7, dim=8)
    write_shard(out, "part-00000", rows[:4], BOTH, manifest.hash())
    write_shard(out, "part-00001", rows[4:], BOTH, manifest.hash())
    manifest.shards = ["part-00000", "part-00001"]
    write_manifest(out, manifest)
    return out, rows


def test_arrow_reads_a_feature_folder_as_one_table(tmp_path):
    out, rows = _folder(tmp_path)
    table = pq.read_table(out)
    assert sorted(table.column("video_id").to_pylist()) == sorted(r.video_id for r in rows)
    assert ds.dataset(out, format="parquet").count_rows() == len(rows)
    assert sorted(os.listdir(out)) == [MANIFEST_NAME, "_part-00000.h5", "_part-00001.h5",
                                       "part-00000.parquet", "part-00001.parquet"]


def test_an_older_folder_still_reads_and_moves_to_the_new_names_on_its_next_write(tmp_path):
    out, rows = _folder(tmp_path)
    os.rename(os.path.join(out, MANIFEST_NAME), os.path.join(out, LEGACY_MANIFEST_NAME))
    for stem in ("part-00000", "part-00001"):
        os.rename(os.path.join(out, f"_{stem}.h5"), os.path.join(out, f"{stem}.h5"))
    assert read_manifest(out).shards == ["part-00000", "part-00001"]
    assert existing_ids(out) == {r.video_id for r in rows}
    for fmt in BOTH:
        assert sorted(load_feature_set(out, fmt).ids) == sorted(r.video_id for r in rows)
    assert [os.path.basename(p) for p in list_shards(out, "hdf5")] == ["part-00000.h5", "part-00001.h5"]
    write_manifest(out, read_manifest(out))
    assert MANIFEST_NAME in os.listdir(out) and LEGACY_MANIFEST_NAME not in os.listdir(out)


def test_the_bow_vocabulary_is_found_under_either_name(tmp_path):
    assert vocab_path(str(tmp_path)) == os.path.join(str(tmp_path), VOCAB_FILE) and VOCAB_FILE.startswith("_")
    (tmp_path / LEGACY_VOCAB_FILE).write_text("{}")
    assert vocab_path(str(tmp_path)) == os.path.join(str(tmp_path), LEGACY_VOCAB_FILE)
    (tmp_path / VOCAB_FILE).write_text("{}")
    assert vocab_path(str(tmp_path)) == os.path.join(str(tmp_path), VOCAB_FILE)
