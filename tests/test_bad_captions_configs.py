"""Bad caption files and bad configs through every command that reads them (issue #7).

Each case runs the real command (``vidfuse ...`` in-process) on the shared synthetic stage data
and asserts the message AND what is left on disk.

Caption files (``extract-text``, ``train``, ``benchmark``, ``finetune-clip`` all read them
through ``pipeline.captions.read_captions``). Policy:

- what is only layout (blank or whitespace-only lines, CRLF, a UTF-8 BOM, a tab between id
  and text, CSV/JSONL blank lines, CSV rows mixing given and automatic ids) is read as the
  clean file: the same captions, so the same text features, the same trained run, the same
  benchmark numbers;
- captions of videos that have no features: ``extract-text`` encodes every caption (text
  features do not depend on video features); ``train``/``benchmark`` use the captions of the
  split files' videos only, so captions of videos in no split change nothing. A split video
  whose extraction failed (recorded in errors.jsonl) is left out with a warning naming it
  (test_bad_videos.py::test_later_stages_go_on_without_the_videos_whose_extraction_failed);
  one missing for no recorded reason is refused naming the feature set and the videos (some:
  test_train_stage.py::test_features_missing_a_video_of_the_split_is_a_clear_error; all:
  here), and so are captions newer than the text features;
- anything that is not a caption line (no ``#k`` id, no text, a duplicate id, bytes that are
  not UTF-8, a UTF-16 file, a binary file, a NUL byte, no caption at all, a missing file, a
  directory) refuses the whole file, naming file, line and reason, before anything is
  written: one bad line is not skipped because a caption file is a benchmark's ground truth and
  a silently shorter one changes the protocol. Earlier outputs stay byte-identical.

Configs (``--config``/``--set`` of extract, extract-text, train, finetune-clip; index and
benchmark take no config file): a bad file (syntax, encoding, empty, a directory, missing, of
another kind) or a bad value (unknown key, wrong type or shape, zero/negative size, unknown
backend/loss/optimiser/head/device) exits 2 naming the file or the dotted key and the reason;
no output folder is created and an existing one is left as it was.

Already asserted elsewhere (not repeated): reader-level formats and errors in
test_captions.py; extract-text on a missing/binary/empty file, a LAFF id without ``#k`` and an
MSR-VTT JSON without sentences in test_extract_text.py::test_bad_caption_file_is_a_clear_error;
train on an empty caption file and unknown keys ``head.laff_ml.heds`` (file) / ``optim.lrr``
(--set) in test_train_stage.py; finetune-clip ``clip_lr``, a fusion config given to it,
``loss.type``, ``clip.sampling.kind``, ``captions_per_video``, ``val_metric`` in
test_finetune_clip.py::test_unknown_or_wrong_config_keys_are_refused_naming_the_key; library
level ``dimm``/``vidoe_features``/``recipe`` in test_trainer.py.
"""

from __future__ import annotations

import codecs
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from extract_helpers import IN_PROCESS
from stage_fixtures import built_index, cli, stage_data, trained_run  # noqa: F401  (fixture)

LOCK = ".vidfuse.lock"  # the job lock's content is the holder's pid, not an output
GHOSTS = ["ghost1#0 a ghost video nobody extracted", "ghost1#1 the ghost video again", "ghost2#0 another ghost"]


def _error(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert lines and lines[-1].startswith(f"vidfuse {command}: error:"), captured.err[-2000:]
    assert "Traceback" not in captured.err
    return lines[-1]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), the job lock left out."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def _dataset_dir(stage, folder: Path) -> Path:
    """``folder`` with the stage's split files, where a caption file under test is written."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        shutil.copy(stage.dataset.split_files[split], folder / f"{split}.txt")
    return folder


def _lines(stage) -> list[str]:
    return stage.captions.read_text(encoding="utf-8").splitlines()


def _ids(stage) -> list[str]:
    return [line.split(" ", 1)[0] for line in _lines(stage)]


# ================================================================ caption files: accepted as the clean file


def _blank_and_whitespace(lines):
    out = []
    for i, line in enumerate(lines):
        out += [line, "", "   ", "\t"] if i % 7 == 0 else [line]
    return ("\n".join(out) + "\n\n").encode()


def _csv(lines, newline="\n"):
    rows = ["video_id,caption"] + [f'{c.split("#", 1)[0]},"{c.split(" ", 1)[1]}"' for c in lines]
    return newline.join(rows[:5] + ["", "  ", *rows[5:]]).encode() + newline.encode()


def _jsonl(lines):
    rows = [json.dumps({"video_id": c.split("#", 1)[0], "caption": c.split(" ", 1)[1]}) for c in lines]
    return ("\r\n".join(rows[:3] + ["", "  "] + rows[3:]) + "\r\n").encode()


def _csv_given_and_automatic_ids(lines):
    """The first caption of each video has the explicit id ``v#1``, the others none (numbered v#2, v#3, ...)."""
    rows = ["caption_id,video_id,caption"]
    for c in lines:
        cap_id, text = c.split(" ", 1)
        vid, k = cap_id.split("#")
        rows.append(f'{vid}#1,{vid},"{text}"' if k == "0" else f',{vid},"{text}"')
    return ("\n".join(rows) + "\n").encode()


