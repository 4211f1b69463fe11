"""Dataset adapters on small fixtures written in each benchmark's real annotation format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.captions import CaptionFormatError, read_captions
from pipeline.datasets import (
    DatasetError,
    load_dataset,
    load_dataset_config,
    write_pipeline_form,
)
from pipeline.splits import find_split_files, read_split
from vidfuse.errors import ConfigError

DATASETS = ("msrvtt", "msvd", "tgif", "vatex", "lsmdc", "synth")


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _counts(spec):
    return (len({c.video_id for c in spec.captions}), len(spec.captions), {k: len(v) for k, v in spec.splits.items()})


def test_bundled_configs_validate():
    for name in DATASETS:
        cfg = load_dataset_config(name)
        assert cfg.name == name and cfg.default_variant in cfg.variants


def test_config_errors(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "name: x\ndefault_variant: a\nvariants:\n  a:\n    reader: msvd\n    filez: {}\n")
    with pytest.raises(ConfigError, match="filez"):
        load_dataset_config(str(bad))
    bad = _write(tmp_path / "bad2.yaml", "name: x\ndefault_variant: a\nvariants:\n  a:\n    reader: nosuch\n")
    with pytest.raises(DatasetError, match="unknown reader 'nosuch'"):
        load_dataset_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_dataset_config("no_such_dataset")
    with pytest.raises(DatasetError, match="unknown split variant"):
        load_dataset("msrvtt", tmp_path, "5k")
    with pytest.raises(DatasetError, match="root folder not found"):
        load_dataset("msrvtt", tmp_path / "missing")


# ----------------------------------------------------------------------------- MSR-VTT


def _msrvtt_json(video_ranges: dict[str, range], caps_per_video: int = 3) -> dict:
    videos, sentences = [], []
    for split, rng in video_ranges.items():
        for i in rng:
            videos.append({"category": 9, "url": f"https://www.youtube.com/watch?v=x{i}", "video_id": f"video{i}",
                           "start time": 1.0, "end time": 9.0, "split": split, "id": i})
    sen = 0
    for k in range(caps_per_video):  # interleaved by video, as in the real file
        for v in videos:
            sentences.append({"caption": f"caption {k} of {v['video_id']}, with a comma", "video_id": v["video_id"],
                              "sen_id": sen})
            sen += 1
    return {"info": {"year": "2016"}, "videos": videos, "sentences": sentences}


SPLIT_3K = {"train": range(0, 7), "validate": range(7, 9), "test": range(9, 12)}


def _msrvtt_root(root: Path) -> Path:
    data = root / "msrvtt_data"
    _write(data / "MSRVTT_data.json", json.dumps(_msrvtt_json(SPLIT_3K)))
    _write(data / "MSRVTT_train.9k.csv", "video_id\n" + "".join(f"video{i}\n" for i in range(9)))
    _write(data / "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,sentence\n" + "".join(
        f'ret{j},msr{i},video{i},"a test sentence, number {j}"\n' for j, i in enumerate(range(9, 12))))
    (root / "videos" / "all").mkdir(parents=True)
    return root


def test_msrvtt_1ka(tmp_path):
    spec = load_dataset("msrvtt", _msrvtt_root(tmp_path))
    assert spec.variant == "1k-A"
    # 9 train videos x 3 captions from the JSON + 3 test videos x 1 JSFusion sentence
    assert _counts(spec) == (12, 30, {"train": 9, "val": 3, "test": 3})
    assert spec.splits["val"] == spec.splits["test"] == ["video9", "video10", "video11"]
    test_caps = [c for c in spec.captions if c.video_id == "video10"]
    assert [(c.caption_id, c.text) for c in test_caps] == [("video10#0", "a test sentence, number 1")]
    assert [c.caption_id for c in spec.captions if c.video_id == "video0"] == ["video0#0", "video0#1", "video0#2"]
    assert spec.video_dir == str(tmp_path / "videos" / "all")
    assert any("expected" in n or "complete release" in n for n in spec.notes)  # fixture is not 9k/1k


def test_msrvtt_3k_from_msrvtt_data_json(tmp_path):
    spec = load_dataset("msrvtt", _msrvtt_root(tmp_path), "3k")
    assert _counts(spec) == (12, 36, {"train": 7, "val": 2, "test": 3})


def test_msrvtt_3k_from_videodatainfo_files(tmp_path):
    full = _msrvtt_json(SPLIT_3K)
    trainval = {"info": full["info"], "videos": [v for v in full["videos"] if v["split"] != "test"],
                "sentences": [s for s in full["sentences"] if int(s["video_id"][5:]) < 9]}
    test = {"info": full["info"], "videos": [v for v in full["videos"] if v["split"] == "test"],
            "sentences": [s for s in full["sentences"] if int(s["video_id"][5:]) >= 9]}
    _write(tmp_path / "train_val_annotation" / "train_val_videodatainfo.json", json.dumps(trainval))
    _write(tmp_path / "test_videodatainfo.json", json.dumps(test))
    spec = load_dataset("msrvtt", tmp_path, "3k")
    assert _counts(spec) == (12, 36, {"train": 7, "val": 2, "test": 3})


def test_msrvtt_errors(tmp_path):
    root = _msrvtt_root(tmp_path)
    csv_path = root / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv"
    csv_path.write_text("key,vid_key,video_id\nret0,msr9,video9\n")
    with pytest.raises(CaptionFormatError) as info:
        load_dataset("msrvtt", root)
    assert str(csv_path) in str(info.value) and "line 1" in str(info.value) and "sentence" in str(info.value)

    csv_path.write_text('key,vid_key,video_id,sentence\nret0,msr9,video9,"ok"\nret1,msr10,video10\n')
    with pytest.raises(CaptionFormatError, match=r"JSFUSION_test\.csv line 3: 3 fields"):
        load_dataset("msrvtt", root)

    (root / "msrvtt_data" / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo9\n")
    csv_path.write_text('key,vid_key,video_id,sentence\nret0,msr9,video9,"ok"\n')
    with pytest.raises(DatasetError, match="in both train and test"):
        load_dataset("msrvtt", root)

    ann = root / "msrvtt_data" / "MSRVTT_data.json"
    data = _msrvtt_json(SPLIT_3K)
    del data["videos"][3]["split"]
    ann.write_text(json.dumps(data))
    with pytest.raises(CaptionFormatError, match=r"videos\[3\]: missing key 'split'"):
        load_dataset("msrvtt", root, "3k")
    ann.write_text('{"videos": [],\n "sentences": [\n {"video_id": "v" "caption": "x"}]}')
    with pytest.raises(CaptionFormatError, match=r"MSRVTT_data\.json line 3: invalid JSON"):
        load_dataset("msrvtt", root, "3k")
    ann.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("msrvtt", root)
    assert "annotations file not found" in str(info.value) and "MSRVTT_data.json" in str(info.value)


# ----------------------------------------------------------------------------- MSVD

MSVD_CLIPS = ["-4wsuPCjDBc_5_15", "-7KMZQEsJW4_205_208", "-8y1Q0rA3n8_108_115", "00jrXRMlZOY_0_10",
              "0lh_UWF9ZP4_62_69", "1dfR0A_BXjw_2_7"]


def _msvd_root(root: Path, lists: bool = True) -> Path:
    lines = ["# MSVD English descriptions", "# VideoID Description", ""]
    for i, clip in enumerate(MSVD_CLIPS):
        for k in range(i % 3 + 2):  # 2, 3, 4, 2, 3, 4 descriptions
            lines.append(f"{clip} a squirrel is eating a peanut in it's shell {k}.")
    _write(root / "AllVideoDescriptions.txt", "\n".join(lines) + "\n")
    _write(root / "youtube_mapping.txt", "".join(f"{c} vid{i + 1}\n" for i, c in enumerate(MSVD_CLIPS)))
    if lists:
        _write(root / "train_list.txt", "\n".join(MSVD_CLIPS[:4]) + "\n")
        _write(root / "val_list.txt", MSVD_CLIPS[4] + "\n")
        _write(root / "test_list.txt", MSVD_CLIPS[5] + "\n")
    (root / "YouTubeClips").mkdir()
    return root


def test_msvd_with_split_lists(tmp_path):
    spec = load_dataset("msvd", _msvd_root(tmp_path))
    assert _counts(spec) == (6, 18, {"train": 4, "val": 1, "test": 1})
    assert spec.captions[0].caption_id == "-4wsuPCjDBc_5_15#0"
    assert spec.captions[0].text == "a squirrel is eating a peanut in it's shell 0."
    assert spec.video_dir == str(tmp_path / "YouTubeClips")


def test_msvd_mapping_ranges(tmp_path):
    root = _msvd_root(tmp_path, lists=False)
    cfg = _write(tmp_path / "msvd_small.yaml", """
