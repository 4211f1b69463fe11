"""Test videos written with PyAV, shared by the whole test suite.

Every frame written by :func:`write_video` (pattern ``"bits"`` or ``"textured"``) carries its
own index as a grid of large black/white cells (4 columns x 3 rows = 12 bits, so up to 4096
frames). Cells are at least 16x16 pixels, which survives lossy h264/mpeg4 coding, so a
test can tell exactly which frame a decoder returned with :func:`read_frame_index`.

Broken files for error-path tests: :func:`write_corrupt`, :func:`write_truncated`,
:func:`write_zero_byte`, :func:`write_text_as_mp4`, :func:`write_random_bytes`,
:func:`write_audio_only`, :func:`write_undecodable`; :func:`write_vfr_video` writes variable-frame-rate video;
:func:`write_video` also writes rotated (display matrix), 10-bit and odd-sized video.
"""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path
from typing import Callable, Sequence, Union

import av
import numpy as np

GRID_COLS = 4
GRID_ROWS = 3
MAX_FRAMES = 2 ** (GRID_COLS * GRID_ROWS)
LOW, HIGH = 32, 224  # cell intensities for bit 0 / bit 1: far from the threshold (128)

PathLike = Union[str, os.PathLike]
Pattern = Union[str, Callable[[int, int, int], np.ndarray]]

_CODECS = {"h264": "libx264", "libx264": "libx264", "hevc": "libx265", "mpeg4": "mpeg4", "gif": "gif"}


def _cell_bounds(size: int, cells: int, k: int) -> tuple[int, int]:
    return k * size // cells, (k + 1) * size // cells


def bits_frame(index: int, height: int, width: int) -> np.ndarray:
    """RGB frame [H, W, 3] whose grid cells spell ``index`` in binary (cell 0 = least significant bit)."""
    if not 0 <= index < MAX_FRAMES:
        raise ValueError(f"frame index {index} cannot be encoded in {GRID_COLS * GRID_ROWS} bits")
    frame = np.empty((height, width, 3), dtype=np.uint8)
    for bit in range(GRID_COLS * GRID_ROWS):
        r, c = divmod(bit, GRID_COLS)
        y0, y1 = _cell_bounds(height, GRID_ROWS, r)
        x0, x1 = _cell_bounds(width, GRID_COLS, c)
        frame[y0:y1, x0:x1] = HIGH if (index >> bit) & 1 else LOW
    return frame


