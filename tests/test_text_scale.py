"""Text features at MSR-VTT size: 200k captions extract and load for training in bounded memory.

The bag of words of 200k captions over a few thousand words is, dense, captions x vocabulary
float32 (3.2 GB here, 8 GB over MSR-VTT's 10k words); stored sparse it is the size of the
captions' words. The run happens in a child process whose peak resident memory is read from
the OS (VmHWM of /proc/self/status, printed by the child as it ends): memory, not time.
The other encoders (clip, w2v) stream the same way, one shard of rows at a time; the
benchmark (benchmarks/scale.py --text) measures them at 10k, 200k and 1M captions.

extract-text reads the caption file a block at a time, several times (check, vocabulary,
encoding), rather than as one list: its peak is that of one shard whatever the file's size,
which the second test checks between 20k and 200k captions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vidfuse.caption_corpus import write_caption_corpus

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = 200_000
PEAK_BOUND_GIB = 4.0  # the target of the issue for 200k captions (and for 1M)
FEW = 20_000  # one shard of the tiny config (text.shard_size)
# extract-text's peak may grow by this much from FEW to CAPTIONS captions: the ids seen so far
# (about 12 bytes each: 3 MB) and allocator noise; 17 MiB measured. Reading the caption list
# whole grew it by 86 MiB (benchmarks/README.md, scale.py --text).
GROWTH_BOUND_MIB = 48

PEAK = """
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
"""

CHILD = r"""
import json, os, sys
from pipeline.config import ExtractConfig
from pipeline.text_job import run_text_extraction
from vidfuse.config import load_config

captions_path, out = sys.argv[1], sys.argv[2]
config = load_config(ExtractConfig, "tiny", [], kind="extract")
written = run_text_extraction(captions_path, out, config, encoders=["bow"], progress=False)
""" + PEAK + r"""
extract_peak = peak
if sys.argv[3:] == ["extract-only"]:
    print(json.dumps({"written": written["bow"], "extract_peak_kib": extract_peak}))
    sys.exit(0)
from pipeline.captions import read_captions
from pipeline.training_set import load_text_bank  # torch: after extract-text's peak was read
captions = read_captions(captions_path)
bank, _, vocab_size = load_text_bank(out, ["bow", "gru"], captions)  # what training reads
bow = bank.vectors["bow"]
""" + PEAK + r"""
print(json.dumps({"extract_peak_kib": extract_peak, "written": written["bow"], "rows": bow.shape[0], "dim": bow.shape[1],
                  "sparse": hasattr(bow, "tocsr"), "nnz": int(bow.nnz) if hasattr(bow, "nnz") else None,
                  "tokens": int(len(bank.tokens[0])), "peak_kib": peak}))
"""


def _child(tmp_path: Path, captions: int, *mode: str) -> dict:
    """Caption corpus of ``captions`` lines, extract-text (bow) of it in a child; the child's report."""
    folder = tmp_path / str(captions)
    path = write_caption_corpus(folder / "dataset", captions, vocabulary=4000)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(folder / "features"), *mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big_run(tmp_path_factory) -> tuple[dict, Path]:
    """extract-text then the training-side load of CAPTIONS captions: (the child's report, features folder)."""
    tmp = tmp_path_factory.mktemp("text-scale")
    return _child(tmp, CAPTIONS), tmp / str(CAPTIONS) / "features"


def test_bow_of_200k_captions_is_stored_sparse_and_stays_under_the_memory_bound(big_run):
    report, out = big_run
    assert report["written"] == report["rows"] == CAPTIONS
    assert report["sparse"] and 1000 < report["dim"] <= 4000
    assert CAPTIONS * 2 < report["nnz"] < CAPTIONS * 20  # a few distinct words per caption
    assert report["tokens"] >= report["nnz"]
    peak_gib = report["peak_kib"] / 2**20
    assert peak_gib < PEAK_BOUND_GIB, f"peak RSS {peak_gib:.2f} GiB"
    stored = sum(p.stat().st_size for p in (out / "text" / "bow").glob("part-*"))
    dense = CAPTIONS * report["dim"] * 4
    assert stored < dense / 20, f"{stored} bytes on disk, dense would be {dense}"


def test_extract_text_peak_does_not_grow_with_the_caption_file(big_run, tmp_path):
    few = _child(tmp_path, FEW, "extract-only")
    many = big_run[0]
    assert few["written"] == FEW and many["written"] == CAPTIONS
    growth_mib = (many["extract_peak_kib"] - few["extract_peak_kib"]) / 1024
    assert growth_mib < GROWTH_BOUND_MIB, (
        f"extract-text peak {few['extract_peak_kib'] // 1024} MiB at {FEW} captions, "
        f"{many['extract_peak_kib'] // 1024} MiB at {CAPTIONS}"
    )
