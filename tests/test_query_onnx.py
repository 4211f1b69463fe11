"""The query encoder `vidfuse index` exports beside an index (index/query_onnx.py): the same
query embeddings as the run's head in torch, used by search only while it fits the run, and
never a condition for building or searching an index."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)

NO_CLIP_TEXT = {
    "laff": ("tiny_laff", "epochs=1", "head.laff.text_features=[bow,gru]"),
    "laff_ml": ("tiny_laff_ml", "epochs=1", "head.laff_ml.text_features=[bow,gru]", "head.laff_ml.text_passthrough=[]"),
}
QUERIES = [
    "a red circle moves left",
    "circle",
    "zebra quantum xylophone",  # no word of the vocabularies: bow all zero, GRU reads <unk>s
    " ".join(["a blue square then a green triangle"] * 9),  # 63 words: the GRU's long path
]


def _all_scores(searcher, query: str) -> dict[str, float]:
    return {hit.video_id: hit.score for hit in searcher.search(query, len(searcher.index))}


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _printed_scores(out: str) -> dict[str, float]:
    """video id -> score of `vidfuse search` output (twins score within float noise: no order)."""
    rows = [line.split() for line in _lines(out) if not line.startswith("query:")]
    return {row[2]: float(row[1]) for row in rows}


def _same_hits(a: str, b: str) -> None:
    sa, sb = _printed_scores(a), _printed_scores(b)
    assert sorted(sa) == sorted(sb) and sa
    np.testing.assert_allclose([sa[v] for v in sb], list(sb.values()), atol=2e-4)


@pytest.mark.parametrize("head", sorted(NO_CLIP_TEXT))
def test_the_exported_encoder_scores_every_video_as_the_torch_head_does(stage_data, head):  # noqa: F811
    from index.query_onnx import META_FILE
    from index.search import ExportedSearcher, Searcher, open_searcher

    run = trained_run(stage_data, *NO_CLIP_TEXT[head])
    index = built_index(stage_data, run)
    assert (index / META_FILE).is_file()
    exported = open_searcher(str(run), str(index))
    assert isinstance(exported, ExportedSearcher)
    torch_searcher = Searcher(str(run), str(index))
    for query in QUERIES:
        want, got = _all_scores(torch_searcher, query), _all_scores(exported, query)
        assert sorted(got) == sorted(want) and len(got) == len(torch_searcher.index)
        np.testing.assert_allclose([got[v] for v in want], list(want.values()), rtol=1e-4, atol=1e-5)


def test_heads_that_need_torch_get_no_export_and_onnx_says_why(stage_data, capsys):  # noqa: F811
    from index.query_onnx import META_FILE, MODEL_FILE, not_exportable

    run = trained_run(stage_data, "tiny_laff")  # text clip, bow, gru: the CLIP text tower is torch
    index = built_index(stage_data, run)
    assert not (index / MODEL_FILE).exists() and not (index / META_FILE).exists()
    capsys.readouterr()  # what training and indexing logged, if this test ran them
    assert cli("search", "--run", run, "--index", index, "--query-encoder", "onnx", "a red circle") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vidfuse search: error: --query-encoder onnx:"), err
    assert f"holds no {MODEL_FILE}" in err[0]
    assert cli("search", "--run", run, "--index", index, "-k", "2", "a red circle") == 0  # auto: torch, quietly
    out = capsys.readouterr()
    assert len(_lines(out.out)) == 3 and "WARNING" not in out.err
    assert "re-ranks" in not_exportable(SimpleNamespace(exact_index=False), ["bow"])
    assert "clip" in not_exportable(SimpleNamespace(exact_index=True), ["bow", "clip"])
    assert not_exportable(SimpleNamespace(exact_index=True), ["bow", "w2v", "gru"]) is None


def test_a_run_changed_since_the_export_is_searched_with_torch_until_index_add(stage_data, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_run(stage_data, *NO_CLIP_TEXT["laff"]), run)  # the shared run stays untouched
    index = tmp_path / "index"
    search = ("search", "--run", run, "--index", index, "-k", "12", "a red circle")  # -k: the whole test split
    assert cli("index", "--run", run, "--out", index, "--device", "cpu") == 0
    capsys.readouterr()
    assert cli(*search, "--query-encoder", "onnx") == 0
    before = capsys.readouterr().out

    checkpoint = run / "checkpoint.pt"  # as a rerun of the training rewrites it (same weights: seeded)
    os.utime(checkpoint, ns=(checkpoint.stat().st_atime_ns, checkpoint.stat().st_mtime_ns + 10**9))
    assert cli(*search, "--query-encoder", "onnx") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has changed since" in err[0], err
    assert cli(*search) == 0  # auto: torch, saying why and what refreshes it
    out = capsys.readouterr()
    _same_hits(out.out, before)
    assert "WARNING" in out.err and "has changed since" in out.err and "--add" in out.err

    assert cli("index", "--run", run, "--out", index, "--device", "cpu", "--add") == 0
    capsys.readouterr()
    assert cli(*search, "--query-encoder", "onnx") == 0
    _same_hits(capsys.readouterr().out, before)


@pytest.mark.parametrize("damage", ["truncated", "garbage_of_the_same_size", "record_not_json"])
def test_a_damaged_export_is_left_for_torch_with_a_warning(stage_data, tmp_path, capsys, damage):  # noqa: F811
    from index.query_onnx import META_FILE, MODEL_FILE

    run = trained_run(stage_data, *NO_CLIP_TEXT["laff"])
    index = tmp_path / "index"
    shutil.copytree(built_index(stage_data, run), index)
    capsys.readouterr()
    search = ("search", "--run", run, "--index", index, "-k", "12", "a red circle")
    assert cli(*search) == 0
    before = capsys.readouterr().out
    model = index / MODEL_FILE
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "garbage_of_the_same_size":
        model.write_bytes(b"\x07" * model.stat().st_size)
    else:
        (index / META_FILE).write_text("{not json")
    assert cli(*search) == 0
    out = capsys.readouterr()
    _same_hits(out.out, before)
    assert "WARNING" in out.err and "queries encoded with torch" in out.err, out.err
    assert cli(*search, "--query-encoder", "onnx") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize("failing", ["exporter", "disk_full_at_the_record"])
def test_an_export_that_fails_leaves_a_working_index(stage_data, tmp_path, monkeypatch, capsys, failing):  # noqa: F811
    import errno

    import fusion.onnx_export
    import index.query_onnx
    from index.query_onnx import META_FILE, MODEL_FILE

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::something' to ONNX opset version 17 is not supported")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "exporter":
        monkeypatch.setattr(fusion.onnx_export, "export_query_embedding", unsupported)
    else:
        monkeypatch.setattr(index.query_onnx, "json", SimpleNamespace(dump=disk_full, load=index.query_onnx.json.load))
    run = trained_run(stage_data, *NO_CLIP_TEXT["laff"])
    index = tmp_path / "index"
    capsys.readouterr()
    assert cli("index", "--run", run, "--out", index, "--device", "cpu") == 0
    assert "could not export the query encoder" in capsys.readouterr().err
    assert not (index / MODEL_FILE).exists() and not (index / META_FILE).exists()
    assert not [p for p in os.listdir(index) if p.startswith(".")]  # no temporary file left
    assert cli("search", "--run", run, "--index", index, "-k", "2", "a red circle") == 0
    assert len(_lines(capsys.readouterr().out)) == 3


def test_a_rebuild_for_a_head_that_needs_torch_removes_the_old_export(stage_data, tmp_path):  # noqa: F811
    from index.query_onnx import META_FILE, MODEL_FILE

    index = tmp_path / "index"
    assert cli("index", "--run", trained_run(stage_data, *NO_CLIP_TEXT["laff"]), "--out", index, "--device", "cpu") == 0
    assert (index / MODEL_FILE).is_file()
    assert cli("index", "--run", trained_run(stage_data, "tiny_laff"), "--out", index, "--device", "cpu") == 0
    assert not (index / MODEL_FILE).exists() and not (index / META_FILE).exists()
    assert Path(index / "meta.json").is_file()