name: msvd_small
default_variant: standard
video_dir: [YouTubeClips]
variants:
  standard:
    reader: msvd
    files:
      descriptions: [AllVideoDescriptions.txt]
      mapping: [youtube_mapping.txt]
      train_list: [train_list.txt]
    ranges: {train: [1, 3], val: [4, 4], test: [5, 6]}
""")
    spec = load_dataset(str(cfg), root)
    assert _counts(spec) == (6, 18, {"train": 3, "val": 1, "test": 2})
    assert spec.splits["test"] == MSVD_CLIPS[4:]


def test_msvd_malformed(tmp_path):
    root = _msvd_root(tmp_path)
    path = root / "AllVideoDescriptions.txt"
    lines = path.read_text().splitlines()
    lines[6] = "00jrXRMlZOY_0_10"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptionFormatError, match=r"AllVideoDescriptions\.txt line 7: expected '<clip name> <description>'"):
        load_dataset("msvd", root)
    _msvd_root(tmp_path / "b", lists=False)
    (tmp_path / "b" / "youtube_mapping.txt").write_text("clipA vid1\nclipB video2\n")
    with pytest.raises(CaptionFormatError, match=r"youtube_mapping\.txt line 2"):
        load_dataset("msvd", tmp_path / "b")


# ----------------------------------------------------------------------------- TGIF


def _gif(i: int) -> str:
    return f"https://38.media.tumblr.com/{i:032x}/tumblr_n{i}abcXYZo1_{250 + i}.gif"


def _tgif_root(root: Path) -> Path:
    rows = []
    for i in range(8):
        n = 3 if i >= 6 else 1  # test GIFs have three sentences
        rows += [f'{_gif(i)}\ta man says "hello", then waves {k}' for k in range(n)]
    _write(root / "data" / "tgif-v1.0.tsv", "\n".join(rows) + "\n")
    _write(root / "data" / "splits" / "train.txt", "".join(_gif(i) + "\n" for i in range(4)))
    _write(root / "data" / "splits" / "val.txt", "".join(_gif(i) + "\n" for i in range(4, 6)))
    _write(root / "data" / "splits" / "test.txt", "".join(_gif(i) + "\n" for i in range(6, 8)))
    return root


def test_tgif(tmp_path):
    spec = load_dataset("tgif", _tgif_root(tmp_path))
    assert _counts(spec) == (8, 12, {"train": 4, "val": 2, "test": 2})
    assert spec.splits["train"][0] == "tumblr_n0abcXYZo1_250"
    cap = next(c for c in spec.captions if c.video_id == "tumblr_n7abcXYZo1_257")
    assert cap.text == 'a man says "hello", then waves 0'


def test_tgif_malformed(tmp_path):
    root = _tgif_root(tmp_path)
    tsv = root / "data" / "tgif-v1.0.tsv"
    lines = tsv.read_text().splitlines()
    lines[2] = lines[2].replace("\t", " ")
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(CaptionFormatError, match=r"tgif-v1\.0\.tsv line 3: 1 tab-separated fields, expected 2"):
        load_dataset("tgif", root)


# ----------------------------------------------------------------------------- VATEX


def _vatex_items(prefix: str, n: int) -> list[dict]:
    return [{"videoID": f"{prefix}{i}-x_{i:06d}_{i + 10:06d}",
             "enCap": [f"A person does thing {k} in video {i}." for k in range(10)],
             "chCap": [f"一个人做第{k}件事" for k in range(10)]} for i in range(n)]


def _vatex_root(root: Path) -> Path:
    _write(root / "vatex_training_v1.0.json", json.dumps(_vatex_items("tr", 4), ensure_ascii=False))
    val = _vatex_items("va", 4)
    _write(root / "vatex_validation_v1.0.json", json.dumps(val, ensure_ascii=False))
    test = [{"videoID": d["videoID"], "enCap": d["enCap"]} for d in _vatex_items("te", 2)]
    _write(root / "vatex_public_test_english_v1.1.json", json.dumps(test))
    _write(root / "vatex_val1k5.txt", "\n".join(v["videoID"] for v in val[:2]) + "\n")
    _write(root / "vatex_test1k5.txt", "\n".join(v["videoID"] for v in val[2:]) + "\n")
    return root


def test_vatex_official_and_1k5(tmp_path):
    root = _vatex_root(tmp_path)
    spec = load_dataset("vatex", root)
    assert _counts(spec) == (10, 100, {"train": 4, "val": 4, "test": 2})
    assert spec.captions[0].caption_id == "tr0-x_000000_000010#0"
    spec = load_dataset("vatex", root, "1k5")
    assert _counts(spec) == (8, 80, {"train": 4, "val": 2, "test": 2})
    assert set(spec.splits["val"]).isdisjoint(spec.splits["test"])


def test_vatex_malformed(tmp_path):
    root = _vatex_root(tmp_path)
    items = _vatex_items("va", 3)
    del items[1]["enCap"]
    (root / "vatex_validation_v1.0.json").write_text(json.dumps(items))
    with pytest.raises(CaptionFormatError, match=r"vatex_validation_v1\.0\.json \[1\]: missing key 'enCap'"):
        load_dataset("vatex", root)
    (root / "vatex_validation_v1.0.json").write_text(json.dumps({"videoID": "x"}))
    with pytest.raises(CaptionFormatError, match="expected a list of videos"):
        load_dataset("vatex", root)


# ----------------------------------------------------------------------------- LSMDC


def _lsmdc_row(clip: str, sentence: str) -> str:
    return "\t".join([clip, "00.00.51.926", "00.00.54.129", "00.00.51.000", "00.00.55.000", sentence])


def _lsmdc_root(root: Path) -> Path:
    train = [_lsmdc_row(f"0001_American_Beauty_00.00.{i:02d}.000-00.00.{i + 2:02d}.000", f'SOMEONE says "hi", {i}.')
             for i in range(4)]
    train.append(_lsmdc_row("0001_American_Beauty_00.00.00.000-00.00.02.000", "SOMEONE turns away."))
    _write(root / "LSMDC16_annos_training.csv", "\n".join(train) + "\n")
    _write(root / "LSMDC16_annos_val.csv",
           "\n".join(_lsmdc_row(f"1010_TITANIC_00.01.{i:02d}.000-00.01.{i + 3:02d}.000", f"He looks {i}.")
                     for i in range(2)) + "\n")
    _write(root / "LSMDC16_challenge_1000_publictect.csv",
           "\n".join(_lsmdc_row(f"3001_21_JUMP_STREET_00.02.{i:02d}.000-00.02.{i + 1:02d}.000", f"They run {i}.")
                     for i in range(3)) + "\n")
    return root


def test_lsmdc(tmp_path):
    spec = load_dataset("lsmdc", _lsmdc_root(tmp_path))
    assert _counts(spec) == (9, 10, {"train": 4, "val": 2, "test": 3})
    caps = [c for c in spec.captions if c.video_id == "0001_American_Beauty_00.00.00.000-00.00.02.000"]
    assert [c.text for c in caps] == ['SOMEONE says "hi", 0.', "SOMEONE turns away."]
    assert [c.caption_id for c in caps] == ["0001_American_Beauty_00.00.00.000-00.00.02.000#0",
                                            "0001_American_Beauty_00.00.00.000-00.00.02.000#1"]


def test_lsmdc_malformed(tmp_path):
    root = _lsmdc_root(tmp_path)
    path = root / "LSMDC16_annos_val.csv"
    path.write_text(path.read_text() + "1010_TITANIC_x\t00.01\tHe falls.\n")
    with pytest.raises(CaptionFormatError, match=r"LSMDC16_annos_val\.csv line 3: 3 tab-separated fields, expected 6"):
        load_dataset("lsmdc", root)
    (root / "LSMDC16_annos_training.csv").write_bytes(b"\xff\xfe bad")
    with pytest.raises(CaptionFormatError, match=r"LSMDC16_annos_training\.csv line 1: not valid UTF-8"):
        load_dataset("lsmdc", root)
    root = _lsmdc_root(tmp_path / "fresh")
    (root / "LSMDC16_challenge_1000_publictect.csv").unlink()
    with pytest.raises(DatasetError, match="test file not found"):
        load_dataset("lsmdc", root)


# ----------------------------------------------------------------------------- pipeline form


def test_write_pipeline_form_round_trip(tmp_path):
    spec = load_dataset("msrvtt", _msrvtt_root(tmp_path / "msrvtt"))
    paths = write_pipeline_form(spec, tmp_path / "out")
    assert read_captions(paths["captions"]) == spec.captions
    found = find_split_files(paths["captions"])
    assert {s: read_split(p) for s, p in found.items()} == spec.splits
    meta = json.loads(Path(paths["meta"]).read_text())
    assert meta["splits"] == {"train": 9, "test": 3, "val": 3} and meta["captions"] == 30
    # the written form loads again through the generic reader
    again = load_dataset("synth", tmp_path / "out")
    assert again.captions == spec.captions and again.splits == spec.splits


def test_dataset_drops_split_videos_without_captions(tmp_path):
    root = _tgif_root(tmp_path)
    with open(root / "data" / "splits" / "train.txt", "a") as f:
        f.write("https://38.media.tumblr.com/ffff/tumblr_missing_400.gif\n")
    spec = load_dataset("tgif", root)
    assert len(spec.splits["train"]) == 4
    assert any("no caption" in n and "tumblr_missing_400" in n for n in spec.notes)


def test_module_entry_point(tmp_path, capsys):
    from pipeline.datasets import main

    root = _lsmdc_root(tmp_path / "lsmdc")
    assert main(["lsmdc", str(root), str(tmp_path / "out")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"] == {"train": 4, "val": 2, "test": 3} and summary["captions"] == 10
    assert len(read_captions(tmp_path / "out" / "captions.txt")) == 10
    assert main(["lsmdc", str(tmp_path / "nowhere"), str(tmp_path / "out2")]) == 2
    assert "root folder not found" in capsys.readouterr().err