def _messy(lines):
    """BOM, CRLF, blank/whitespace lines, tabs for the id separator, captions of videos in no split."""
    out = [line.replace(" ", "\t", 1) if i % 5 == 0 else line for i, line in enumerate(lines)]
    out = out[:10] + ["", " \t "] + GHOSTS + out[10:]
    return codecs.BOM_UTF8 + ("\r\n".join(out) + "\r\n").encode()


def _same(stage) -> dict[str, str]:
    return {i: i for i in _ids(stage)}


def _with_ghosts(stage) -> dict[str, str | None]:
    return {**_same(stage), **{g.split(" ", 1)[0]: None for g in GHOSTS}}


def _renumbered(stage) -> dict[str, str]:
    """v#1 given to the first caption; the next ones count on from their position, past the taken #1."""
    return {f"{vid}#{int(k) + 1}": f"{vid}#{k}" for vid, k in (i.split("#") for i in _ids(stage))}


# name -> (file name, content from the clean lines, caption id read -> id in the clean file (None: not in it))
ACCEPTED: dict[str, tuple[str, Callable, Callable]] = {
    "blank_and_whitespace_only_lines": ("captions.txt", _blank_and_whitespace, _same),
    "crlf_line_endings": ("captions.txt", lambda ls: ("\r\n".join(ls) + "\r\n").encode(), _same),
    "utf8_bom": ("captions.txt", lambda ls: codecs.BOM_UTF8 + ("\n".join(ls) + "\n").encode(), _same),
    "tab_between_id_and_text": ("captions.txt", lambda ls: ("\n".join(x.replace(" ", "\t", 1) for x in ls)).encode(), _same),
    "captions_of_videos_without_features": ("captions.txt", lambda ls: ("\n".join(ls + GHOSTS) + "\n").encode(), _with_ghosts),
    "csv_with_blank_lines": ("captions.csv", _csv, _same),
    "csv_crlf": ("captions.csv", lambda ls: _csv(ls, "\r\n"), _same),
    "jsonl_crlf_and_blank_lines": ("captions.jsonl", _jsonl, _same),
    "csv_given_and_automatic_ids": ("captions.csv", _csv_given_and_automatic_ids, _renumbered),
    "everything_at_once": ("captions.txt", _messy, _with_ghosts),
}


@pytest.fixture(scope="module")
def clean_text(stage_data, tmp_path_factory) -> Path:
    """text/bow of the clean caption file, written by the command (the reference and the 'earlier output')."""
    out = tmp_path_factory.mktemp("clean_text") / "features"
    assert cli("extract-text", stage_data.captions, "--out", out, "--config", "tiny", "--encoders", "bow",
               "--no-progress") == 0
    return out


def _bow(folder: Path) -> dict[str, np.ndarray]:
    from pipeline.features import load_feature_set

    fs = load_feature_set(str(folder / "text" / "bow"))
    return {i: fs.get(i) for i in fs.ids}  # dense rows (bow is stored sparse)


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_extract_text_reads_a_layout_variant_as_the_clean_file(case, stage_data, clean_text, tmp_path, capsys):
    name, content, expected = ACCEPTED[case]
    captions = _dataset_dir(stage_data, tmp_path / "ds") / name
    captions.write_bytes(content(_lines(stage_data)))
    out = tmp_path / "features"
    assert cli("extract-text", captions, "--out", out, "--config", "tiny", "--encoders", "bow", "--no-progress") == 0
    want = expected(stage_data)
    assert f"text/bow: {len(want)} captions written" in capsys.readouterr().out
    got, ref = _bow(out), _bow(clean_text)
    assert sorted(got) == sorted(want)
    # the vocabulary comes from the train split's captions, the same texts: the same vectors
    assert (out / "text" / "bow" / "_vocab.json").read_bytes() == (clean_text / "text" / "bow" / "_vocab.json").read_bytes()
    for cap_id, clean_id in want.items():
        if clean_id is not None:
            np.testing.assert_array_equal(got[cap_id], ref[clean_id], err_msg=cap_id)


