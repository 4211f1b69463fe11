"""VideoIndex: exactness of Flat, IVF training/nprobe, add, save/load and damaged folders."""

import json
import os

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.faiss_index import IndexStoreError, VideoIndex, gpu_available
from vidfuse.errors import VidfuseError


def _data(n=1000, d=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, [f"video{i}" for i in range(n)]


def _clustered(n, d, centers, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(0, centers, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_error_type_is_a_vidfuse_error():
    assert issubclass(IndexStoreError, VidfuseError)


def test_flat_search_equals_numpy_brute_force():
    x, ids = _data()
    q = np.random.default_rng(1).standard_normal((50, 64)).astype(np.float32)
    idx = VideoIndex.build(x, ids, factory="Flat", metric="ip", device="cpu")
    assert idx.ntotal == 1000 and idx.dim == 64 and idx.device == "cpu"
    scores, got_ids = idx.search(q, 10)
    sim = q @ x.T
    ref_pos = np.argsort(-sim, axis=1, kind="stable")[:, :10]
    assert got_ids == [[ids[p] for p in row] for row in ref_pos]
    np.testing.assert_allclose(scores, np.take_along_axis(sim, ref_pos, 1), rtol=1e-5, atol=1e-5)
    s2, pos = idx.search_positions(q, 10)
    np.testing.assert_array_equal(pos, ref_pos)
    np.testing.assert_array_equal(idx.reconstruct_all(), x)


def test_l2_metric_and_meta():
    x, ids = _data(200, 16)
    idx = VideoIndex.build(x, ids, factory="Flat", metric="l2", device="cpu",
                           meta={"run": "runs/a", "head": "laff", "note": 3})
    d, got = idx.search(x[:3], 1)
    assert [g[0] for g in got] == ids[:3] and np.allclose(d[:, 0], 0, atol=1e-5)
    assert idx.meta["run"] == "runs/a" and idx.meta["head"] == "laff"
    assert idx.meta["extra"] == {"note": 3} and idx.meta["count"] == 200 and idx.meta["dim"] == 16
    assert idx.meta["faiss_version"] == faiss.__version__ and idx.meta["metric"] == "l2"


def test_ivf_trains_on_a_sample_and_nprobe_trades_recall():
    x = _clustered(4000, 32, centers=40)
    ids = [str(i) for i in range(len(x))]
    q = x[:200] + 0.01
    flat = VideoIndex.build(x, ids, factory="Flat", device="cpu")
    ivf = VideoIndex.build(x, ids, factory="IVF64,Flat", device="cpu", train_size=2000, nprobe=1)
    assert ivf.meta["train_rows"] == 2000 and ivf.meta["search_params"] == {"nprobe": 1}
    _, truth = flat.search_positions(q, 10)

    def recall(nprobe):
        ivf.set_nprobe(nprobe)
        _, pos = ivf.search_positions(q, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(pos.tolist(), truth.tolist())])

    r1, r64 = recall(1), recall(64)
    assert r64 == 1.0  # all lists visited: exact
    assert r1 < r64
    assert ivf.meta["search_params"] == {"nprobe": 64}
    rec = ivf.reconstruct_all()
    np.testing.assert_array_equal(rec, x)


def test_training_needs_enough_rows():
    x, ids = _data(100, 16)
    with pytest.raises(IndexStoreError, match=r"needs at least 256 training rows"):
        VideoIndex.build(x, ids, factory="IVF256,Flat", device="cpu")
    x2, ids2 = _data(600, 16)
    with pytest.raises(IndexStoreError, match=r"needs at least 256 training rows, got train_size=100"):
        VideoIndex.build(x2, ids2, factory="IVF8,PQ4", device="cpu", train_size=100)
    with pytest.raises(IndexStoreError, match="invalid FAISS factory"):
        VideoIndex.build(x, ids, factory="NotAnIndex")
    with pytest.raises(IndexStoreError, match="no search parameter 'nprobe'"):
        VideoIndex.build(x, ids, factory="Flat", nprobe=4)


def test_build_and_add_refuse_bad_input():
    x, ids = _data(20, 8)
    with pytest.raises(IndexStoreError, match="duplicate video ids"):
        VideoIndex.build(x, ids[:19] + [ids[0]])
    with pytest.raises(IndexStoreError, match="20 embeddings but 19 ids"):
        VideoIndex.build(x, ids[:19])
    idx = VideoIndex.build(x, ids, device="cpu")
    with pytest.raises(IndexStoreError, match="dim 4, the index has dim 8"):
        idx.add(np.zeros((1, 4), np.float32), ["new"])
    with pytest.raises(IndexStoreError, match=r"already in the index, e.g. \['video3'\]"):
        idx.add(np.zeros((2, 8), np.float32), ["fresh", "video3"])
    assert idx.ntotal == 20 and len(idx.ids) == 20  # nothing half-added
    with pytest.raises(IndexStoreError, match="dim 4, the index has dim 8"):
        idx.search(np.zeros((1, 4), np.float32), 3)
    if not gpu_available():
        with pytest.raises(IndexStoreError, match="no GPU support"):
            VideoIndex.build(x, ids, device="gpu")


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "HNSW8"])
def test_add_then_search_finds_new_videos(factory):
    x = _clustered(1200, 32, centers=16)
    ids = [f"v{i}" for i in range(1000)]
    idx = VideoIndex.build(x[:1000], ids, factory=factory, device="cpu")
    if factory.startswith("IVF"):
        idx.set_nprobe(16)
    idx.add(x[1000:], [f"new{i}" for i in range(200)])
    assert idx.ntotal == 1200 and idx.meta["count"] == 1200
    _, got = idx.search(x[1000:1010], 1)
    assert [g[0] for g in got] == [f"new{i}" for i in range(10)]
    assert idx.position("new5") == 1005


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8"])
def test_save_load_round_trip(tmp_path, factory):
    x = _clustered(2000, 32, centers=16)
    ids = [f"id-{i}" for i in range(2000)]
    idx = VideoIndex.build(x, ids, factory=factory, device="cpu", nprobe=None if factory == "Flat" else 4,
                           meta={"run": "r1", "epoch": 7})
    q = x[:64] + 0.05
    s1, i1 = idx.search(q, 10)
    out = tmp_path / "indexes" / "main"
    idx.save(str(out))
    assert sorted(os.listdir(out)) == ["ids.parquet", "index.faiss", "meta.json"]
    assert pq.read_table(out / "ids.parquet").column("video_id").to_pylist() == ids
    back = VideoIndex.load(str(out))
    s2, i2 = back.search(q, 10)
    np.testing.assert_array_equal(s1, s2)
    assert i1 == i2
    assert back.meta == idx.meta and back.meta["extra"] == {"epoch": 7}
    if factory != "Flat":
        assert faiss.extract_index_ivf(back.index).nprobe == 4
    # no temporary or backup folders left next to it
    assert os.listdir(tmp_path / "indexes") == ["main"]


