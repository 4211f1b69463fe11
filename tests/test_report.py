"""Report writers: JSON, the markdown results table, recall@K plot."""

import json
import math
import re

import numpy as np
import pytest

from index.metrics import t2v_v2t_metrics
from index.report import markdown_table, recall_at_k_curve, recall_plot, write_metrics_json


def _rows():
    rng = np.random.default_rng(0)
    cap_vid = np.repeat(np.arange(30), 2)
    good = rng.standard_normal((60, 30)).astype(np.float32)
    good[np.arange(60), cap_vid] += 3.0
    bad = rng.standard_normal((60, 30)).astype(np.float32)
    return [
        {"model": "LAFF", **t2v_v2t_metrics(good, cap_vid)},
        {"model": "mean|pool", **t2v_v2t_metrics(bad, cap_vid)},
        {"model": "DLLFA re-rank", "t2v": t2v_v2t_metrics(good, cap_vid)["t2v"]},
    ]


def test_markdown_table_layout_and_numbers():
    rows = _rows()
    md = markdown_table(rows, title="MSR-VTT 1k-A")
    lines = md.strip().splitlines()
    assert lines[0] == "### MSR-VTT 1k-A"
    def cells(line):  # split on unescaped pipes
        return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]

    header = cells(lines[2])
    assert header == ["Model", "t2v R@1", "t2v R@5", "t2v R@10", "t2v MedR", "t2v mAP",
                      "v2t R@1", "v2t R@5", "v2t R@10", "v2t MedR", "v2t mAP", "SumR"]
    body = [cells(line) for line in lines[4:]]
    assert [b[0] for b in body] == ["LAFF", "mean\\|pool", "DLLFA re-rank"]
    laff, t2v, v2t = body[0], rows[0]["t2v"], rows[0]["v2t"]
    assert laff[1:6] == [f"{t2v[k]:.1f}" for k in ("R@1", "R@5", "R@10", "MedR", "mAP")]
    assert laff[6:11] == [f"{v2t[k]:.1f}" for k in ("R@1", "R@5", "R@10", "MedR", "mAP")]
    assert laff[11] == f"{t2v['rsum'] + v2t['rsum']:.1f}"
    # a run without v2t: dashes there and no SumR (it would not be comparable)
    assert body[2][6:] == ["–"] * 6
    assert all(len(b) == len(header) for b in body)


def test_markdown_table_single_direction():
    rows = [{"name": "a", "t2v": {"R@1": 10.04, "R@5": 20, "R@10": 30, "MedR": 4, "mAP": 15.55}}]
    md = markdown_table(rows)
    assert "| a | 10.0 | 20.0 | 30.0 | 4.0 | 15.6 | 60.0 |" in md
    assert "v2t" not in md
    with pytest.raises(ValueError, match="'model'"):
        markdown_table([{"t2v": {}}])


def test_write_metrics_json(tmp_path):
    res = {"t2v": {"R@1": np.float64(12.5), "num_queries": np.int64(3), "MedR": float("nan")},
           "ranks": np.array([1, 2])}
    path = tmp_path / "reports" / "run" / "metrics.json"
    write_metrics_json(str(path), res)
    back = json.loads(path.read_text())
    assert back == {"t2v": {"R@1": 12.5, "num_queries": 3, "MedR": None}, "ranks": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_recall_at_k_curve():
    curve = recall_at_k_curve(np.array([1, 1, 2, 5, 50.5]), 6)
    np.testing.assert_allclose(curve, [40, 60, 60, 60, 80, 80])
    assert math.isnan(recall_at_k_curve(np.array([]), 3)[0])


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0  # not a blank canvas


def test_recall_plot_from_ranks_points_and_rows(tmp_path):
    rng = np.random.default_rng(0)
    p1 = tmp_path / "a" / "recall.png"
    recall_plot(str(p1), {"LAFF": rng.integers(1, 200, 500), "meanP": rng.integers(1, 400, 500)},
                max_k=100)
    _assert_png(p1)
    p2 = tmp_path / "points.png"
    recall_plot(str(p2), {"run": {1: 20.0, 5: 45.0, 10: 58.0}})
    _assert_png(p2)
    p3 = tmp_path / "rows.png"
    recall_plot(str(p3), _rows(), direction="v2t", title="v2t")
    _assert_png(p3)
    with pytest.raises(ValueError, match="nothing to plot"):
        recall_plot(str(tmp_path / "x.png"), [{"model": "m", "t2v": {"R@1": 1}}], direction="v2t")