def _train_args(stage, captions, out, *sets):
    args = ["train", "--features", stage.features, "--captions", captions, "--config", "tiny_laff_ml",
            "--out", out, "--no-progress", "--set", "epochs=1"]
    for s in sets:
        args += ["--set", s]
    return args


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_train_and_benchmark_on_a_messy_caption_file_equal_the_clean_runs(stage_data, tmp_path, capsys):
    """BOM + CRLF + blank lines + tabs + captions of videos in no split: the same run, the same report."""
    reference = trained_run(stage_data, "tiny_laff_ml", "epochs=1")
    captions = _dataset_dir(stage_data, tmp_path / "ds") / "captions.txt"
    captions.write_bytes(_messy(_lines(stage_data)))
    run = tmp_path / "run"
    assert cli(*_train_args(stage_data, captions, run)) == 0
    assert _history(run) == _history(reference)
    import torch

    ours, theirs = torch.load(run / "checkpoint.pt", weights_only=False), torch.load(reference / "checkpoint.pt", weights_only=False)
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key

    index = built_index(stage_data, reference)
    clean, messy = tmp_path / "report_clean", tmp_path / "report_messy"
    assert cli("benchmark", "--run", reference, "--index", index, "--out", clean) == 0
    assert cli("benchmark", "--run", reference, "--index", index, "--captions", captions, "--out", messy) == 0
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (clean, messy))
    assert a["num_captions"] == b["num_captions"] == 5 * len(stage_data.split("test"))
    assert a["exact"] == b["exact"] and a["via_index"] == b["via_index"]


# ================================================================ caption files: refused


def _with_line(lines, at: int, line: bytes) -> bytes:
    body = [x.encode() for x in lines]
    return b"\n".join(body[:at] + [line] + body[at:]) + b"\n"


BINARY = bytes(range(256)) * 8  # bytes 0x00-0xff: NULs and invalid UTF-8

# name -> (file name, content from the clean lines or None = no file / "dir" = a directory, substrings)
# "{path}" stands for the caption file's path; every message names it.
REFUSED: dict[str, tuple[str, object, list[str]]] = {
    "line_without_text": ("captions.txt", lambda ls: _with_line(ls, 3, b"video3#7"),
                          ["line 4", "caption 'video3#7' has no text"]),
    "line_without_id_separator": ("captions.txt", lambda ls: _with_line(ls, 3, b"a caption line with no id at all"),
                                  ["line 4", "caption id 'a' is not '<video_id>#<k>'"]),
    "id_without_number_suffix": ("captions.txt", lambda ls: _with_line(ls, 3, b"video3 a red ball rolls"),
                                 ["line 4", "caption id 'video3' is not '<video_id>#<k>'"]),
    "id_with_empty_number": ("captions.txt", lambda ls: _with_line(ls, 3, b"video3# a red ball rolls"),
                             ["line 4", "caption id 'video3#' is not '<video_id>#<k>'"]),
    "csv_row_without_separator": ("captions.csv", lambda ls: b"video_id,caption\nvideo0,a red ball\nvideo3 a red ball\n",
                                  ["line 3", "fewer fields than the header"]),
    "latin1_bytes_in_utf8": ("captions.txt", lambda ls: _with_line(ls, 6, b"video3#7 caf\xe9 au lait"),
                             ["line 7", "not valid UTF-8", "0xe9", "column 13"]),
    "utf16_with_bom": ("captions.txt", lambda ls: ("\n".join(ls) + "\n").encode("utf-16"),
                       ["line 1", "UTF-16 byte order mark", "re-encode the file as UTF-8"]),
    "binary_garbage": ("captions.txt", lambda ls: BINARY, ["line 1", "NUL byte"]),
    "nul_byte_in_a_line": ("captions.txt", lambda ls: _with_line(ls, 9, b"video3#7 a\x00b"), ["line 10", "NUL byte"]),
    "duplicate_caption_id": ("captions.txt", lambda ls: _with_line(ls, 20, ls[1].encode()),
                             ["line 21", "duplicate caption id 'video0#1'", "first at {path} line 2"]),
    "csv_duplicate_given_id": ("captions.csv", lambda ls: b"caption_id,video_id,caption\nvideo0#0,video0,a\nvideo0#0,video0,b\n",
                               ["line 3", "duplicate caption id 'video0#0'"]),
    "whitespace_only_file": ("captions.txt", lambda ls: b"  \n\t\n\r\n", ["no captions found"]),
    "missing_file": ("captions.txt", None, ["file not found"]),
    "directory": ("captions.txt", "dir", ["is a directory"]),
    # an empty file: test_extract_text.py / test_train_stage.py (same reader and message as whitespace-only)
}