def test_save_replaces_previous_index_and_keeps_other_files(tmp_path):
    x, ids = _data(100, 8)
    out = tmp_path / "idx"
    VideoIndex.build(x[:50], ids[:50], device="cpu").save(str(out))
    (out / "notes.txt").write_text("mine")
    big = VideoIndex.build(x, ids, device="cpu")
    big.save(str(out))
    assert VideoIndex.load(str(out)).ntotal == 100
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_killed_save_leaves_previous_index(tmp_path, monkeypatch):
    x, ids = _data(60, 8)
    out = tmp_path / "idx"
    VideoIndex.build(x[:30], ids[:30], device="cpu").save(str(out))
    idx = VideoIndex.build(x, ids, device="cpu")

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if killed while writing ids.parquet

    monkeypatch.setattr(pq, "write_table", boom)
    with pytest.raises(KeyboardInterrupt):
        idx.save(str(out))
    monkeypatch.undo()
    assert VideoIndex.load(str(out)).ntotal == 30
    assert sorted(os.listdir(tmp_path)) == ["idx"]


def test_load_refuses_damaged_folders(tmp_path):
    x, ids = _data(40, 8)
    good = tmp_path / "good"
    VideoIndex.build(x, ids, device="cpu").save(str(good))

    with pytest.raises(IndexStoreError, match="does not exist"):
        VideoIndex.load(str(tmp_path / "missing"))

    def copy(name):
        d = tmp_path / name
        d.mkdir()
        for f in os.listdir(good):
            (d / f).write_bytes((good / f).read_bytes())
        return d

    d = copy("no_ids")
    os.remove(d / "ids.parquet")
    with pytest.raises(IndexStoreError, match="has no ids.parquet"):
        VideoIndex.load(str(d))

    d = copy("count")
    pq.write_table(pa.table({"video_id": ids[:39]}), d / "ids.parquet")
    with pytest.raises(IndexStoreError, match="39 ids but index.faiss holds 40 vectors"):
        VideoIndex.load(str(d))

    d = copy("column")
    pq.write_table(pa.table({"name": ids}), d / "ids.parquet")
    with pytest.raises(IndexStoreError, match="no column 'video_id'"):
        VideoIndex.load(str(d))

    d = copy("garbage")
    (d / "index.faiss").write_bytes(b"not a faiss index at all")
    with pytest.raises(IndexStoreError, match="not a readable FAISS index"):
        VideoIndex.load(str(d))

    d = copy("truncated")
    data = (good / "index.faiss").read_bytes()
    (d / "index.faiss").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexStoreError, match="not a readable FAISS index"):
        VideoIndex.load(str(d))

    d = copy("dim")
    meta = json.loads((d / "meta.json").read_text())
    meta["dim"] = 9
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexStoreError, match="says dim 9 but index.faiss has dim 8"):
        VideoIndex.load(str(d))

    d = copy("badmeta")
    (d / "meta.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="not valid index metadata"):
        VideoIndex.load(str(d))


def test_load_points_to_backup_of_interrupted_swap(tmp_path):
    x, ids = _data(10, 4)
    out = tmp_path / "idx"
    VideoIndex.build(x, ids, device="cpu").save(str(out))
    # the state between the two renames of a save: previous index moved aside, new one absent
    backup = tmp_path / ".idx.old-abc"
    backup.mkdir()
    os.rename(out, backup / "idx")
    with pytest.raises(IndexStoreError, match=r"interrupted save left the previous index at .*\.idx\.old-abc"):
        VideoIndex.load(str(out))
