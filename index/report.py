"""Report writers: metrics.json, the LAFF-paper markdown table, recall@K curves as PNG.

A report row is ``{"model": name, "t2v": metrics, "v2t": metrics}`` where metrics is what
index.metrics.retrieval_metrics / t2v_v2t_metrics return; either direction may be absent.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from vidfuse.files import as_umask_allows

DIRECTIONS = (("t2v", "Text-to-video"), ("v2t", "Video-to-text"))
TABLE_METRICS = ("R@1", "R@5", "R@10", "MedR", "mAP")
SUMR_KEYS = ("R@1", "R@5", "R@10")


def _jsonable(x: Any) -> Any:
    """numpy scalars/arrays to Python; NaN/inf to null (JSON has no NaN)."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


TEMP_SUFFIX = ".partial"  # temp files of _atomic_write: hidden, and named so a rerun can remove them


def _atomic_write(path: str, write) -> None:
    """Write via a temporary file in the same folder and rename, so readers never see half."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        as_umask_allows(tmp)  # mkstemp made it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def remove_temp_files(folder: str) -> list[str]:
    """Temp files a killed writer left in a report folder (call it only while no writer runs there)."""
    doomed = glob.glob(os.path.join(glob.escape(folder), ".*" + TEMP_SUFFIX))
    for path in doomed:
        os.remove(path)
    return doomed


def write_text(path: str, text: str) -> None:
    """A text file (table.md), atomically."""
    _atomic_write(path, lambda f: f.write(text.encode()))


def write_metrics_json(path: str, results: dict) -> None:
    """Metrics (any nesting of dicts, numpy values included) as indented JSON."""
    text = json.dumps(_jsonable(results), indent=2, sort_keys=False, allow_nan=False) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode()))


def _row_name(row: Mapping) -> str:
    name = row.get("model", row.get("name"))
    if name is None:
        raise ValueError(f"report row has no 'model' (or 'name') key: keys {sorted(row)}")
    return str(name).replace("|", "\\|")


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.1f}"


def markdown_table(
    rows: Sequence[Mapping], title: str | None = None, metrics: Sequence[str] = TABLE_METRICS
) -> str:
    """One table, one row per run: text-to-video and video-to-text side by side, then SumR.

    SumR = R@1 + R@5 + R@10 summed over the directions shown (LAFF's SumR); a run missing a
    shown direction gets "–" there. Numbers have one decimal.
    """
    dirs = [(key, label) for key, label in DIRECTIONS if any(key in r for r in rows)]
    if not dirs:
        raise ValueError("no report row has 't2v' or 'v2t' metrics")
    head = ["Model"] + [f"{key} {m}" for key, _ in dirs for m in metrics] + ["SumR"]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|")
    for row in rows:
        cells = [_row_name(row)]
        sumr: float | None = 0.0
        for key, _ in dirs:
            m = row.get(key)
            cells += [_fmt(m.get(name)) if m else "–" for name in metrics]
            if not m or any(m.get(k) is None for k in SUMR_KEYS):
                sumr = None
            elif sumr is not None:
                sumr += sum(float(m[k]) for k in SUMR_KEYS)
        cells.append(_fmt(sumr))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recall_at_k_curve(ranks: np.ndarray, max_k: int) -> np.ndarray:
    """R@K in percent for K = 1..max_k from per-query (best) ranks."""
    ranks = np.asarray(ranks, np.float64).reshape(-1)
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1, got {max_k}")
    if ranks.size == 0:
        return np.full(max_k, np.nan)
    ks = np.arange(1, max_k + 1)
    # count of ranks <= k, for every k at once
    counts = np.searchsorted(np.sort(ranks), ks, side="right")
    return 100.0 * counts / ranks.size


def _curves(runs, direction: str, max_k: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(runs, Mapping):
        items = list(runs.items())
    else:  # report rows
        items = []
        for row in runs:
            m = row.get(direction)
            if m:
                items.append((_row_name(row).replace("\\|", "|"),
                              {int(k[2:]): v for k, v in m.items() if k.startswith("R@")}))
    out = {}
    for name, val in items:
        if isinstance(val, Mapping):
            ks = np.array(sorted(int(k) for k in val), dtype=np.int64)
            ys = np.array([float(val[k]) for k in sorted(val, key=int)])
        else:
            ranks = np.asarray(val)
            if max_k is not None:
                top = max_k
            else:
                top = int(np.ceil(np.nanmax(ranks))) if ranks.size else 1
            ks = np.arange(1, top + 1)
            ys = recall_at_k_curve(ranks, top)
        out[str(name)] = (ks, ys)
    return out


def recall_plot(
    path: str,
    runs: Mapping[str, Mapping[int, float] | np.ndarray] | Sequence[Mapping],
    max_k: int | None = 100,
    direction: str = "t2v",
    title: str | None = None,
) -> None:
    """Recall@K curves (K on a log axis), one line per run, saved as PNG.

    ``runs``: name -> {K: R@K in percent} (the points known), or name -> per-query best
    ranks (a full curve K = 1..max_k), or report rows (their R@K of ``direction``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = _curves(runs, direction, max_k)
    if not curves:
        raise ValueError(f"nothing to plot: no run has {direction} recall values")
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    try:
        for name, (ks, ys) in curves.items():
            ax.plot(ks, ys, marker="o" if len(ks) <= 12 else None, markersize=4, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("R@K (%)")
        ax.set_ylim(0, 100)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_title(title or f"Recall@K ({dict(DIRECTIONS).get(direction, direction)})")
        ax.legend(loc="lower right", fontsize="small")
        fig.tight_layout()
        _atomic_write(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