def _bad_captions(stage, folder: Path, case: str) -> tuple[Path, list[str]]:
    name, content, expected = REFUSED[case]
    path = _dataset_dir(stage, folder) / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content(_lines(stage)))
    return path, [e.replace("{path}", str(path)) for e in [str(path), *expected]]


@pytest.mark.parametrize("case", list(REFUSED))
def test_extract_text_refuses_a_bad_caption_file_and_keeps_earlier_features(case, stage_data, clean_text, tmp_path, capsys):
    captions, expected = _bad_captions(stage_data, tmp_path / "ds", case)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    shutil.copytree(clean_text, existing)
    before = _files(existing)
    for out in (fresh, existing):
        assert cli("extract-text", captions, "--out", out, "--config", "tiny", "--encoders", "clip,bow",
                   "--no-progress") == 2
        err = _error(capsys, "extract-text")
        for part in expected:
            assert part in err, (part, err)
    assert not fresh.exists()
    assert _files(existing) == before


@pytest.mark.parametrize("case", list(REFUSED))
def test_train_refuses_a_bad_caption_file_and_keeps_the_earlier_run(case, stage_data, tmp_path, capsys):
    captions, expected = _bad_captions(stage_data, tmp_path / "ds", case)
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    shutil.copytree(trained_run(stage_data, "tiny_laff_ml", "epochs=1"), existing)
    before = _files(existing)
    for out in (fresh, existing):
        assert cli(*_train_args(stage_data, captions, out, "epochs=2")) == 2
        err = _error(capsys, "train")
        for part in expected:
            assert part in err, (part, err)
    assert not fresh.exists()
    assert _files(existing) == before


