"""`vidfuse demo`: the whole chain on a few synthetic videos (fine-tuned extractors, every head)
ends with the metrics table, and a second run into the same work folder reuses every stage."""

from __future__ import annotations

import json
import logging

from stage_fixtures import cli
from vidfuse.demo import DEMO_HEADS

HEADS = tuple(DEMO_HEADS)  # laff, laff_ml, dllfa, meanp, single_clip, single_x3d
FINETUNED = ("clip_ft", "x3d_ft")
# Beam in this process: the tests are about resuming, not about worker processes
ARGS = ("--videos", "12", "--no-progress", "--direct_running_mode=in_memory", "--direct_num_workers=1")


def _table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### test split"))
    end = next(i for i in range(start + 3, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def _state(work):
    shards = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "features").rglob("part-*")}
    runs = {h: {name: (work / "runs" / h / name).read_bytes() for name in ("last.pt", "checkpoint.pt", "metrics.jsonl")}
            for h in HEADS}
    runs.update({r: {name: (work / "runs" / r / name).read_bytes() for name in ("last.pt", f"{r}.pt", "metrics.jsonl")}
                 for r in FINETUNED})
    return shards, runs


def test_demo_ends_with_the_table_and_a_rerun_reuses_the_work(tmp_path, capsys, caplog):
    work = tmp_path / "demo"
    assert cli("demo", "--workdir", work, *ARGS) == 0
    table = _table(capsys.readouterr().out)
    assert table[0] == "### test split, 2 videos, 10 captions (average ties: exactly tied videos earn no credit)"
    assert table[2].startswith("| Model | t2v R@1 |") and len(table) == 4 + len(HEADS) + 1
    assert [row.split("|")[1].strip() for row in table[4:]] == [*HEADS, "chance"]
    assert table[-1].startswith("| chance | 50.0 | 100.0 | 100.0 |")  # 2 test videos
    report = work / "reports" / "demo"
    assert (report / "summary.md").read_text().splitlines()[:len(table)] == table
    summary = json.loads((report / "summary.json").read_text())
    assert list(summary) == list(HEADS) and all(r["ties"] == "average" for r in summary.values())
    assert all(r["subsets"]["order-dependent"]["captions"] == 10 for r in summary.values())  # one twin pair
    assert (report / "recall.png").stat().st_size > 0
    assert json.loads((report / "metrics.json").read_text())["head"] == "single"
    shards, runs = _state(work)
    assert {s.split("/")[1] for s in shards} == {"clip", "x3d", "text"}
    for head in (*HEADS, *FINETUNED):
        assert json.loads((work / "runs" / head / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] >= 1
    for extractor in ("clip", "x3d"):  # the features come from the fine-tuned weights
        manifest = json.loads((work / "features" / extractor / "_manifest.json").read_text())
        assert str(work / "runs" / f"{extractor}_ft" / f"{extractor}_ft.pt") in json.dumps(manifest)

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli("demo", "--workdir", work, *ARGS) == 0
    assert _table(capsys.readouterr().out) == table
    assert _state(work) == (shards, runs)  # no new shard, no training step
    messages = [r.getMessage() for r in caplog.records]
    assert any("12 already extracted, 0 to do" in m for m in messages), messages
    for head in (*HEADS, *FINETUNED):
        last = json.loads(runs[head]["metrics.jsonl"].decode().splitlines()[-1])["epoch"]
        assert any(m.startswith(f"resuming {work / 'runs' / head} after epoch {last} ") for m in messages), head
