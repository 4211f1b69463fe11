"""Caption files in every supported format, format detection, errors, and split discovery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.captions import (
    Caption,
    CaptionFormatError,
    captions_by_video,
    detect_format,
    read_captions,
    video_id_of,
    write_captions,
)
from pipeline.splits import SplitError, find_split_files, read_split
from vidfuse.errors import VidfuseError


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- formats


def test_laff_text_with_enc_variants_and_blank_lines(tmp_path):
    p = _write(tmp_path / "caps.txt",
               "video7768#14 a man is singing\n\nvideo0#enc#0 a car is shown\r\nvideo0#enc#1 a red car\n"
               "video9.mp4#0 résumé of a café\t scene\n")
    caps = read_captions(p)
    assert caps == [
        Caption("video7768#14", "video7768", "a man is singing"),
        Caption("video0#enc#0", "video0", "a car is shown"),
        Caption("video0#enc#1", "video0", "a red car"),
        Caption("video9.mp4#0", "video9", "résumé of a café scene"),
    ]
    assert video_id_of("tgif_x#enc#3") == "tgif_x"


def test_msrvtt_json_assigns_per_video_ids_in_file_order(tmp_path):
    data = {
        "info": {"year": "2016"},
        "videos": [{"video_id": "video0", "split": "train"}],
        "sentences": [
            {"sen_id": 0, "video_id": "video0", "caption": "a car drives"},
            {"sen_id": 1, "video_id": "video1", "caption": "a cat — sleeping"},
            {"sen_id": 2, "video_id": "video0", "caption": "someone drives"},
        ],
    }
    p = _write(tmp_path / "MSRVTT_data.json", json.dumps(data, ensure_ascii=False, indent=2))
    caps = read_captions(p)
    assert [(c.caption_id, c.text) for c in caps] == [
        ("video0#0", "a car drives"), ("video1#0", "a cat — sleeping"), ("video0#1", "someone drives")]


def test_csv_with_quoted_commas_newlines_and_unicode(tmp_path):
    p = _write(tmp_path / "caps.csv",
               'video_id,caption\nv1,"a man, a woman, and a dog"\nv2,"two\nlines"\nv1,日本語のキャプション\n\n')
    caps = read_captions(p)
    assert [(c.caption_id, c.video_id, c.text) for c in caps] == [
        ("v1#0", "v1", "a man, a woman, and a dog"),
        ("v2#0", "v2", "two lines"),
        ("v1#1", "v1", "日本語のキャプション"),
    ]


def test_csv_sentence_column_and_explicit_ids(tmp_path):
    p = _write(tmp_path / "test.csv", "key,vid_key,video_id,sentence\nret0,msr7,video7,a dog runs\n")
    assert read_captions(p) == [Caption("video7#0", "video7", "a dog runs")]
    p2 = _write(tmp_path / "ids.csv", "caption_id,video_id,caption\nv3#9,v3,hello\n")
    assert read_captions(p2) == [Caption("v3#9", "v3", "hello")]


def test_jsonl(tmp_path):
    p = _write(tmp_path / "caps.jsonl",
               '{"video_id": "a", "caption": "first"}\n\n{"video_id": "b", "caption": "ünïcode"}\n'
               '{"video_id": "a", "caption": "second", "caption_id": "a#7"}\n')
    assert read_captions(p) == [Caption("a#0", "a", "first"), Caption("b#0", "b", "ünïcode"),
                                Caption("a#7", "a", "second")]


def test_format_detection_by_extension_and_content(tmp_path):
    laff = "v1#0 a dog\n"
    csv_text = "video_id,caption\nv1,a dog\n"
    jsonl = '{"video_id": "v1", "caption": "a"}\n{"video_id": "v2", "caption": "b"}\n'
    msrvtt = json.dumps({"sentences": [{"video_id": "v1", "caption": "a"}]})
    assert detect_format(_write(tmp_path / "a.txt", laff)) == "laff"
    assert detect_format(_write(tmp_path / "a.csv", csv_text)) == "csv"
    assert detect_format(_write(tmp_path / "a.jsonl", jsonl)) == "jsonl"
    assert detect_format(_write(tmp_path / "a.json", msrvtt)) == "msrvtt"
    # no telling extension: decided by content
    assert detect_format(_write(tmp_path / "b.caps", laff)) == "laff"
    assert detect_format(_write(tmp_path / "b.data", csv_text)) == "csv"
    assert detect_format(_write(tmp_path / "b.dat", jsonl)) == "jsonl"
    assert detect_format(_write(tmp_path / "b.anno", msrvtt)) == "msrvtt"
    # JSON lines saved as .json
    assert detect_format(_write(tmp_path / "c.json", jsonl)) == "jsonl"
    assert len(read_captions(tmp_path / "c.json")) == 2
    # an explicit format overrides detection
    assert read_captions(_write(tmp_path / "d.dat", laff), fmt="laff")[0].video_id == "v1"
    with pytest.raises(CaptionFormatError, match="unknown caption format"):
        read_captions(tmp_path / "d.dat", fmt="xml")


def test_captions_by_video_keeps_order(tmp_path):
    caps = read_captions(_write(tmp_path / "c.txt", "b#0 x\na#0 y\nb#1 z\n"))
    grouped = captions_by_video(caps)
    assert list(grouped) == ["b", "a"]
    assert [c.caption_id for c in grouped["b"]] == ["b#0", "b#1"]


def test_write_captions_round_trip(tmp_path):
    caps = [Caption("v1#0", "v1", "a,  b\nc"), Caption("v2#enc#0", "v2", "日本")]
    write_captions(caps, tmp_path / "out" / "captions.txt")
    back = read_captions(tmp_path / "out" / "captions.txt")
    assert back == [Caption("v1#0", "v1", "a, b c"), Caption("v2#enc#0", "v2", "日本")]
    with pytest.raises(CaptionFormatError, match="does not start with its video id"):
        write_captions([Caption("v1#0", "v2", "x")], tmp_path / "bad.txt")


# ----------------------------------------------------------------------------- errors


def _error(path: Path, fmt: str | None = None) -> str:
    with pytest.raises(CaptionFormatError) as info:
        read_captions(path, fmt)
    assert isinstance(info.value, VidfuseError)
    return str(info.value)


def test_malformed_laff_line_names_file_and_line(tmp_path):
    p = _write(tmp_path / "caps.txt", "v1#0 fine\nv2#0 fine too\nthis line has no id marker\n")
    msg = _error(p)
    assert str(p) in msg and "line 3" in msg and "<video_id>#<k>" in msg
    p = _write(tmp_path / "notext.txt", "v1#0 fine\nv1#1\n")
    msg = _error(p)
    assert "line 2" in msg and "no text" in msg


def test_json_missing_key_names_json_path(tmp_path):
    p = _write(tmp_path / "MSRVTT_data.json",
               json.dumps({"sentences": [{"video_id": "v", "caption": "x"}, {"video_id": "v"}]}))
    msg = _error(p)
    assert str(p) in msg and "sentences[1]" in msg and "'caption'" in msg
    p = _write(tmp_path / "other.json", json.dumps({"videos": []}))
    assert "'sentences'" in _error(p)
    p = _write(tmp_path / "broken.json", '{"sentences": [\n  {"video_id": "v",\n  "caption" "x"}]}')
    msg = _error(p)
    assert "line 3" in msg and "invalid JSON" in msg


def test_jsonl_errors_name_line(tmp_path):
    p = _write(tmp_path / "c.jsonl", '{"video_id": "a", "caption": "x"}\n{"video_id": "b"}\n')
    msg = _error(p)
    assert "line 2" in msg and "'caption'" in msg
    p = _write(tmp_path / "d.jsonl", '{"video_id": "a", "caption": "x"}\n{not json}\n')
    assert "line 2" in _error(p)


def test_csv_missing_column_and_ragged_rows(tmp_path):
    p = _write(tmp_path / "c.csv", "video,caption\nv1,x\n")
    msg = _error(p)
    assert str(p) in msg and "line 1" in msg and "video_id" in msg
    p = _write(tmp_path / "d.csv", "video_id,caption\nv1,x\nv2,y,extra\n")
    msg = _error(p)
    assert "line 3" in msg and "fields" in msg
    p = _write(tmp_path / "e.csv", "video_id,caption\nv1,x\nv2\n")
    assert "line 3" in _error(p)


def test_bad_utf8_is_a_clear_error(tmp_path):
    p = _write(tmp_path / "latin1.txt", "v1#0 fine\nv2#0 caf".encode() + b"\xe9 au lait\n")
    msg = _error(p)
    assert str(p) in msg and "line 2" in msg and "UTF-8" in msg and "0xe9" in msg
    for name in ("bad.csv", "bad.json", "bad.jsonl"):
        q = _write(tmp_path / name, b"\xff\xfe\x00garbage")
        assert str(q) in _error(q)


def test_empty_file_is_an_error(tmp_path):
    for name in ("e.txt", "e.csv", "e.json", "e.jsonl"):
        p = _write(tmp_path / name, "\n  \n")
        msg = _error(p)
        assert str(p) in msg and ("empty" in msg or "no captions" in msg)
    p = _write(tmp_path / "header_only.csv", "video_id,caption\n")
    assert "no captions" in _error(p)


def test_duplicate_caption_ids(tmp_path):
    p = _write(tmp_path / "dup.txt", "v1#0 a\nv1#1 b\nv1#0 c\n")
    msg = _error(p)
    assert "line 3" in msg and "duplicate caption id 'v1#0'" in msg and "line 1" in msg
    p = _write(tmp_path / "dup.csv", "caption_id,video_id,caption\nv#0,v,a\nv#0,v,b\n")
    assert "duplicate caption id" in _error(p)


# A file read in blocks of a few bytes: every check sees the whole file, lines are never cut.
def test_streamed_reading_in_small_blocks_matches_the_whole_file(tmp_path, monkeypatch):
    import pipeline.captions as captions
    import pipeline.seen_ids as seen_ids

    lines = [f"v{i // 3}#{i % 3} caption number {i} with a café\r\n" for i in range(200)]
    laff = _write(tmp_path / "big.txt", "".join(lines))
    whole = read_captions(laff)
    monkeypatch.setattr(captions, "BLOCK_BYTES", 7)  # blocks end at newlines: CRLF and é stay whole
    monkeypatch.setattr(seen_ids, "MERGE_EVERY", 16)  # the ids go through several sorted runs
    monkeypatch.setattr(seen_ids, "FILTER_BITS", 64)  # and most lookups get past the hash bits
    assert list(captions.iter_captions(laff)) == whole == read_captions(laff)
    assert whole[150] == Caption("v50#0", "v50", "caption number 150 with a café")
    # numbered ids skip an explicit one seen long before (in a sorted run by then)
    explicit = "".join(f"w{j}#0,w{j},x\n" for j in range(20)) + "v3#1,v3,x\n"
    numbered = "".join(f",v{i % 5},c{i}\n" for i in range(40))
    csv_path = _write(tmp_path / "n.csv", "caption_id,video_id,caption\n" + explicit + numbered)
    v3 = [c.caption_id for c in read_captions(csv_path) if c.video_id == "v3"]
    assert v3 == ["v3#1"] + [f"v3#{k}" for k in range(2, 10)]
    # a duplicate far from its first: the first is found by reading the file again
    dup = _write(tmp_path / "dup.txt", "".join(lines) + "v10#1 again\n")
    with pytest.raises(CaptionFormatError, match=r"line 201: duplicate caption id 'v10#1' \(first at .*line 32\)"):
        read_captions(dup)
    # encoding errors anywhere come before format errors, NUL before bad UTF-8, as for the whole file
    bad = _write(tmp_path / "bad.txt", b"no id here\n" + b"v#0 ok\n" * 50 + b"v#1 caf\xe9\n" + b"v#2 \0\n")
    with pytest.raises(CaptionFormatError, match="line 53: NUL byte"):
        read_captions(bad)
    bad.write_bytes(b"no id here\n" + b"v#0 ok\n" * 50 + b"v#1 caf\xe9\n")
    with pytest.raises(CaptionFormatError, match=r"line 52: not valid UTF-8 \(byte 0xe9 at column 8\)"):
        read_captions(bad)


def test_missing_file():
    with pytest.raises(CaptionFormatError, match="not found"):
        read_captions("/nonexistent/captions.txt")


# ----------------------------------------------------------------------------- splits


def test_read_split(tmp_path):
    p = _write(tmp_path / "train.txt", "video1\n\n  video2  \nvideo3\n")
    assert read_split(p) == ["video1", "video2", "video3"]
    p = _write(tmp_path / "dup.txt", "a\nb\na\n")
    with pytest.raises(SplitError, match=r"line 3: duplicate video id 'a' \(first at line 1\)"):
        read_split(p)
    with pytest.raises(SplitError, match="empty split file"):
        read_split(_write(tmp_path / "empty.txt", "\n"))
    with pytest.raises(SplitError, match="line 1"):
        read_split(_write(tmp_path / "two.txt", "a b\n"))


def test_split_files_beside_captions(tmp_path):
    caps = _write(tmp_path / "ds" / "captions.txt", "v#0 x\n")
    for s in ("train", "val", "test"):
        _write(tmp_path / "ds" / f"{s}.txt", "v\n")
    found = find_split_files(caps)
    assert found == {s: str(tmp_path / "ds" / f"{s}.txt") for s in ("train", "val", "test")}


def test_split_files_msvd_names_and_splits_dir(tmp_path):
    caps = _write(tmp_path / "ds" / "caps.csv", "video_id,caption\nv,x\n")
    _write(tmp_path / "ds" / "train_list.txt", "v\n")
    _write(tmp_path / "ds" / "validation.txt", "v\n")
    found = find_split_files(caps)
    assert found == {"train": str(tmp_path / "ds" / "train_list.txt"), "val": str(tmp_path / "ds" / "validation.txt")}
    sdir = tmp_path / "elsewhere"
    _write(sdir / "train.txt", "v\n")
    _write(sdir / "test.txt", "v\n")
    assert find_split_files(caps, sdir) == {"train": str(sdir / "train.txt"), "test": str(sdir / "test.txt")}


def test_split_files_laff_collections(tmp_path):
    root = tmp_path / "VisualSearch"
    caps = _write(root / "msrvtt10ktrain" / "TextData" / "msrvtt10ktrain.caption.txt", "video0#enc#0 x\n")
    for coll in ("msrvtt10ktrain", "msrvtt10kval", "msrvtt10ktest"):
        _write(root / coll / "VideoSets" / f"{coll}.txt", "video0\n")
    found = find_split_files(caps)
    assert found == {s: str(root / f"msrvtt10k{s}" / "VideoSets" / f"msrvtt10k{s}.txt")
                     for s in ("train", "val", "test")}


def test_missing_train_split_lists_what_was_looked_for(tmp_path):
    caps = _write(tmp_path / "captions.txt", "v#0 x\n")
    _write(tmp_path / "test.txt", "v\n")
    with pytest.raises(SplitError) as info:
        find_split_files(caps)
    msg = str(info.value)
    assert "no train split file" in msg and str(tmp_path / "train.txt") in msg and "train_list.txt" in msg
    with pytest.raises(SplitError, match="splits folder not found"):
        find_split_files(caps, tmp_path / "nope")