@pytest.fixture(scope="module")
def report(stage_data, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run, index, report folder of a clean benchmark) for the refusals to leave alone."""
    run = trained_run(stage_data, "tiny_laff_ml", "epochs=1")
    index = built_index(stage_data, run)
    out = tmp_path_factory.mktemp("bench") / "report"
    assert cli("benchmark", "--run", run, "--index", index, "--out", out) == 0
    return run, index, out


@pytest.mark.parametrize("case", ["latin1_bytes_in_utf8", "duplicate_caption_id", "utf16_with_bom", "missing_file",
                                  "directory", "whitespace_only_file", "id_without_number_suffix"])
def test_benchmark_refuses_a_bad_caption_file_and_keeps_the_earlier_report(case, stage_data, report, tmp_path, capsys):
    run, index, earlier = report
    captions, expected = _bad_captions(stage_data, tmp_path / "ds", case)
    existing = tmp_path / "existing"
    shutil.copytree(earlier, existing)
    before = _files(existing)
    for out in (tmp_path / "fresh", existing):
        assert cli("benchmark", "--run", run, "--index", index, "--captions", captions, "--out", out) == 2
        err = _error(capsys, "benchmark")
        for part in expected:
            assert part in err, (part, err)
    assert not (tmp_path / "fresh").exists()
    assert _files(existing) == before


@pytest.mark.parametrize("case", ["latin1_bytes_in_utf8", "duplicate_caption_id", "line_without_text", "directory"])
def test_finetune_clip_refuses_a_bad_caption_file_before_making_its_run(case, stage_data, tmp_path, capsys):
    captions, expected = _bad_captions(stage_data, tmp_path / "ds", case)
    out = tmp_path / "run"
    assert cli("finetune-clip", "--videos", stage_data.dataset.videos_dir, "--captions", captions, "--config",
               "tiny_clip_ft", "--out", out, "--no-progress") == 2
    err = _error(capsys, "finetune-clip")
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists()


# ---------------------------------------------------------------- captions and splits naming videos without features


def test_train_refuses_splits_whose_videos_all_lack_features(stage_data, tmp_path, capsys):
    """Captions and splits of another dataset (no video has features here); some missing: test_train_stage.py."""
    ds = tmp_path / "other"
    ds.mkdir()
    for split in ("train", "val", "test"):
        (ds / f"{split}.txt").write_text("".join(f"other{v}\n" for v in stage_data.split(split)))
    (ds / "captions.txt").write_text("".join(f"other{line}\n" for line in _lines(stage_data)))
    out = tmp_path / "run"
    assert cli(*_train_args(stage_data, ds / "captions.txt", out)) == 2
    err = _error(capsys, "train")
    n = len(stage_data.split("train")) + len(stage_data.split("val"))
    assert f"{n} of {n}" in err and "'othervideo" in err and str(stage_data.features) in err
    assert not out.exists()


def test_train_refuses_captions_newer_than_their_text_features(stage_data, tmp_path, capsys):
    """A caption added after extract-text has no text feature: refused naming it, not trained without it."""
    ds = _dataset_dir(stage_data, tmp_path / "ds")
    vid = stage_data.split("train")[0]
    (ds / "captions.txt").write_text("\n".join(_lines(stage_data) + [f"{vid}#9 a caption added later"]) + "\n")
    out = tmp_path / "run"
    assert cli(*_train_args(stage_data, ds / "captions.txt", out)) == 2
    err = _error(capsys, "train")
    assert f"'{vid}#9'" in err and "text/clip" in err and "1 of" in err
    assert not out.exists()


def test_benchmark_refuses_test_videos_missing_from_the_index(stage_data, report, tmp_path, capsys):
    run, index, earlier = report
    ds = _dataset_dir(stage_data, tmp_path / "ds")
    (ds / "test.txt").write_text("".join(f"{v}\n" for v in stage_data.split("test") + ["ghost1", "ghost2"]))
    (ds / "captions.txt").write_text("\n".join(_lines(stage_data) + GHOSTS) + "\n")
    out = tmp_path / "report"
    assert cli("benchmark", "--run", run, "--index", index, "--captions", ds / "captions.txt", "--out", out) == 2
    err = _error(capsys, "benchmark")
    assert "2 test videos are not in" in err and "ghost1" in err and str(index) in err
    assert not out.exists()


# ================================================================ configs


def _command(command: str, stage, out: Path, config: str, *sets: str) -> list:
    """The command as a user runs it on the stage data, with ``--config`` and ``--set``s."""
    base = {
        "extract": ["extract", stage.dataset.videos_dir, "--out", out, "--extractors", "clip", "--no-progress", *IN_PROCESS],
        "extract-text": ["extract-text", stage.captions, "--out", out, "--encoders", "clip,bow", "--no-progress"],
        "train": ["train", "--features", stage.features, "--captions", stage.captions, "--out", out, "--no-progress"],
        "finetune-clip": ["finetune-clip", "--videos", stage.dataset.videos_dir, "--captions", stage.captions,
                          "--out", out, "--no-progress"],
    }[command]
    args = [*base, "--config", config]
    for s in sets:
        args += ["--set", s]
    return args


GOOD = {"extract": "tiny", "extract-text": "tiny", "train": "tiny_laff_ml", "finetune-clip": "tiny_clip_ft"}
REPO = Path(__file__).resolve().parents[1]

# name -> (file content (bytes) or a path/name, substrings; "{path}" = the config file)
CONFIG_FILES: dict[str, tuple[object, list[str]]] = {
    "malformed_yaml": (b"epochs: 1\nhead:\n  type: laff\n   dim: 3\n", ["{path} line 4", "not valid YAML"]),
    "unclosed_list": (b"output:\n  formats: [parquet\n", ["{path} line 3", "not valid YAML"]),
    "empty_file": (b"", ["{path}", "empty config (no settings)"]),
    "only_comments": (b"# nothing set yet\n", ["{path}", "empty config (no settings)"]),
    "latin1_bytes": (b"# r\xe9glages\nepochs: 1\n", ["{path} line 1", "not valid UTF-8"]),
    "top_level_list": (b"- epochs: 1\n", ["{path}", "expected a mapping of keys at the top level"]),
    "top_level_scalar": (b"laff\n", ["{path}", "expected a mapping of keys at the top level"]),
    "missing_file": (None, ["{path}", "not found"]),
    "directory": ("dir", ["{path}", "is a directory"]),
}


def _config_file(case: str, folder: Path) -> Path:
    content = CONFIG_FILES[case][0]
    path = folder / "mine.yaml"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize("command", list(GOOD))
@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_a_bad_config_file_is_refused_naming_it(case, command, stage_data, tmp_path, capsys):
    path = _config_file(case, tmp_path)
    out = tmp_path / "out"
    assert cli(*_command(command, stage_data, out, str(path))) == 2
    err = _error(capsys, command)
    for part in CONFIG_FILES[case][1]:
        assert part.replace("{path}", str(path)) in err, (part, err)
    assert not out.exists()


# command -> (config given, what it is named as, what it is not)
WRONG_KIND = [
    ("extract", "configs/train/tiny_laff_ml.yaml", "a fusion training config", "not an extraction config"),
    ("extract-text", "configs/datasets/synth.yaml", "a dataset config", "not an extraction config"),
    ("train", "configs/extract/tiny.yaml", "an extraction config", "not a fusion training config"),
    ("train", "configs/train/tiny_clip_ft.yaml", "an extractor fine-tuning config", "not a fusion training config"),
    ("finetune-clip", "configs/train/tiny_laff_ml.yaml", "a fusion training config", "not an extractor fine-tuning config"),
]


@pytest.mark.parametrize("command, config, kind, not_kind", WRONG_KIND, ids=[f"{c}-{Path(p).stem}" for c, p, *_ in WRONG_KIND])
def test_a_config_of_another_kind_is_named_as_such(command, config, kind, not_kind, stage_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(*_command(command, stage_data, out, str(REPO / config))) == 2
    err = _error(capsys, command)
    assert str(REPO / config) in err and f"this is {kind}" in err and not_kind in err
    assert not out.exists()
    # by bundled name, a config of another folder is not found there (and the message lists what is)
    assert cli(*_command(command, stage_data, out, "tiny_meanp" if command.startswith("extract") else "default")) == 2
    err = _error(capsys, command)
    assert "not found" in err and "configs/" in err and not out.exists()


# (command, --set or "file:<yaml>", substrings naming the key and the reason)
CONFIG_VALUES = [
    # ---- extract / extract-text (one schema; each command checks the whole file)
    ("extract", "decode.backnd=pyav", ["'decode.backnd'", "not in 'DecodeConfig'"]),
    ("extract", "extractors.clip.batch_sise=4", ["'extractors.clip.batch_sise'", "Did you mean"]),
    ("extract", "extractors.i3d={}", ["extractors.i3d", "unknown extractor 'i3d'"]),
    ("extract", "file:decode:\n  backend: pyav\nouput:\n  shard_size: 4\n", ["'ouput'", "{path}"]),
    ("extract", "output.shard_size=abc", ["'output.shard_size'", "could not be converted to Integer"]),
    ("extract", "output.shard_size=[4,8]", ["'output.shard_size'", "ListConfig"]),
    ("extract", "output.formats=parquet", ["output.formats: expected a list, got 'parquet'"]),
    ("extract", "output=3", ["output: expected a mapping of settings (OutputConfig), got 3"]),
    ("extract", "extractors=[clip]", ["extractors: expected a mapping of settings"]),
    ("extract", "output.shard_size=0", ["output.shard_size must be >= 1, got 0"]),
    ("extract", "output.formats=[parquet,csv]", ["output.formats", "'csv'"]),
    ("extract", "output.formats=[]", ["output.formats is empty"]),
    ("extract", "decode.backend=ffmpegx", ["decode.backend", "'ffmpegx'", "available: decord, pyav"]),
    ("extract", "decode.fallback=nope", ["decode.fallback", "'nope'"]),
    ("extract", "decode.extensions=[]", ["decode.extensions is empty"]),
    ("extract", "file:decode:\n  backend: null\n", ["'decode.backend'", "Incompatible value 'None'"]),
    ("extract", "extractors.clip.batch_size=0", ["extractor 'clip'", "batch_size must be >= 1"]),  # found when built
    ("extract", "extractors.clip.sampling.kind=clips", ["extractor 'clip'", "sampling.kind"]),  # found when built
    ("extract", "extractors.clip.pretrained=/no/such/weights.pt", ["/no/such/weights.pt", "not found"]),
    ("extract-text", "text.encoders=[clip,glove]", ["text.encoders", "'glove'"]),
    ("extract-text", "text.encoders=clip", ["text.encoders: expected a list, got 'clip'"]),
    ("extract-text", "text.batch_size=0", ["text.batch_size must be >= 1, got 0"]),
    ("extract-text", "text.shard_size=-1", ["text.shard_size must be >= 1, got -1"]),
    ("extract-text", "text.bow.min_count=0", ["text.bow.min_count must be >= 1, got 0"]),
    ("extract-text", "text.bow.min_cnt=2", ["'text.bow.min_cnt'", "Did you mean"]),
    ("extract-text", "decode.backend=ffmpegx", ["decode.backend", "'ffmpegx'"]),  # one config file for both commands
    ("extract-text", "extractors.clip.batch_size=0", ["extractor 'clip'", "batch_size must be >= 1"]),  # found when built
    ("extract-text", "device=cpu", ["'device'", "not in 'ExtractConfig'"]),
    # ---- train
    ("train", "epochz=3", ["'epochz'", "Did you mean"]),
    ("train", "head.gru.hiden=8", ["'head.gru.hiden'", "Did you mean"]),
    ("train", "epochs=abc", ["'epochs'", "could not be converted to Integer"]),
    ("train", "epochs=[1,2]", ["'epochs'", "ListConfig"]),
    ("train", "amp=maybe", ["'amp'", "not a valid bool"]),
    ("train", "head.laff_ml.video_features=clip", ["head.laff_ml.video_features: expected a list, got 'clip'"]),
    ("train", "head=laff", ["head: expected a mapping of settings (HeadConfig), got 'laff'"]),
    ("train", "file:epochs: null\n", ["'epochs'", "Incompatible value 'None'"]),
    ("train", "epochs=0", ["epochs must be >= 1 (got 0)"]),
    ("train", "batch_size=-3", ["batch_size must be >= 1 (got -3)"]),
    ("train", "head.laff_ml.dim=0", ["head.laff_ml.dim must be >= 1, got 0"]),
    ("train", "head.laff_ml.heads=0", ["head.laff_ml.heads must be >= 1, got 0"]),
    ("train", "head.laff_ml.dim=129", ["head.laff_ml.dim must be a multiple of head.laff_ml.heads=2, got 129"]),
    ("train", "head.laff_ml.dropout=1.5", ["head.laff_ml.dropout must be in [0, 1), got 1.5"]),
    ("train", "head.laff_ml.video_features=[x3d]", ["head.laff_ml.video_features has no '<name>@frames' feature",
                                                    "multi-level", "head.type=laff"]),
    ("train", "amp_dtype=half", ["amp_dtype must be one of auto, float16, bfloat16 (got 'half')"]),
    ("train", "head.gru.hidden=0", ["head.gru.hidden must be >= 1, got 0"]),
    ("train", "head.laff_ml.video_features=[]", ["head.laff_ml.video_features is empty"]),
    ("train", "head.laff_ml.text_features=[clip,clip]", ["head.laff_ml.text_features names ['clip'] more than once"]),
    ("train", "optim.lr=-1", ["optim.lr must be > 0, got -1.0"]),
    ("train", "optim.warmup=1.5", ["optim.warmup must be in [0, 1)"]),
    ("train", "optim.plateau_factor=2", ["optim.plateau_factor must be in (0, 1]"]),
    ("train", "early_stop=-1", ["early_stop must be >= 0, got -1"]),
    ("train", "num_workers=-1", ["num_workers must be >= 0, got -1"]),
    ("train", "head.type=lafff", ["head.type must be one of", "got 'lafff'"]),
    ("train", "head.laff_ml.loss.direction=sideways", ["head.laff_ml.loss.direction must be one of", "'sideways'"]),
    ("train", "head.laff_ml.loss.margin=-0.2", ["head.laff_ml.loss.margin must be >= 0"]),
    ("train", "optim.name=adamx", ["optim.name 'adamx' is unknown"]),
    ("train", "optim.schedule=linear", ["optim.schedule 'linear' is unknown"]),
    ("train", "device=tpu", ["device 'tpu' is not a torch device"]),
    ("train", "file:head:\n  type: dllfa\n  dllfa:\n    layers: 0\n", ["{path}", "head.dllfa.layers must be >= 1, got 0"]),
    ("train", "head.laff_ml.video_passthrough=[ircsn]", ["passthrough feature 'ircsn'"]),  # found when the head is built
    # ---- finetune-clip
    ("finetune-clip", "loss.direction=up", ["loss.direction must be t2v, v2t or both"]),
    ("finetune-clip", "loss.margin=-1", ["loss.margin must be >= 0"]),
    ("finetune-clip", "accum_steps=0", ["accum_steps must be >= 1"]),
    ("finetune-clip", "clip_lr_scale=0", ["clip_lr_scale must be > 0"]),
    ("finetune-clip", "optim.lr=-1", ["optim.lr must be > 0"]),
    ("finetune-clip", "early_stop=-1", ["early_stop must be >= 0"]),
    ("finetune-clip", "num_workers=-1", ["num_workers must be >= 0"]),
    ("finetune-clip", "device=tpu", ["device 'tpu' is not a torch device"]),
    ("finetune-clip", "decode.backend=ffmpegx", ["decode.backend", "'ffmpegx'"]),
    ("finetune-clip", "clip.sampling.num_frames=0", ["clip.sampling.num_frames must be an integer >= 1"]),
    ("finetune-clip", "clip.batch_sise=4", ["'clip.batch_sise'", "Did you mean"]),
    ("finetune-clip", "clip.batch_size=0", ["batch_size must be >= 1"]),  # found when CLIP is built
]


@pytest.mark.parametrize("command, setting, expected", CONFIG_VALUES,
                         ids=[f"{c}-{s.splitlines()[-1].strip() if s.startswith('file:') else s}" for c, s, _ in CONFIG_VALUES])
def test_a_bad_config_value_is_refused_naming_the_key(command, setting, expected, stage_data, tmp_path, capsys):
    """``file:`` cases are a config file of their own (over the schema defaults), the others a ``--set``."""
    out = tmp_path / "out"
    if setting.startswith("file:"):
        path = tmp_path / "mine.yaml"
        path.write_text(setting[len("file:"):])
        args = _command(command, stage_data, out, str(path))
    else:
        path = None
        args = _command(command, stage_data, out, GOOD[command], setting)
    assert cli(*args) == 2
    err = _error(capsys, command)
    for part in expected:
        assert part.replace("{path}", str(path)) in err, (part, err)
    assert not out.exists()


# command -> bad settings: one refused when the config is loaded, one only when the job builds its model
LATE = {
    "extract": ["output.shard_size=0", "extractors.clip.batch_size=0"],
    "extract-text": ["text.batch_size=0", "extractors.clip.batch_size=0"],
    "train": ["optim.lr=-1", "head.laff_ml.video_passthrough=[ircsn]"],
    "finetune-clip": ["optim.lr=-1", "clip.batch_size=0"],
}


@pytest.mark.parametrize("command", list(LATE))
def test_a_refused_config_leaves_an_existing_output_as_it_was(command, stage_data, tmp_path, capsys):
    existing = tmp_path / "existing"
    if command.startswith("extract"):
        shutil.copytree(stage_data.features, existing)
    elif command == "train":
        shutil.copytree(trained_run(stage_data, "tiny_laff_ml", "epochs=1"), existing)
    else:  # a stand-in for an earlier clip-ft run: a refused run must not touch any file of it
        existing.mkdir()
        (existing / "metrics.jsonl").write_text('{"epoch": 0}\n')
    before = _files(existing)
    for setting in LATE[command]:
        assert cli(*_command(command, stage_data, existing, GOOD[command], setting)) == 2, setting
        _error(capsys, command)
        assert _files(existing) == before, setting


def test_extract_refuses_a_batch_size_flag_below_one_before_making_its_folder(stage_data, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(*_command("extract", stage_data, out, "tiny"), "--batch-videos", "0") == 2
    assert "--batch-videos must be >= 1, got 0" in _error(capsys, "extract")
    assert not out.exists()


def test_the_refusal_cleanup_removes_only_folders_holding_nothing_but_a_free_lock(tmp_path):
    """What a refused run may remove: a folder it made that holds only its (released) lock."""
    import fcntl

    from vidfuse.commands.common import no_new_folder_if_refused
    from vidfuse.errors import VidfuseError

    def refused(folder: Path, make) -> None:
        with pytest.raises(VidfuseError):
            with no_new_folder_if_refused(str(folder)):
                make(folder)
                raise VidfuseError("refused")

    def lock_only(folder: Path) -> None:
        (folder / "text").mkdir(parents=True)
        (folder / "text" / LOCK).write_text("pid 1")

    refused(tmp_path / "a", lock_only)
    assert not (tmp_path / "a").exists()

    refused(tmp_path / "b", lambda f: (lock_only(f), (f / "text" / "part-0.parquet").write_bytes(b"x")))
    assert (tmp_path / "b" / "text" / "part-0.parquet").exists()  # an output of the run: kept

    held = {}

    def lock_held_by_another_job(folder: Path) -> None:
        lock_only(folder)
        held["handle"] = open(folder / "text" / LOCK, "a")
        fcntl.flock(held["handle"], fcntl.LOCK_EX | fcntl.LOCK_NB)

    refused(tmp_path / "c", lock_held_by_another_job)
    assert (tmp_path / "c" / "text" / LOCK).exists()
    held["handle"].close()

    (tmp_path / "d").mkdir()  # existed before the run: never removed
    refused(tmp_path / "d", lambda f: None)
    assert (tmp_path / "d").is_dir()
