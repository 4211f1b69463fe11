"""`vidfuse demo`: the whole chain on a few synthetic videos ends with the metrics table, and a
second run into the same work folder reuses every stage."""

from __future__ import annotations

import json
import logging

from stage_fixtures import cli

HEADS = ("tiny_laff_ml", "tiny_dllfa", "tiny_meanp")
# Beam in this process: the tests are about resuming, not about worker processes
ARGS = ("--videos", "12", "--no-progress", "--direct_running_mode=in_memory", "--direct_num_workers=1")


def _table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("### test split"))
    table = [line for line in lines[start:] if line.startswith("|")]
    return [lines[start], *table]


def _state(work):
    shards = {str(p.relative_to(work)): p.stat().st_mtime_ns for p in (work / "features").rglob("part-*")}
    runs = {h: {name: (work / "runs" / h / name).read_bytes() for name in ("last.pt", "checkpoint.pt", "metrics.jsonl")}
            for h in HEADS}
    return shards, runs


def test_demo_ends_with_the_table_and_a_rerun_reuses_the_work(tmp_path, capsys, caplog):
    work = tmp_path / "demo"
    assert cli("demo", "--workdir", work, *ARGS) == 0
    table = _table(capsys.readouterr().out)
    assert table[0] == "### test split, 2 videos, 10 captions (optimistic ties)"
    assert table[1].startswith("| Model | t2v R@1 |") and len(table) == 3 + len(HEADS)
    assert [row.split("|")[1].strip() for row in table[3:]] == list(HEADS)
    report = work / "reports" / "demo"
    assert (report / "table.md").read_text().splitlines() == [table[0], "", *table[1:]]
    assert (report / "recall.png").stat().st_size > 0
    assert json.loads((report / "metrics.json").read_text())["head"] == "meanp"
    shards, runs = _state(work)
    assert {s.split("/")[1] for s in shards} == {"clip", "x3d", "text"}
    for head in HEADS:
        assert json.loads((work / "runs" / head / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] >= 1

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert cli("demo", "--workdir", work, *ARGS) == 0
    assert _table(capsys.readouterr().out) == table
    assert _state(work) == (shards, runs)  # no new shard, no training step
    messages = [r.getMessage() for r in caplog.records]
    assert any("12 already extracted, 0 to do" in m for m in messages), messages
    for head in HEADS:
        last = json.loads(runs[head]["metrics.jsonl"].decode().splitlines()[-1])["epoch"]
        assert any(m.startswith(f"resuming {work / 'runs' / head} after epoch {last} ") for m in messages), head
