"""Frame sampling: exact indices at the edges, VFR timing, config validation."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from pipeline.sampling import SamplingConfig, describe_sampling, sample_indices, validate_sampling
from vidfuse.errors import ConfigError


def uniform(n_req: int, n: int) -> np.ndarray:
    return sample_indices(SamplingConfig(kind="uniform", num_frames=n_req), n)


# ---------------------------------------------------------------- uniform
def test_uniform_segment_centres():
    out = uniform(8, 100)
    assert out.dtype == np.int64 and out.ndim == 1
    assert out.tolist() == [6, 18, 31, 43, 56, 68, 81, 93]  # floor((k + .5) * 100 / 8)


def test_uniform_exact_division_hits_segment_middles():
    assert uniform(4, 40).tolist() == [5, 15, 25, 35]


def test_uniform_all_frames_when_counts_match():
    assert uniform(10, 10).tolist() == list(range(10))


def test_uniform_one_frame_video_repeats_frame_zero():
    assert uniform(8, 1).tolist() == [0] * 8


def test_uniform_more_requested_than_available_repeats_frames_in_order():
    out = uniform(8, 3)
    assert out.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert len(out) == 8 and set(out.tolist()) == {0, 1, 2}


def test_uniform_single_frame_request_is_the_middle():
    assert uniform(1, 101).tolist() == [50]
    assert uniform(1, 100).tolist() == [50]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 250, 10_000])
@pytest.mark.parametrize("k", [1, 8, 12, 32])
def test_uniform_always_valid_sorted_and_full_length(n, k):
    out = uniform(k, n)
    assert len(out) == k
    assert out.min() >= 0 and out.max() < n
    assert np.all(np.diff(out) >= 0)
    if k <= n:
        assert len(set(out.tolist())) == k  # no repeats when the video is long enough


# ---------------------------------------------------------------- fps
def fps_sample(fps: float, times, max_frames=None) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64)
    return sample_indices(SamplingConfig(kind="fps", fps=fps, max_frames=max_frames), len(times), times)


def test_fps_constant_rate():
    times = np.arange(250) / 25.0  # 10 s at 25 fps
    assert fps_sample(1.0, times).tolist() == [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]
    assert fps_sample(2.0, times)[:4].tolist() == [0, 12, 25, 37]  # 0.5 s -> frame 12 (0.48 s) on screen


def test_fps_tolerates_float32_timestamps():
    times = (np.arange(250) / 25.0).astype(np.float32).astype(np.float64)  # decord's precision
    assert fps_sample(1.0, times).tolist() == [0, 25, 50, 75, 100, 125, 150, 175, 200, 225]


def test_fps_variable_frame_rate_uses_timestamps():
    # 10 frames at 0.1 s, then 3 frames each on screen for 1 s, then 10 frames at 0.1 s
    durations = [0.1] * 10 + [1.0] * 3 + [0.1] * 10
    times = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    # frame times: 0..0.9 (frames 0-9), 1.0 (10), 2.0 (11), 3.0 (12), 4.0..4.9 (13-22)
    out = fps_sample(1.0, times)
    assert out.tolist() == [0, 10, 11, 12, 13]
    # a naive index-based rule (fps / average rate) would land elsewhere
    out2 = fps_sample(2.0, times)
    assert out2.tolist() == [0, 5, 10, 10, 11, 11, 12, 12, 13, 18]


def test_fps_frame_on_screen_picked_repeatedly_when_fps_exceeds_rate():
    times = np.arange(5) / 5.0  # 5 fps
    assert fps_sample(10.0, times).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4]


def test_fps_short_video_gives_first_frame():
    assert fps_sample(1.0, [0.0, 0.04, 0.08]).tolist() == [0]
    assert fps_sample(1.0, [0.0]).tolist() == [0]


def test_fps_nonzero_start_time():
    times = 5.0 + np.arange(50) / 25.0
    assert fps_sample(1.0, times).tolist() == [0, 25]


def test_fps_max_frames_subsamples_uniformly():
    times = np.arange(250) / 25.0
    full = fps_sample(1.0, times)
    capped = fps_sample(1.0, times, max_frames=4)
    assert capped.tolist() == full[[1, 3, 6, 8]].tolist()  # segment centres of 10 -> 4
    assert fps_sample(1.0, times, max_frames=100).tolist() == full.tolist()


def test_fps_needs_frame_times():
    with pytest.raises(ValueError, match="frame_times"):
        sample_indices(SamplingConfig(kind="fps"), 10)
    with pytest.raises(ValueError, match="shape"):
        sample_indices(SamplingConfig(kind="fps"), 10, np.arange(9) / 25)


# ---------------------------------------------------------------- clips
def clips(n, clip_len, stride=1, k=1) -> np.ndarray:
    return sample_indices(SamplingConfig(kind="clips", clip_len=clip_len, stride=stride, clips=k), n)


def test_clips_single_window_centred():
    out = clips(100, 16)
    assert out.shape == (1, 16) and out.dtype == np.int64
    assert out[0].tolist() == list(range(42, 58))  # room 84 -> start 42


def test_clips_spread_first_to_last():
    out = clips(100, 16, stride=2, k=3)  # span 31, room 69
    assert out[:, 0].tolist() == [0, 35, 69]
    assert out[-1, -1] == 99
    assert np.all(np.diff(out, axis=1) == 2)


def test_clips_video_shorter_than_window_repeats_last_frame():
    out = clips(10, 16)
    assert out.tolist() == [list(range(10)) + [9] * 6]


def test_clips_span_with_stride_longer_than_video():
    out = clips(10, 8, stride=2, k=2)  # span 15 > 10
    assert out.tolist() == [[0, 2, 4, 6, 8, 9, 9, 9]] * 2


def test_clips_one_frame_video():
    assert clips(1, 4, stride=3, k=2).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]


def test_clips_window_exactly_fits():
    assert clips(16, 16, k=3).tolist() == [list(range(16))] * 3


@pytest.mark.parametrize("n", [1, 5, 16, 17, 300])
@pytest.mark.parametrize("clip_len,stride,k", [(16, 1, 1), (8, 4, 3), (32, 2, 10), (1, 1, 4)])
def test_clips_always_valid(n, clip_len, stride, k):
    out = clips(n, clip_len, stride, k)
    assert out.shape == (k, clip_len)
    assert out.min() >= 0 and out.max() < n
    assert np.all(np.diff(out, axis=1) >= 0)
    assert np.all(np.diff(out[:, 0]) >= 0)


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"kind": "uniform", "num_frames": 0}, "num_frames"),
        ({"kind": "uniform", "num_frames": -3}, "num_frames"),
        ({"kind": "fps", "fps": 0.0}, "fps"),
        ({"kind": "fps", "fps": -1.0}, "fps"),
        ({"kind": "fps", "fps": float("nan")}, "fps"),
        ({"kind": "fps", "max_frames": 0}, "max_frames"),
        ({"kind": "clips", "clip_len": 0}, "clip_len"),
        ({"kind": "clips", "stride": 0}, "stride"),
        ({"kind": "clips", "clips": 0}, "clips"),
        ({"kind": "random"}, "kind"),
    ],
)
def test_invalid_config_names_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"sampling\.{field}"):
        sample_indices(SamplingConfig(**kwargs), 100, np.arange(100) / 25)
    with pytest.raises(ConfigError, match=rf"sampling\.{field}"):
        describe_sampling(SamplingConfig(**kwargs))


def test_zero_frame_video_is_refused():
    with pytest.raises(ValueError):
        uniform(8, 0)


def test_works_as_omegaconf_structured_config():
    base = OmegaConf.structured(SamplingConfig)
    merged = OmegaConf.merge(base, OmegaConf.create({"kind": "clips", "clip_len": 4, "clips": 2}))
    assert sample_indices(merged, 10).tolist() == [[0, 1, 2, 3], [6, 7, 8, 9]]
    cfg = OmegaConf.to_object(merged)
    assert isinstance(cfg, SamplingConfig)
    with pytest.raises(Exception):
        OmegaConf.merge(base, OmegaConf.create({"num_frame": 4}))  # typo refused by the schema


def test_plain_dict_accepted_and_unknown_key_refused():
    assert sample_indices({"kind": "uniform", "num_frames": 2}, 4).tolist() == [1, 3]
    with pytest.raises(ConfigError, match="num_frame"):
        validate_sampling({"num_frame": 2})


def test_describe_sampling_is_plain_and_kind_specific():
    d = describe_sampling(SamplingConfig(kind="fps", fps=2, max_frames=16))
    assert d == {"kind": "fps", "fps": 2.0, "max_frames": 16, "rule": "frame_on_screen_at_k_over_fps"}
    d = describe_sampling(SamplingConfig(kind="clips", clip_len=16, stride=2, clips=3))
    assert d["kind"] == "clips" and (d["clip_len"], d["stride"], d["clips"]) == (16, 2, 3)
    assert describe_sampling(SamplingConfig()) == {"kind": "uniform", "num_frames": 8, "rule": "segment_centres"}
    import json

    json.dumps(d)  # manifest-ready
