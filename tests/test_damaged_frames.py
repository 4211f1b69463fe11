"""A video whose first packets are damaged: sampled from the frames that do decode, not dropped.

The file's first GOP (keyframe and the frames predicted from it) is random bytes; the rest
decodes when packets are fed one at a time. A sampled frame that does not decode is taken
from the nearest one that does, with a warning, and the row's frame indices say which frames
its features come from. Below ``MIN_DECODABLE`` of the frames decoding, the video stays a
dead letter naming how much decoded.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import video_factory as vf
from extract_helpers import IN_PROCESS, read_rows, tiny_config
from pipeline.decode import MIN_DECODABLE, VideoDecodeError, open_video
from pipeline.extract_job import run_extraction


@pytest.mark.parametrize("backend, fallback", [("pyav", None), ("decord", "pyav")])
def test_frames_of_a_damaged_first_gop_come_from_the_nearest_decodable_frame(tmp_path, caplog, backend, fallback):
    path = vf.write_damaged_keyframes(tmp_path / "lead.mp4", 60, gop=12, damaged=1)
    with caplog.at_level(logging.WARNING), open_video(str(path), backend=backend, fallback=fallback) as reader:
        frames = reader.get_frames(np.arange(0, 60, 6), nearest=True)
        assert vf.read_frame_indices(frames) == [12, 12, 12, 18, 24, 30, 36, 42, 48, 54]
        assert reader.replaced == {0: 12, 6: 12}
    assert any("12 of 60 frames do not decode" in r.getMessage() for r in caplog.records)
    with open_video(str(path), backend=backend, fallback=fallback) as reader, pytest.raises(VideoDecodeError):
        reader.get_frames([0])  # asked for exact frames, a damaged one stays an error


def test_a_video_decoding_less_than_the_threshold_stays_refused(tmp_path):
    path = vf.write_damaged_keyframes(tmp_path / "mostly.mp4", 60, gop=12, damaged=3)  # 24 of 60 decode
    assert 24 < MIN_DECODABLE * 60
    with open_video(str(path), backend="pyav") as reader, pytest.raises(VideoDecodeError) as err:
        reader.get_frames(np.arange(0, 60, 6), nearest=True)
    assert "only 24 of 60 frames decode" in str(err.value)


def test_extraction_keeps_a_video_with_damaged_leading_packets_and_records_its_frames(tmp_path):
    videos = tmp_path / "videos"
    vf.write_damaged_keyframes(videos / "lead.mp4", 60, gop=12, damaged=1)
    vf.write_video(videos / "clean.mp4", 60, gop=12)
    out = tmp_path / "out"
    summary = run_extraction(str(videos), str(out), tiny_config(), extractors=["clip"], beam_args=IN_PROCESS,
                             progress=False)
    assert (summary.done, summary.failed) == (2, 0)
    rows = read_rows(out / "clip", "parquet")
    used, sampled = rows.indices["lead"], rows.indices["clean"]
    assert used.min() >= 12 and len(used) == len(sampled)  # frames 0-11 do not decode
    assert np.array_equal(used, np.maximum(sampled, 12))  # each from the nearest decodable frame