@functools.lru_cache(maxsize=8)
def _texture_parts(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    noise = np.random.default_rng(12345).integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return xs, ys, noise


def textured_frame(index: int, height: int, width: int) -> np.ndarray:
    """The bits frame plus a moving wave and fixed noise: realistic decode cost, index still readable."""
    xs, ys, noise = _texture_parts(height, width)
    wave = 20 * np.outer(np.cos((ys - 2 * index) / 11.0), np.sin((xs + 3 * index) / 9.0))
    frame = bits_frame(index, height, width).astype(np.int16) + wave.astype(np.int16)[..., None] + noise
    return np.clip(frame, 0, 255).astype(np.uint8)


def rgb_bars_frame(index: int, height: int, width: int) -> np.ndarray:
    """Left third red, middle green, right third blue: tells RGB from BGR output."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    for ch in range(3):
        x0, x1 = _cell_bounds(width, 3, ch)
        frame[:, x0:x1, ch] = 255
    return frame


_PATTERNS: dict[str, Callable[[int, int, int], np.ndarray]] = {
    "bits": bits_frame,
    "textured": textured_frame,
    "rgb": rgb_bars_frame,
}


def read_frame_index(frame: np.ndarray) -> int:
    """The index encoded in a decoded bits/textured frame (thresholds the centre of each cell)."""
    frame = np.asarray(frame)
    height, width = frame.shape[:2]
    value = 0
    for bit in range(GRID_COLS * GRID_ROWS):
        r, c = divmod(bit, GRID_COLS)
        y0, y1 = _cell_bounds(height, GRID_ROWS, r)
        x0, x1 = _cell_bounds(width, GRID_COLS, c)
        dy, dx = (y1 - y0) // 4, (x1 - x0) // 4
        if frame[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean() > (LOW + HIGH) / 2:
            value |= 1 << bit
    return value


def read_frame_indices(frames: np.ndarray) -> list[int]:
    """:func:`read_frame_index` of each frame of a batch [N, H, W, 3]."""
    return [read_frame_index(f) for f in frames]


def _make_stream(container: av.container.OutputContainer, codec: str, rate, size, gop: int | None,
                 pix_fmt: str | None = None, open_gop: bool = False):
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; one of {sorted(_CODECS)}")
    stream = container.add_stream(_CODECS[codec], rate=rate)
    stream.width, stream.height = size
    stream.pix_fmt = pix_fmt or ("rgb8" if codec == "gif" else "yuv420p")
    if codec == "gif":
        return stream
    if gop is not None:
        stream.codec_context.gop_size = gop
    if _CODECS[codec] == "libx265":
        stream.options = {"x265-params": f"log-level=none:keyint={gop or 250}:open-gop={int(open_gop)}"}
    elif _CODECS[codec] == "libx264":
        # Quiet x264; keep B-frames (default) so decoders must reorder, like real files.
        opts = {"preset": "veryfast", "crf": "18"}
        if gop is not None:
            opts["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0:log=-1"
        else:
            opts["x264-params"] = "log=-1"
        if open_gop:
            opts["x264-params"] += ":open-gop=1:bframes=3"
        stream.options = opts
    else:
        stream.codec_context.bit_rate = 2_000_000
        stream.codec_context.qmax = 4  # near-lossless: keeps the frame-index cells crisp
    return stream


def _pattern_fn(pattern: Pattern) -> Callable[[int, int, int], np.ndarray]:
    if callable(pattern):
        return pattern
    if pattern not in _PATTERNS:
        raise ValueError(f"unknown pattern {pattern!r}; one of {sorted(_PATTERNS)} or a callable")
    return _PATTERNS[pattern]


def write_video(
    path: PathLike,
    num_frames: int,
    fps: float = 25,
    size: tuple[int, int] = (64, 48),
    codec: str = "h264",
    pattern: Pattern = "bits",
    gop: int | None = 12,
    faststart: bool = False,
    pix_fmt: str | None = None,
    rotation: int = 0,
    open_gop: bool = False,
) -> Path:
    """Write a constant-frame-rate video; frame i shows ``pattern(i, height, width)``.

    ``size`` is (width, height). ``gop`` sets the keyframe interval (so seeking is exercised);
    ``faststart`` moves the mp4 index to the front (then truncating the file keeps it openable).
    ``num_frames=0`` writes a container holding no frames (mp4 then drops the empty stream).
    ``codec="gif"`` needs a ``.gif`` path. ``pix_fmt``: e.g. ``yuv444p`` (odd sizes) or
    ``yuv420p10le`` (10-bit). ``rotation`` (degrees counter-clockwise, a multiple of 90) writes
    the frames turned the other way plus a display matrix, as phones store portrait video: a
    player that honours the matrix shows ``pattern`` upright at ``size``. ``open_gop``: B-frames
    before a keyframe may refer to the GOP before it (broadcast and x265's default).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn = _pattern_fn(pattern)
    width, height = size
    turns = (rotation // 90) % 4
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    stored_size = (height, width) if turns % 2 else (width, height)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = _make_stream(container, codec, Fraction(fps).limit_denominator(1001), stored_size, gop, pix_fmt,
                              open_gop)
        if turns:
            stream.set_display_rotation(rotation)
        container.start_encoding()  # so that num_frames=0 still writes a file
        for i in range(num_frames):
            image = np.ascontiguousarray(np.rot90(fn(i, height, width), -turns))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def write_vfr_video(
    path: PathLike,
    durations: Sequence[float],
    size: tuple[int, int] = (64, 48),
    codec: str = "h264",
    pattern: Pattern = "bits",
    time_base: Fraction = Fraction(1, 1000),
) -> tuple[Path, np.ndarray]:
    """Write a variable-frame-rate video: frame i stays on screen ``durations[i]`` seconds.

    Returns the path and the presentation time (s) of every frame (frame 0 at 0.0).
    Only codecs whose container keeps per-frame timestamps make sense (mp4/mkv with h264).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fn = _pattern_fn(pattern)
    width, height = size
    times = np.concatenate([[0.0], np.cumsum(np.asarray(durations, dtype=np.float64))[:-1]])
    ticks = np.round(times / float(time_base)).astype(np.int64)
    if np.any(np.diff(ticks) <= 0):
        raise ValueError("durations must be positive and larger than the time base")
    with av.open(str(path), "w") as container:
        stream = _make_stream(container, codec, None, size, gop=12)
        stream.codec_context.time_base = time_base
        stream.time_base = time_base
        if _CODECS[codec] == "libx264":
            stream.codec_context.framerate = Fraction(1, 1)  # only a hint; pts carry the timing
        for i, tick in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(fn(i, height, width), format="rgb24")
            frame.pts = int(tick)
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path, ticks * float(time_base)


def write_audio_only(path: PathLike, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An .mp4 holding one AAC audio stream and no video stream."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        t = np.arange(samples) / rate
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
        chunk = 1024
        for start in range(0, samples, chunk):
            frame = av.AudioFrame.from_ndarray(wave[:, start : start + chunk], format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_corrupt(path: PathLike, src: PathLike | None = None, seed: int = 0) -> Path:
    """A copy of ``src`` (default: a fresh 30-frame h264 mp4) whose bytes after the first 64
    are random garbage: the file signature survives, nothing else does."""
    path = Path(path)
    made = src is None
    if made:
        src = write_video(path.with_name(path.stem + "_src" + path.suffix), 30)
    data = bytearray(Path(src).read_bytes())
    if made:
        Path(src).unlink()
    rng = np.random.default_rng(seed)
    data[64:] = rng.integers(0, 256, size=len(data) - 64, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def write_undecodable(path: PathLike, num_frames: int = 30) -> Path:
    """An mp4 whose index (moov, written first) is intact but whose frame data is random:
    the container opens and lists frames, none of which decodes."""
    path = Path(path)
    src = write_video(path.with_name(path.stem + "_src.mp4"), num_frames, faststart=True)
    data = bytearray(Path(src).read_bytes())
    start = data.find(b"mdat") + 4 + 16  # keep the box header, garble the payload
    rng = np.random.default_rng(1)
    data[start:] = rng.integers(0, 256, size=len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    Path(src).unlink()
    return path


def write_truncated(src: PathLike, dst: PathLike, fraction: float) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (an interrupted download)."""
    if not 0 <= fraction <= 1:
        raise ValueError("fraction must be in [0, 1]")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def write_zero_byte(path: PathLike) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_text_as_mp4(path: PathLike) -> Path:
    path = Path(path)
    path.write_text("this is not a video, just text saved with a video extension\n" * 20)
    return path


def write_random_bytes(path: PathLike, size: int = 4096, seed: int = 0) -> Path:
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes())
    return path


def write_damaged_keyframes(path: PathLike, num_frames: int = 60, gop: int = 12, damaged: int = 1,
                            seed: int = 0) -> Path:
    """An h264 mp4 (keyframe every ``gop`` frames) whose first ``damaged`` keyframe packets are
    random bytes: the container and its index are intact, but the frames of those GOPs (the
    keyframes and everything predicted from them) do not decode; the later GOPs do."""
    path = Path(path)
    src = write_video(path.with_name(path.stem + "_src.mp4"), num_frames, gop=gop, faststart=True)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as container:
        keys = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size and p.is_keyframe]
    rng = np.random.default_rng(seed)
    for pos, size in keys[:damaged]:
        data[pos : pos + size] = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    src.unlink()
    return path
