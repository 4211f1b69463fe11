"""Small defects found at real sizes: an empty search query, a deleted .h5 twin, the umask."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from index.faiss_index import VideoIndex
from index.report import write_text
from pipeline.features import load_feature_set
from pipeline.manifest import write_manifest
from pipeline.shards import FeatureSetError, write_shard
from shards_helpers import make_manifest, make_rows
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)


def test_an_empty_search_query_is_refused(stage_data, capsys):
    run = trained_run(stage_data, "tiny_laff_ml", "epochs=1")
    index = built_index(stage_data, run)
    capsys.readouterr()  # what building the run and index logged
    for query in ("", "   "):
        assert cli("search", "--run", run, "--index", index, query) == 2
        err = capsys.readouterr().err
        assert err.strip() == "vidfuse search: error: an empty QUERY: give the words to search for", err


@pytest.mark.parametrize("shards", [1, 2])
def test_a_deleted_h5_twin_is_named_as_the_missing_file(tmp_path, shards):
    folder = tmp_path / "clip"
    manifest = make_manifest()
    stems = ["part-a", "part-b"][:shards]
    finals = [write_shard(str(folder), s, make_rows(s, 3), manifest.formats, manifest.hash()) for s in stems]
    manifest.shards = stems
    write_manifest(str(folder), manifest)
    h5 = next(p for p in finals[0] if p.endswith(".h5"))
    os.remove(h5)
    with pytest.raises(FeatureSetError) as err:
        load_feature_set(str(folder))
    assert f"'{os.path.basename(h5)}'" in str(err.value) and "part-a.parquet" not in str(err.value), err.value


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_index_folders_and_report_files_follow_the_umask(tmp_path, umask_022):
    index = VideoIndex.build(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], device="cpu")
    index.save(str(tmp_path / "index"))
    assert _mode(tmp_path / "index") == 0o755
    index.save(str(tmp_path / "index"))  # a save over an existing folder too
    assert _mode(tmp_path / "index") == 0o755
    write_text(str(tmp_path / "report" / "table.md"), "| a |\n")
    assert _mode(tmp_path / "report" / "table.md") == 0o644
    os.umask(0o077)
    write_text(str(tmp_path / "report" / "private.md"), "| b |\n")
    assert _mode(tmp_path / "report" / "private.md") == 0o600
