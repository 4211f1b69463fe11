"""vidfuse synth: a procedural text-video dataset that decodes, is deterministic, and needs time."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from vidfuse.cli import main
from vidfuse.errors import VidfuseError
from vidfuse.synth import (
    COLOURS,
    MOTION_WORDS,
    SCENE_KINDS,
    SHAPES,
    _DIRECTION_VERBS,
    _conjugate,
    generate_dataset,
    open_dataset,
    render_frames,
    reverse_scene,
    sample_scene,
    scene_of,
)

N = 12
SEED = 7
LINE = re.compile(r"^(\S+)#(\d+) (.+)$")


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("synth") / "out", N, SEED, progress=False)


@pytest.fixture(scope="module")
def meta(ds):
    return {v["video_id"]: v for v in json.loads(ds.synth_json.read_text())["videos"]}


def read_captions_txt(path: Path) -> dict[str, dict[int, str]]:
    out: dict[str, dict[int, str]] = {}
    for line in path.read_text().splitlines():
        m = LINE.match(line)
        assert m, f"malformed caption line {line!r}"
        out.setdefault(m.group(1), {})[int(m.group(2))] = m.group(3)
    return out


def decoded(path: Path) -> np.ndarray:
    vr = decord.VideoReader(str(path))
    return vr.get_batch(list(range(len(vr)))).asnumpy()


def test_layout_and_ids(ds):
    assert ds.video_ids == [f"video{i}" for i in range(N)]
    for p in (ds.captions_txt, ds.msrvtt_json, ds.synth_json, ds.train_txt, ds.val_txt, ds.test_txt):
        assert p.is_file(), p
    assert sorted(p.name for p in ds.videos_dir.iterdir()) == sorted(f"{v}.mp4" for v in ds.video_ids)


def test_every_video_decodes_with_decord(ds, meta):
    for vid in ds.video_ids:
        path = ds.video_path(vid)
        with av.open(str(path)) as c:  # written as h264 in mp4
            assert c.streams.video[0].codec_context.name == "h264"
        vr = decord.VideoReader(str(path))
        assert len(vr) == meta[vid]["num_frames"] > 0
        assert round(vr.get_avg_fps()) == meta[vid]["fps"]
        frames = vr.get_batch([0, len(vr) // 2, len(vr) - 1]).asnumpy()
        assert frames.shape == (3, 96, 128, 3)
    fps = {v["fps"] for v in meta.values()}
    assert len(fps) > 1, "frame rates should vary across videos"


def test_frames_show_the_scene_colours(ds):
    """The decoded pixels carry the captioned colours (not a blank or wrongly coloured video)."""
    for vid in ds.video_ids[:4]:
        scene = scene_of(ds, vid)
        frames = decoded(ds.video_path(vid)).reshape(-1, 3).astype(int)
        for sh in scene.shapes:
            dist = np.abs(frames - np.array(COLOURS[sh.colour])).sum(axis=1)
            assert (dist < 60).sum() > 50, f"{vid}: no {sh.colour} pixels decoded"


def test_captions_cover_every_video_in_both_formats(ds):
    txt = read_captions_txt(ds.captions_txt)
    assert set(txt) == set(ds.video_ids)
    for vid, caps in txt.items():
        assert sorted(caps) == list(range(5)), vid
        assert list(caps.values()) == ds.captions[vid]
    data = json.loads(ds.msrvtt_json.read_text())
    assert [v["video_id"] for v in data["videos"]] == ds.video_ids
    sent_vids = Counter(s["video_id"] for s in data["sentences"])
    assert set(sent_vids) == set(ds.video_ids) and min(sent_vids.values()) >= 1
    assert len({s["sen_id"] for s in data["sentences"]}) == len(data["sentences"]) == 5 * N
    assert [s["caption"] for s in data["sentences"]] == [c for v in ds.video_ids for c in ds.captions[v]]
    # no caption points at a video that is missing on disk
    for vid in set(txt) | set(sent_vids):
        assert ds.video_path(vid).is_file()


def test_splits_partition_the_ids(ds):
    files = {s: ds.split_files[s].read_text().split() for s in ("train", "val", "test")}
    assert all(files.values()), files
    everything = [v for ids in files.values() for v in ids]
    assert len(everything) == len(set(everything)) == N
    assert set(everything) == set(ds.video_ids)
    assert files == ds.splits
    msr = {v["video_id"]: v["split"] for v in json.loads(ds.msrvtt_json.read_text())["videos"]}
    names = {"train": "train", "val": "validate", "test": "test"}
    assert all(msr[v] == names[s] for s, ids in files.items() for v in ids)


@pytest.mark.parametrize("n,sizes", [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (5, (3, 1, 1))])
def test_small_sets_split_gracefully(tmp_path, n, sizes):
    d = generate_dataset(tmp_path / "o", n, 0, width=64, height=48, duration=(0.5, 0.5), progress=False)
    got = tuple(len(d.split_files[s].read_text().split()) for s in ("train", "val", "test"))
    assert got == sizes
    assert sorted(v for s in d.splits.values() for v in s) == sorted(d.video_ids)


def test_captions_name_colour_shape_and_motion(ds):
    shape_words = {w for words in SHAPES.values() for w in words}
    for vid in ds.video_ids:
        scene = scene_of(ds, vid)
        for cap in ds.captions[vid]:
            words = set(cap.replace(",", " ").replace(";", " ").split())
            assert words & set(COLOURS), cap
            assert any(w in cap for w in shape_words), cap
            assert words & MOTION_WORDS, cap
            # every shape of the scene is named with its own colour and a word for its shape
            for sh in scene.shapes:
                assert any(f"{sh.colour} {w}" in cap for w in SHAPES[sh.kind]), (cap, sh)
            # every motion is described with a phrase of its own direction
            for e in scene.events():
                if e["type"] == "move":
                    forms = {f for p in _DIRECTION_VERBS[e["direction"]] for f in _conjugate(p)}
                    assert any(f in cap for f in forms), (cap, e["direction"])


def _signature(scene):
    looks = {s.label: (s.colour, s.kind) for s in scene.shapes}
    events = tuple((e["type"], looks[e["shape"]], e.get("direction")) for e in scene.events())
    return Counter(looks.values()), events


def test_appearance_alone_is_not_enough(ds):
    """Some videos share shapes and colours but differ in direction or event order."""
    sigs = [_signature(scene_of(ds, v)) for v in ds.video_ids]
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N)
             if sigs[i][0] == sigs[j][0] and sigs[i][1] != sigs[j][1]]
    assert pairs
    i, j = pairs[0]
    assert set(ds.captions[ds.video_ids[i]]).isdisjoint(ds.captions[ds.video_ids[j]])


@pytest.mark.parametrize("kind", SCENE_KINDS)
def test_reversed_scene_shows_the_same_frames_backwards(kind):
    scene = sample_scene(np.random.default_rng(3), 128, 96, kind)
    fwd = render_frames(scene, 128, 96, 41)
    back = render_frames(reverse_scene(scene), 128, 96, 41)[::-1]
    assert (fwd != back).any(axis=-1).mean() < 0.002  # rounding may move an edge pixel
    assert _signature(scene)[1] != _signature(reverse_scene(scene))[1]


def test_same_seed_same_dataset_other_seed_differs(tmp_path):
    kw = dict(width=64, height=48, duration=(1.0, 1.5), progress=False)
    a = generate_dataset(tmp_path / "a", 6, 11, **kw)
    b = generate_dataset(tmp_path / "b", 6, 11, **kw)
    c = generate_dataset(tmp_path / "c", 6, 12, **kw)
    for name in ("captions.txt", "MSRVTT_data.json", "train.txt", "val.txt", "test.txt", "synth.json"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    for vid in a.video_ids:
        assert np.array_equal(decoded(a.video_path(vid)), decoded(b.video_path(vid)))
        assert a.video_path(vid).read_bytes() == b.video_path(vid).read_bytes()
    assert a.captions != c.captions
    fa, fc = decoded(a.video_path("video0")), decoded(c.video_path("video0"))
    assert fa.shape != fc.shape or not np.array_equal(fa, fc)


def test_resume_keeps_finished_videos_and_refuses_other_params(tmp_path):
    kw = dict(width=64, height=48, duration=(1.0, 1.0), progress=False)
    d = generate_dataset(tmp_path / "o", 4, 5, **kw)
    keep, redo = d.video_path("video0"), d.video_path("video2")
    keep_mtime, redo_bytes = keep.stat().st_mtime_ns, redo.read_bytes()
    redo.unlink()
    stale = d.videos_dir / ".video3.mp4.part"
    stale.write_bytes(b"half a video")
    d2 = generate_dataset(tmp_path / "o", 4, 5, **kw)
    assert keep.stat().st_mtime_ns == keep_mtime
    assert redo.read_bytes() == redo_bytes
    assert not stale.exists()
    assert open_dataset(tmp_path / "o").captions == d2.captions == d.captions
    with pytest.raises(VidfuseError, match="seed"):
        generate_dataset(tmp_path / "o", 4, 6, **kw)


def test_bad_arguments(tmp_path):
    with pytest.raises(VidfuseError, match=">= 1"):
        generate_dataset(tmp_path / "o", 0)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(VidfuseError, match="not a directory"):
        generate_dataset(afile, 3)
    with pytest.raises(VidfuseError, match="width"):
        generate_dataset(tmp_path / "o", 3, width=99)
    foreign = tmp_path / "foreign" / "videos"
    foreign.mkdir(parents=True)
    (foreign / "x.mp4").write_bytes(b"")
    with pytest.raises(VidfuseError, match="synth.json"):
        generate_dataset(tmp_path / "foreign", 3)


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["synth", str(out), "--videos", "4", "--seed", "2", "--size", "64x48",
                 "--captions-per-video", "3", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("synth: 4 videos") and "12 captions" in line and str(out) in line
    assert len(read_captions_txt(out / "captions.txt")["video3"]) == 3
    assert decord.VideoReader(str(out / "videos" / "video3.mp4"))[0].shape == (48, 64, 3)
    (tmp_path / "f").write_text("")
    assert main(["synth", str(tmp_path / "f"), "--videos", "3"]) == 2
    assert main(["synth", str(tmp_path / "z"), "--videos", "0"]) == 2
    assert main(["synth", str(tmp_path / "z"), "--videos", "3", "--size", "big"]) == 2
    err = capsys.readouterr().err
    assert "vidfuse synth: error:" in err and "not a directory" in err and "WxH" in err
