"""Decoding layer: right frames, both backends agree, every kind of bad file is a VideoDecodeError."""

from __future__ import annotations

import importlib.util
import os
import pickle

import av
import numpy as np
import pytest

import video_factory as vf
from pipeline.decode import VideoDecodeError, VideoInfo, available_backends, open_video, register_backend
from pipeline.sampling import SamplingConfig, sample_indices
from vidfuse.errors import ConfigError, VidfuseError

BACKENDS = ["decord", "pyav"]
N = 60  # frames in the regular test videos (gop 12 -> keyframes at 0, 12, 24, 36, 48)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    return {
        "h264": vf.write_video(d / "h264.mp4", N, codec="h264"),
        "mpeg4": vf.write_video(d / "mpeg4.avi", N, codec="mpeg4"),
        "mkv": vf.write_video(d / "h264.mkv", N, codec="h264"),  # no frame count in the container
        "long_gop": vf.write_video(d / "long_gop.mp4", 150, gop=None),  # x264 default: one keyframe
        "one": vf.write_video(d / "one.mp4", 1),
    }


def ids(frames) -> list[int]:
    return vf.read_frame_indices(frames)


# ------------------------------------------------------------------ correct frames
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mkv"])
def test_info(videos, backend, kind):
    with open_video(str(videos[kind]), backend=backend) as r:
        info = r.info
    assert isinstance(info, VideoInfo)
    assert info.path == str(videos[kind])
    assert info.num_frames == N
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (64, 48)
    assert info.duration == pytest.approx(N / 25.0, abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mkv", "long_gop"])
def test_get_frames_returns_requested_frames_in_given_order(videos, backend, kind):
    indices = [37, 0, 5, 5, 59, 12, 11, 36, 37, 1]
    with open_video(str(videos[kind]), backend=backend) as r:
        frames = r.get_frames(indices)
        assert frames.dtype == np.uint8 and frames.shape == (len(indices), 48, 64, 3)
        assert ids(frames) == indices
        # every frame, one by one and all at once
        every = r.get_frames(np.arange(r.info.num_frames))
        assert ids(every) == list(range(r.info.num_frames))


@pytest.mark.parametrize("backend", BACKENDS)
def test_get_frames_2d_indices_keep_shape(videos, backend):
    clip_idx = sample_indices(SamplingConfig(kind="clips", clip_len=4, stride=3, clips=3), N)
    with open_video(str(videos["h264"]), backend=backend) as r:
        frames = r.get_frames(clip_idx)
    assert frames.shape == (3, 4, 48, 64, 3)
    assert [ids(c) for c in frames] == clip_idx.tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_frame_video(videos, backend):
    with open_video(str(videos["one"]), backend=backend) as r:
        assert r.info.num_frames == 1
        assert r.frame_times().tolist() == [0.0]
        idx = sample_indices(SamplingConfig(num_frames=8), r.info.num_frames)
        assert ids(r.get_frames(idx)) == [0] * 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_rgb(tmp_path, backend):
    path = vf.write_video(tmp_path / "rgb.mp4", 3, pattern="rgb")
    with open_video(str(path), backend=backend) as r:
        frame = r.get_frames([1])[0].astype(int)
    thirds = [frame[:, 2:19], frame[:, 23:40], frame[:, 45:62]]
    for channel, region in enumerate(thirds):
        means = region.reshape(-1, 3).mean(axis=0)
        assert means[channel] > 200 and np.delete(means, channel).max() < 60, (channel, means)


@pytest.mark.parametrize("kind", ["h264", "mpeg4", "mkv"])
def test_backends_return_the_same_frames(videos, kind):
    indices = np.array([3, 17, 17, 30, 48, 59, 0])
    with open_video(str(videos[kind]), backend="decord") as a, open_video(str(videos[kind]), backend="pyav") as b:
        fa, fb = a.get_frames(indices), b.get_frames(indices)
        assert a.info == b.info or (a.info.num_frames, a.info.width, a.info.height) == (
            b.info.num_frames,
            b.info.width,
            b.info.height,
        )
        np.testing.assert_allclose(a.frame_times(), b.frame_times(), atol=1e-4)
    assert ids(fa) == ids(fb) == indices.tolist()
    # same decoder family, colour conversion may differ by rounding only
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() < 2.0


def test_decord_reads_only_the_distinct_sorted_indices(videos, monkeypatch):
    with open_video(str(videos["h264"]), backend="decord") as r:
        calls = []
        real = r._vr.get_batch

        def spy(idx):
            calls.append(list(np.asarray(idx)))
            return real(idx)

        monkeypatch.setattr(r._vr, "get_batch", spy, raising=False)
        out = r.get_frames([40, 2, 40, 7, 2])
    assert calls == [[2, 7, 40]]
    assert ids(out) == [40, 2, 40, 7, 2]


def test_pyav_decodes_from_the_keyframe_before_and_stops_at_the_last_needed(videos):
    with open_video(str(videos["h264"]), backend="pyav") as r:
        decoded = []
        real = r._frames_from

        def spy(key):
            for position, frame in real(key):
                decoded.append(position)
                yield position, frame

        r._frames_from = spy
        r.get_frames([50])  # keyframe 48: decode 48, 49, 50 (plus leading frames), not 0..50
        assert max(decoded) == 50 and min(decoded) >= 48 - 4 and len(decoded) <= 8
        decoded.clear()
        r.get_frames([13, 14, 40])  # GOP 12..23 then a seek to keyframe 36
        assert decoded[-1] == 40
        assert all(p < 24 or p >= 36 - 4 for p in decoded)
        assert len(decoded) <= 15


def test_pyav_counts_frames_without_container_metadata(videos):
    with av.open(str(videos["mkv"])) as c:
        assert c.streams.video[0].frames == 0  # mkv stores no frame count
    with open_video(str(videos["mkv"]), backend="pyav") as r:
        assert r.info.num_frames == N
        assert ids(r.get_frames([N - 1])) == [N - 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_index_list(videos, backend):
    with open_video(str(videos["h264"]), backend=backend) as r:
        assert r.get_frames([]).shape == (0, 48, 64, 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [[-1], [N], [0, N + 5]])
def test_out_of_range_indices(videos, backend, bad):
    path = str(videos["h264"])
    with open_video(path, backend=backend) as r:
        with pytest.raises(VideoDecodeError, match="out of range") as e:
            r.get_frames(bad)
    assert e.value.path == path


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_reader_refuses(videos, backend):
    r = open_video(str(videos["h264"]), backend=backend)
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.get_frames([0])


# ------------------------------------------------------------------ frame times / VFR
@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_times_constant_rate(videos, backend):
    with open_video(str(videos["mpeg4"]), backend=backend) as r:
        np.testing.assert_allclose(r.frame_times(), np.arange(N) / 25.0, atol=1e-4)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    d = tmp_path_factory.mktemp("vfr")
    durations = [0.04] * 10 + [0.5] * 5 + [0.1] * 10  # 25 frames, times up to 3.8 s
    return vf.write_vfr_video(d / "vfr.mp4", durations)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vfr_frame_times_and_fps_sampling(vfr, backend):
    path, times = vfr
    with open_video(str(path), backend=backend) as r:
        assert r.info.num_frames == 25
        np.testing.assert_allclose(r.frame_times(), times, atol=1e-4)
        assert r.info.duration == pytest.approx(3.8 + 0.1, abs=1e-3)  # + median frame interval
        idx = sample_indices(SamplingConfig(kind="fps", fps=1.0), r.info.num_frames, r.frame_times())
        # on screen at 0 s: frame 0; 1 s: frame 11 (0.9-1.4); 2 s: 13 (1.9-2.4); 3 s: 16 (3.0)
        assert idx.tolist() == [0, 11, 13, 16]
        assert ids(r.get_frames(idx)) == [0, 11, 13, 16]
        # index-based sampling at the average rate would have picked other frames
        assert idx.tolist() != (np.arange(4) * r.info.fps).astype(int).tolist()


# ------------------------------------------------------------------ bad files
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    src = vf.write_video(d / "src.mp4", N)
    return {
        "missing": d / "missing.mp4",
        "zero_byte": vf.write_zero_byte(d / "zero.mp4"),
        "text": vf.write_text_as_mp4(d / "text.mp4"),
        "random": vf.write_random_bytes(d / "random.mp4"),
        "corrupt": vf.write_corrupt(d / "corrupt.mp4", src),
        "truncated": vf.write_truncated(src, d / "truncated.mp4", 0.5),  # index (moov) lost
        "audio_only": vf.write_audio_only(d / "audio.mp4"),
        "no_frames": vf.write_video(d / "no_frames.mp4", 0),
        "undecodable": vf.write_undecodable(d / "undecodable.mp4"),
        "directory": d,
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "kind,reason",
    [
        ("missing", "file not found"),
        ("zero_byte", "empty"),
        ("text", "not a readable video container"),
        ("random", "not a readable video container"),
        ("corrupt", ""),
        ("truncated", "not a readable video container"),
        ("audio_only", "no video stream"),
        ("no_frames", "no video stream"),
        ("undecodable", "no decodable video frames"),
        ("directory", "directory"),
    ],
)
def test_bad_files_raise_video_decode_error(bad_files, backend, kind, reason, capfd):
    path = str(bad_files[kind])
    with pytest.raises(VideoDecodeError) as e:
        with open_video(path, backend=backend) as r:
            r.get_frames(np.arange(r.info.num_frames))
    err = e.value
    assert isinstance(err, VidfuseError)
    assert err.path == path and reason in err.reason
    assert str(err) == f"cannot decode {path}: {err.reason}"
    assert "\n" not in err.reason
    out = capfd.readouterr()
    assert out.err == "" and out.out == "", "decoder libraries printed to the console"


@pytest.mark.parametrize("backend", BACKENDS)
def test_remote_path_is_refused_with_a_hint(backend):
    with pytest.raises(VideoDecodeError, match="remote path"):
        open_video("gs://bucket/video.mp4", backend=backend)


@pytest.fixture(scope="module")
def faststart_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("fs")
    return vf.write_video(d / "fs.mp4", 100, faststart=True), vf.write_video(d / "plain.mp4", 100), d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["faststart", "plain"])
def test_truncated_files_never_escape_as_other_errors(faststart_src, backend, layout):
    fs, plain, d = faststart_src
    src = fs if layout == "faststart" else plain
    outcomes = set()
    for fraction in [0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99, 1.0]:
        path = vf.write_truncated(src, d / f"{layout}_{fraction}.mp4", fraction)
        try:
            with open_video(str(path), backend=backend) as r:
                n = r.info.num_frames
                frames = r.get_frames(np.arange(n))
                assert ids(frames) == list(range(n))  # whatever decodes is the right frame
                outcomes.add("ok")
        except VideoDecodeError as err:
            assert err.path == str(path)
            outcomes.add("error")
    assert "error" in outcomes and "ok" in outcomes  # fraction 0.05 fails, 1.0 succeeds


def test_truncated_frames_near_the_end_fail_in_get_frames(faststart_src):
    fs, _, d = faststart_src
    path = str(vf.write_truncated(fs, d / "cut.mp4", 0.9))
    with open_video(path, backend="pyav") as r:  # the index survives, the tail of the data does not
        assert ids(r.get_frames([0, 10])) == [0, 10]
        with pytest.raises(VideoDecodeError) as e:
            r.get_frames([r.info.num_frames - 1])
    assert e.value.path == path
    with pytest.raises(VideoDecodeError) as e:  # decord refuses it when indexing
        open_video(path, backend="decord")
    assert e.value.path == path


def test_video_decode_error_pickles():
    err = pickle.loads(pickle.dumps(VideoDecodeError("/a/b.mp4", "file not found")))
    assert (err.path, err.reason, str(err)) == ("/a/b.mp4", "file not found", "cannot decode /a/b.mp4: file not found")


# ------------------------------------------------------------------ backends registry
def test_available_backends():
    names = available_backends()
    assert {"decord", "pyav"} <= set(names)
    assert ("torchcodec" in names) == (importlib.util.find_spec("torchcodec") is not None)


def test_unknown_backend_lists_available(videos):
    with pytest.raises(ConfigError, match="unknown decode backend 'nope'.*decord.*pyav"):
        open_video(str(videos["h264"]), backend="nope")


def test_torchcodec_missing_is_a_clear_error(videos):
    if importlib.util.find_spec("torchcodec") is not None:
        assert "torchcodec" in available_backends()
        return
    with pytest.raises(ConfigError, match="'torchcodec' is not installed.*pip install torchcodec"):
        open_video(str(videos["h264"]), backend="torchcodec")


def test_unknown_backend_option(videos):
    with pytest.raises(ConfigError, match="does not take option.*threadz"):
        open_video(str(videos["h264"]), backend="pyav", threadz=2)
    with open_video(str(videos["h264"]), backend="decord", num_threads=2) as r:
        assert ids(r.get_frames([9])) == [9]
    with open_video(str(videos["h264"]), backend="pyav", threads=2) as r:
        assert ids(r.get_frames([9, 33])) == [9, 33]


def test_register_backend_adds_a_name(videos):
    @register_backend("test-pyav-alias")
    def alias(path: str):
        return open_video(path, backend="pyav")

    assert "test-pyav-alias" in available_backends()
    with open_video(str(videos["h264"]), backend="test-pyav-alias") as r:
        assert ids(r.get_frames([4])) == [4]
    with pytest.raises(ValueError, match="already registered"):
        register_backend("pyav")(alias)


def test_gif_decord_fails_with_hint_and_fallback_opens_with_pyav(tmp_path):
    path = str(vf.write_video(tmp_path / "anim.gif", 20, codec="gif"))
    with pytest.raises(VideoDecodeError, match="backend='pyav'"):
        open_video(path, backend="decord")
    with open_video(path, backend="decord", fallback="pyav") as r:
        assert r.info.num_frames == 20
        assert ids(r.get_frames([0, 19, 7])) == [0, 19, 7]


def test_fallback_does_not_retry_files_no_backend_can_read(bad_files):
    with pytest.raises(VideoDecodeError) as e:
        open_video(str(bad_files["text"]), backend="decord", fallback="pyav")
    assert "pyav:" not in e.value.reason


# ------------------------------------------------------------------ unusual but valid videos
@pytest.fixture(scope="module")
def unusual(tmp_path_factory):
    """Valid files that real collections hold and decoders trip on: (path, displayed (w, h))."""
    d = tmp_path_factory.mktemp("unusual")
    return {
        "ten_bit_h264": (vf.write_video(d / "ten_bit.mp4", 24, pix_fmt="yuv420p10le"), (64, 48)),
        "ten_bit_hevc": (vf.write_video(d / "ten_bit_hevc.mp4", 24, codec="hevc", pix_fmt="yuv420p10le"), (64, 48)),
        "odd_size": (vf.write_video(d / "odd.mp4", 24, size=(65, 49), pix_fmt="yuv444p"), (65, 49)),
        "narrow": (vf.write_video(d / "narrow.mp4", 24, size=(16, 96)), (16, 96)),  # decord fails in get_batch
        "huge": (vf.write_video(d / "huge.mp4", 3, size=(3840, 2160), gop=None), (3840, 2160)),
        "one_frame": (vf.write_video(d / "one.mp4", 1), (64, 48)),
    }


@pytest.mark.parametrize("kind", ["ten_bit_h264", "ten_bit_hevc", "odd_size", "narrow", "huge", "one_frame"])
def test_unusual_videos_decode_to_the_right_frames(unusual, kind):
    """With the job's decoder settings (decord, PyAV fallback) and with PyAV alone."""
    path, (width, height) = unusual[kind]
    for opts in ({"backend": "decord", "fallback": "pyav"}, {"backend": "pyav"}):
        with open_video(str(path), **opts) as r:
            assert (r.info.width, r.info.height) == (width, height)
            every = np.arange(r.info.num_frames)
            frames = r.get_frames(every)
        assert frames.shape == (every.size, height, width, 3)
        if width >= 16 * vf.GRID_COLS:  # cells large enough to survive 4:2:0 coding
            assert ids(frames) == every.tolist()
        else:  # a 4-pixel-wide cell: compare with PyAV's own frames instead
            with av.open(str(path)) as c:
                direct = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
            assert np.array_equal(frames, direct)


def test_a_read_decord_fails_on_is_retried_with_the_fallback(unusual):
    path = str(unusual["narrow"][0])
    with open_video(path, backend="decord") as r:  # opens, then cannot copy the frames out
        with pytest.raises(VideoDecodeError, match="DECORDError") as e:
            r.get_frames([0, 1])
    assert e.value.path == path
    with open_video(path, backend="decord", fallback="pyav") as r:
        first = r.get_frames([0, 5])
        assert type(r.backend).__name__ == "PyAVReader"  # used from then on
        assert np.array_equal(r.get_frames([5]), first[1:])


def test_fallback_counting_other_frames_fails_with_both_reasons(unusual, monkeypatch):
    import pipeline.decode as decode

    path = str(unusual["narrow"][0])
    real = decode._BACKENDS["pyav"]

    def short_pyav(p):
        reader = real(p)
        reader.info = VideoInfo(**{**reader.info.__dict__, "num_frames": reader.info.num_frames - 1})
        return reader

    monkeypatch.setitem(decode._BACKENDS, "pyav", short_pyav)
    with open_video(path, backend="decord", fallback="pyav") as r:
        with pytest.raises(VideoDecodeError) as e:
            r.get_frames([0])
    assert e.value.reason.startswith("decord: DECORDError")
    assert "; pyav: counts 23 frames, not 24" in e.value.reason


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_open_gop_video_gives_the_right_frame_read_one_at_a_time(tmp_path, codec):
    """decord misplaces open-GOP keyframes and returns other frames after a seek: refused, so
    the fallback reads it."""
    path = str(vf.write_video(tmp_path / f"open_{codec}.mp4", 30, codec=codec, gop=12, open_gop=True))
    with pytest.raises(VideoDecodeError, match="open-GOP.*backend='pyav'"):
        open_video(path, backend="decord")
    for opts in ({"backend": "decord", "fallback": "pyav"}, {"backend": "pyav"}):
        for i in range(30):
            with open_video(path, **opts) as r:
                assert ids(r.get_frames([i])) == [i]


@pytest.mark.parametrize("rotation", [90, 180, 270, -90])
def test_rotated_videos_come_out_upright(tmp_path, rotation):
    """Phones store portrait video sideways plus a display matrix: frames must come out as a
    player shows them, whichever backend the job asked for."""
    path = str(vf.write_video(tmp_path / "phone.mp4", 20, size=(64, 48), rotation=rotation))
    for opts in ({"backend": "decord", "fallback": "pyav"}, {"backend": "pyav"}):
        with open_video(path, **opts) as r:
            assert (r.info.width, r.info.height) == (64, 48)
            frames = r.get_frames([0, 7, 19, 3])
        assert frames.shape == (4, 48, 64, 3)
        assert ids(frames) == [0, 7, 19, 3]
    with pytest.raises(VideoDecodeError, match=r"display rotation of \d+ degrees.*backend='pyav'"):
        open_video(path, backend="decord")  # decord alone: refused, not read sideways


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: (d / "gone.mp4").symlink_to(d / "nowhere.mp4") or d / "gone.mp4", "broken symbolic link"),
        (lambda d: os.mkfifo(d / "pipe.mp4") or d / "pipe.mp4", "not a regular file"),
    ],
    ids=["broken_link", "fifo"],
)
def test_entries_that_are_not_video_files_are_named(tmp_path, make, reason):
    path = str(make(tmp_path))
    with pytest.raises(VideoDecodeError, match=reason) as e:
        open_video(path, backend="decord", fallback="pyav")  # never blocks on the pipe
    assert e.value.path == path
