"""Video decoding behind one small interface, so extractors never depend on a decoder library.

``open_video(path, backend=...)`` returns a :class:`VideoReader`: frame count, fps, size,
the presentation time of every frame, and ``get_frames(indices)`` that decodes only the
requested frames (never the whole video: DESIGN §2).

Backends: ``decord`` (default; fastest CPU random access), ``pyav`` (keyframe-seeking
decoder on PyAV; reads codecs decord's bundled FFmpeg 4.1 lacks, e.g. AV1 and GIF) and
``torchcodec`` (GPU decoding; registered when the package is installed).

Every failure to read a file (missing, empty, not a video, truncated, audio only, no
decodable frame, a frame that fails to decode) is a :class:`VideoDecodeError` naming the
path and the reason, so the Beam job can dead-letter the video instead of crashing.
Before decord sees a file, a cheap PyAV probe (about 1.5 ms) rejects what decord would
fail on noisily (its own logger prints to stderr and cannot be silenced).
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import logging
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "VideoReader",
    "register_backend",
    "available_backends",
    "open_video",
]


class VideoDecodeError(VidfuseError):
    """A video that cannot be decoded; the Beam job records it as a dead letter."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot decode {self.path}: {reason}")

    def __reduce__(self):  # picklable across Beam worker processes
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """What a reader knows about a video once opened.

    ``duration`` is seconds from the start of the first frame to the end of the last one;
    ``fps`` is the container's average frame rate (for VFR video use ``frame_times``).
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float


class VideoReader(ABC):
    """An open video. Use as a context manager, or call :meth:`close`."""

    info: VideoInfo

    def __init__(self, path: str):
        self.path = str(path)
        self._closed = False
        self._nearest = False  # read around damaged frames (see get_frames)
        self._replaced: dict[int, int] = {}

    @property
    def replaced(self) -> dict[int, int]:
        """Frames the last read could not decode -> the nearest decodable frame read instead."""
        return self._replaced

    def _set_nearest(self, nearest: bool) -> None:
        self._nearest = nearest
        self._replaced = {}

    # -- public API -------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int] | np.ndarray, nearest: bool = False) -> np.ndarray:
        """RGB uint8 frames for ``indices``, in the order given (duplicates allowed).

        A 1-D list gives [N, H, W, 3]; any integer array gives ``indices.shape + (H, W, 3)``
        (e.g. clip indices [clips, clip_len] -> [clips, clip_len, H, W, 3]). Each distinct
        frame is decoded once, in increasing order, then the output is re-ordered.

        ``nearest``: a frame that does not decode (damaged packets) is taken from the nearest
        one that does, where the backend can read around damage (PyAV); :attr:`replaced` then
        maps each such index to the frame read. Otherwise a frame that does not decode is an error.
        """
        self._check_open()
        self._set_nearest(nearest)
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.empty(idx.shape + (self.info.height, self.info.width, 3), dtype=np.uint8)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"frame indices must be integers, got dtype {idx.dtype}")
        flat = idx.reshape(-1).astype(np.int64, copy=False)
        bad = flat[(flat < 0) | (flat >= self.info.num_frames)]
        if bad.size:
            raise VideoDecodeError(
                self.path,
                f"frame indices out of range [0, {self.info.num_frames}): {sorted(set(bad.tolist()))[:5]}",
            )
        unique, inverse = np.unique(flat, return_inverse=True)
        try:
            frames = self._decode_sorted(unique)
        except VideoDecodeError:
            raise
        except Exception as exc:  # decoder libraries raise many types; all mean "bad file"
            raise VideoDecodeError(self.path, _clean_reason(exc)) from exc
        if frames.shape[0] != unique.size:
            raise VideoDecodeError(self.path, f"decoder returned {frames.shape[0]} frames for {unique.size} requested")
        if unique.size != flat.size or np.any(np.diff(flat) < 0):
            frames = frames[inverse]
        return frames.reshape(idx.shape + frames.shape[1:])

    @abstractmethod
    def frame_times(self) -> np.ndarray:
        """Presentation time (s) of every frame, float64 [num_frames], frame 0 at 0.0, non-decreasing."""

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info})"

    # -- for backends -----------------------------------------------------------------
    @abstractmethod
    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        """Frames [U, H, W, 3] for strictly increasing, in-range ``indices``."""

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"video reader for {self.path} is closed")


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_BACKENDS: dict[str, Callable[..., VideoReader]] = {}
# Backends we know of that need an optional package: name -> (module, install hint).
_OPTIONAL: dict[str, tuple[str, str]] = {
    "torchcodec": ("torchcodec", "pip install torchcodec (needs FFmpeg libraries and a matching torch)"),
}


def register_backend(name: str) -> Callable[[Callable[..., VideoReader]], Callable[..., VideoReader]]:
    """Decorator: make ``factory(path, **options) -> VideoReader`` available as ``backend=name``."""

    def decorate(factory: Callable[..., VideoReader]) -> Callable[..., VideoReader]:
        existing = _BACKENDS.get(name)
        if existing is not None and existing is not factory and getattr(existing, "__qualname__", None) != getattr(
            factory, "__qualname__", None
        ):
            raise ValueError(f"decode backend {name!r} is already registered ({existing!r})")
        _BACKENDS[name] = factory
        return factory

    return decorate


def available_backends() -> list[str]:
    """Names accepted by :func:`open_video` in this environment."""
    return sorted(_BACKENDS)


def open_video(path: str, backend: str = "decord", fallback: str | None = None, **kwargs: Any) -> VideoReader:
    """Open a local video file with the named backend.

    ``path`` must be a local file. Hook point for remote inputs (``gs://``, ``s3://``,
    ``http(s)://``): the caller copies them to a local temporary file first; the Beam
    layer does so with ``pipeline.video_files.local_copy`` (Beam FileSystems), then calls
    this. A remote URI given here directly is refused with a VideoDecodeError saying so.

    ``backend`` may be ``auto`` (:mod:`pipeline.decode_auto`). ``kwargs`` go to the backend
    (``decord``: ``num_threads``; ``pyav``: ``threads``).
    ``fallback``: another backend to try when ``backend`` cannot open the file (e.g.
    ``"pyav"`` for GIF or AV1 files that decord's bundled FFmpeg cannot read).

    Raises :class:`VideoDecodeError` for any unreadable file; :class:`ConfigError` for an
    unknown or uninstalled backend or an option the backend does not take.
    """
    from pipeline.decode_auto import resolve_backend

    backend = resolve_backend(backend)  # ``auto``: the decoder this process can load
    factory = _resolve_backend(backend)
    _check_options(backend, factory, kwargs)
    second = _resolve_backend(fallback) if fallback and fallback != backend else None
    try:
        reader = factory(str(path), **kwargs)
    except VideoDecodeError as primary:
        if second is None or getattr(primary, "file_level", False):
            raise  # no fallback, or the file itself is unreadable (no backend can help)
        log.info("%s: backend %s failed (%s); trying %s", path, backend, primary.reason, fallback)
        try:
            return second(str(path))
        except VideoDecodeError as secondary:
            raise VideoDecodeError(
                str(path), f"{backend}: {primary.reason}; {fallback}: {secondary.reason}"
            ) from secondary
    if second is None:
        return reader
    return _FallbackOnRead(reader, lambda: second(str(path)), (backend, fallback))


def _resolve_backend(name: str) -> Callable[..., VideoReader]:
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in _OPTIONAL:
        module, hint = _OPTIONAL[name]
        raise ConfigError(
            f"decode backend {name!r} is not installed (module {module!r} not importable: {hint}); "
            f"available backends: {', '.join(available_backends())}"
        )
    raise ConfigError(f"unknown decode backend {name!r}; available backends: {', '.join(available_backends())}")


def _check_options(name: str, factory: Callable[..., VideoReader], kwargs: dict) -> None:
    try:
        inspect.signature(factory).bind("path", **kwargs)
    except TypeError:
        params = [p for p in inspect.signature(factory).parameters if p != "path"]
        unknown = sorted(set(kwargs) - set(params))
        raise ConfigError(f"decode backend {name!r} does not take option(s) {unknown}; it takes {params}") from None


def _file_error(path: str, reason: str) -> VideoDecodeError:
    """An error found by the shared checks (before any backend): no other backend can help."""
    err = VideoDecodeError(path, reason)
    err.file_level = True
    return err


class _FallbackOnRead(VideoReader):
    """Reads through the primary backend's reader until a read fails, then reopens the file
    with the fallback backend and reads from there on.

    Why: decord opens some files it then cannot decode (frames a few dozen pixels wide fail
    in ``get_batch``), so a fallback that only covers opening would still lose those videos.
    The fallback must count the same frames, or the indices already sampled would not mean
    the same frames; otherwise the video fails with both backends' reasons.
    """

    def __init__(self, primary: VideoReader, open_fallback: Callable[[], VideoReader], names: tuple[str, str]):
        super().__init__(primary.path)
        self._reader = primary
        self._open_fallback: Callable[[], VideoReader] | None = open_fallback
        self._names = names
        self.info = primary.info

    @property
    def backend(self) -> VideoReader:
        """The reader in use (the primary one until a read failed)."""
        return self._reader

    @property
    def replaced(self) -> dict[int, int]:
        return self._reader.replaced

    def _set_nearest(self, nearest: bool) -> None:
        super()._set_nearest(nearest)
        self._reader._set_nearest(nearest)

    def frame_times(self) -> np.ndarray:
        return self._reader.frame_times()

    def close(self) -> None:
        if not self._closed:
            self._reader.close()
        super().close()

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._reader._decode_sorted(indices)
        except Exception as exc:
            if self._open_fallback is None:
                raise
            first_reason = exc.reason if isinstance(exc, VideoDecodeError) else _clean_reason(exc)
        primary, fallback = self._names
        open_fallback, self._open_fallback = self._open_fallback, None
        log.info("%s: backend %s failed to read frames (%s); trying %s", self.path, primary, first_reason, fallback)
        try:
            second = open_fallback()
            if second.info.num_frames != self.info.num_frames:
                second.close()
                raise VideoDecodeError(self.path, f"counts {second.info.num_frames} frames, not {self.info.num_frames}")
            self._reader.close()
            self._reader, self.info = second, second.info
            second._set_nearest(self._nearest)
            return second._decode_sorted(indices)
        except Exception as exc:
            second_reason = exc.reason if isinstance(exc, VideoDecodeError) else _clean_reason(exc)
            raise VideoDecodeError(self.path, f"{primary}: {first_reason}; {fallback}: {second_reason}") from exc


# --------------------------------------------------------------------------------------
# Shared PyAV probing (used by every backend before its own open)
# --------------------------------------------------------------------------------------

_REMOTE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def _check_local_file(path: str) -> None:
    if _REMOTE.match(path) and not path.startswith("file://"):
        raise _file_error(path, "remote path: copy it to a local file first (the Beam layer does this)")
    if not os.path.exists(path):
        if os.path.islink(path):
            raise _file_error(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)")
        raise _file_error(path, "file not found")
    if os.path.isdir(path):
        raise _file_error(path, "is a directory, not a video file")
    if not os.path.isfile(path):
        raise _file_error(path, "not a regular file (a pipe, socket or device), so not a video file")
    if not os.access(path, os.R_OK):
        raise _file_error(path, "permission denied: this user cannot read the file")
    if os.path.getsize(path) == 0:
        raise _file_error(path, "file is empty (0 bytes)")


def _clean_reason(exc: BaseException) -> str:
    """One readable line from a decoder exception.

    Drops decord's ``[hh:mm:ss] file.cc:N:`` prefix and PyAV's ``[Errno N]`` and file name
    (the path is already in :class:`VideoDecodeError`'s message).
    """
    strerror = getattr(exc, "strerror", None)
    if strerror:  # PyAV FFmpegError / OSError
        text = strerror
        log_line = getattr(exc, "log", None)
        if log_line and len(log_line) >= 3 and log_line[2]:
            text = f"{text} ({str(log_line[2]).strip()})"
    else:
        text = str(exc).strip() or type(exc).__name__
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Stack trace")]
    line = lines[0] if lines else text
    line = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", line)
    return f"{type(exc).__name__}: {line}"


def _open_av(path: str):
    """Open ``path`` with PyAV and check it has a decodable video stream.

    Returns (container, stream); the caller owns the container. Raises VideoDecodeError.
    """
    import av

    _check_local_file(path)
    try:
        container = av.open(path, metadata_errors="ignore")
    except Exception as exc:
        raise _file_error(path, f"not a readable video container ({_clean_reason(exc)})") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise _file_error(path, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx.format is None or not ctx.width or not ctx.height:
            # FFmpeg could not decode any frame while probing: confirm by decoding one.
            if not _decodes_one_frame(container, stream):
                raise _file_error(path, f"no decodable video frames (codec {_codec_name(stream)})")
            container.close()
            container = av.open(path, metadata_errors="ignore")
            stream = container.streams.video[0]
        return container, stream
    except BaseException:
        container.close()
        raise


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns (0-3) that show ``frame`` upright.

    Phones store portrait video as landscape frames plus a display matrix; players turn the
    frames, and so must we, or a model sees the video sideways. PyAV exposes the matrix only
    on decoded frames (``VideoFrame.rotation``, degrees counter-clockwise).
    """
    return int(round((getattr(frame, "rotation", 0) or 0) / 90)) % 4


def _first_frame_turns(container, stream, index: "_PacketIndex") -> int:
    """:func:`_quarter_turns` of the first frame (0 when it does not decode: reading the
    frames reports that problem with its own reason)."""
    try:
        container.seek(int(index.pts[0]), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            return _quarter_turns(frame)
    except Exception:
        pass
    return 0


def _codec_name(stream) -> str:
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _decodes_one_frame(container, stream) -> bool:
    try:
        for _ in container.decode(stream):
            return True
    except Exception:
        return False
    return False


@dataclass(frozen=True)
class _PacketIndex:
    """Per-frame presentation timestamps (stream ticks, sorted) and keyframe positions."""

    pts: np.ndarray  # int64 [N], presentation order
    keyframes: np.ndarray  # int64, sorted frame indices that are keyframes
    time_base: float


def _index_packets(path: str, container, stream) -> _PacketIndex:
    """Demux (no decoding) every packet of ``stream``: exact frame count even when the
    container's count metadata is missing (mkv/webm) or wrong, plus timestamps and keyframes."""
    pts_list: list[int] = []
    key_pts: list[int] = []
    missing_pts = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue  # flush packet, or one an edit list hides (the decoder drops its frame)
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                missing_pts += 1
                ts = pts_list[-1] + 1 if pts_list else 0
            pts_list.append(ts)
            if packet.is_keyframe:
                key_pts.append(ts)
    except Exception as exc:
        raise _file_error(path, f"cannot read packets ({_clean_reason(exc)})") from None
    if not pts_list:
        raise _file_error(path, "video stream has no frames")
    if missing_pts:
        log.warning("%s: %d packets without timestamps; frame times are approximate", path, missing_pts)
    order = np.argsort(np.asarray(pts_list, dtype=np.int64), kind="stable")
    pts = np.asarray(pts_list, dtype=np.int64)[order]
    keyframes = np.searchsorted(pts, np.asarray(sorted(set(key_pts)), dtype=np.int64))
    if keyframes.size == 0 or keyframes[0] != 0:
        keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
    return _PacketIndex(pts=pts, keyframes=np.unique(keyframes), time_base=float(stream.time_base))


def _times_from_pts(pts: np.ndarray, time_base: float) -> np.ndarray:
    return (pts - pts[0]).astype(np.float64) * time_base


def _duration(times: np.ndarray, fps: float) -> float:
    """Start of the first frame to the end of the last: the last frame is taken to last the
    median frame interval (containers rarely store it reliably), or 1/fps for a single frame."""
    gaps = np.diff(times)
    last = float(np.median(gaps)) if gaps.size else (1.0 / fps if fps > 0 else 0.0)
    return float(times[-1] + last)


# --------------------------------------------------------------------------------------
# decord backend
# --------------------------------------------------------------------------------------

_DECORD_QUIET = False


def _quiet_decord() -> None:
    """Silence the FFmpeg bundled in decord once per process (errors still surface as exceptions)."""
    global _DECORD_QUIET
    if not _DECORD_QUIET:
        import decord

        decord.logging.set_level(decord.logging.QUIET)
        _DECORD_QUIET = True


@register_backend("decord")
class DecordReader(VideoReader):
    """decord ``VideoReader`` on CPU; ``get_batch`` on the distinct sorted indices only.

    ``num_threads``: decoder threads per video (0 = FFmpeg's choice, all cores). 1 suits
    the Beam job, which already runs one worker process per core.
    A PyAV probe runs first (a few ms: it demuxes the packets and decodes the first frame).
    It keeps decord away from files it fails on noisily, gives clearer reasons, and refuses
    the files decord reads wrongly, which the PyAV fallback then reads: rotated video (decord
    turns some and crashes on others) and open-GOP streams, where decord misplaces the
    keyframes and returns the wrong frames after a seek.
    """

    def __init__(self, path: str, num_threads: int = 1):
        super().__init__(path)
        import decord

        _quiet_decord()
        container, stream = _open_av(self.path)
        try:
            codec = _codec_name(stream)
            width, height = int(stream.codec_context.width), int(stream.codec_context.height)
            index = _index_packets(self.path, container, stream)
            turns = _first_frame_turns(container, stream, index)
        finally:
            container.close()
        if turns:
            raise VideoDecodeError(
                self.path, f"display rotation of {90 * turns} degrees, which decord does not apply reliably; "
                "use backend='pyav'"
            )
        try:
            self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=int(num_threads))
            num_frames = len(self._vr)
            stamps = np.asarray(self._vr.get_frame_timestamp(np.arange(num_frames)), dtype=np.float64)
            fps = float(self._vr.get_avg_fps())
            keyframes = np.asarray(self._vr.get_key_indices(), dtype=np.int64)
        except Exception as exc:
            raise VideoDecodeError(self.path, self._open_reason(exc, codec)) from None
        if num_frames == index.pts.size and not np.array_equal(keyframes, index.keyframes):
            self._vr = None
            raise VideoDecodeError(
                self.path, f"decord places the keyframes at frames {keyframes[:4].tolist()}, not "
                f"{index.keyframes[:4].tolist()} (as in open-GOP streams), so it would return wrong frames; use backend='pyav'"
            )
        self._times = stamps[:, 0] - stamps[0, 0]
        duration = _duration(self._times, fps)
        if not np.isfinite(fps) or fps <= 0:
            fps = num_frames / duration if duration > 0 else 0.0
        self.info = VideoInfo(self.path, num_frames, fps, width, height, duration)

    @staticmethod
    def _open_reason(exc: Exception, codec: str | None) -> str:
        text = str(exc)
        if "cannot find video stream" in text and codec:
            return f"decord cannot decode codec {codec!r} (its bundled FFmpeg lacks it); use backend='pyav'"
        if "broken metadata" in text:
            return f"decord cannot count the frames of this {codec or 'video'} file; use backend='pyav'"
        if isinstance(exc, AssertionError) or "Invalid frame count: 0" in text:
            return "video stream has no frames"
        return _clean_reason(exc)

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        batch = self._vr.get_batch(indices)
        if hasattr(batch, "asnumpy"):
            return batch.asnumpy()
        if hasattr(batch, "numpy"):  # decord bridge set to torch/tf by someone else
            return batch.numpy()
        return np.asarray(batch)

    def frame_times(self) -> np.ndarray:
        return self._times.copy()

    def close(self) -> None:
        self._vr = None
        super().close()


# --------------------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------------------


# A video whose packets are partly damaged is read around them (each sampled frame that does
# not decode is taken from the nearest one that does) when at least this share of its frames
# decodes; below it, the video is a dead letter: its features would describe too little of it.
MIN_DECODABLE = 0.5


@register_backend("pyav")
class PyAVReader(VideoReader):
    """PyAV decoder that seeks to the keyframe before each needed frame and decodes forward.

    On open it demuxes (without decoding) every packet, which gives the exact frame count,
    per-frame timestamps and keyframe positions. ``get_frames`` then decodes forward from
    the keyframe before the first needed frame, seeking again only when a later keyframe
    lies between the current position and the next needed frame, and stops at the last
    needed frame. ``threads``: decoder threads (0 = FFmpeg's choice).
    """

    def __init__(self, path: str, threads: int = 1):
        super().__init__(path)
        self._container, self._stream = _open_av(self.path)
        try:
            self._index = _index_packets(self.path, self._container, self._stream)
        except BaseException:
            self._container.close()
            raise
        ctx = self._stream.codec_context
        if threads != 1:
            ctx.thread_type = "AUTO"
            ctx.thread_count = int(threads)
        self._times = _times_from_pts(self._index.pts, self._index.time_base)
        num_frames = int(self._index.pts.size)
        rate = self._stream.average_rate
        duration = _duration(self._times, float(rate) if rate else 0.0)
        fps = float(rate) if rate else (num_frames / duration if duration > 0 else 0.0)
        self._pts_to_index = {int(p): i for i, p in enumerate(self._index.pts.tolist())}
        # keyframe at or before each frame
        self._key_of = self._index.keyframes[np.searchsorted(self._index.keyframes, np.arange(num_frames), side="right") - 1]
        self._turns = _first_frame_turns(self._container, self._stream, self._index)
        width, height = int(ctx.width), int(ctx.height)
        if self._turns % 2:
            width, height = height, width
        self.info = VideoInfo(self.path, num_frames, fps, width, height, duration)

    def frame_times(self) -> np.ndarray:
        return self._times.copy()

    def close(self) -> None:
        if not self._closed:
            self._container.close()
        super().close()

    def _frame_index(self, frame, previous: int) -> int:
        if frame.pts is not None:
            i = self._pts_to_index.get(int(frame.pts))
            if i is not None:
                return i
            # a timestamp not in the index (decoder-synthesised): nearest frame
            j = int(np.searchsorted(self._index.pts, frame.pts))
            cands = [c for c in (j - 1, j) if 0 <= c < self._index.pts.size]
            return min(cands, key=lambda c: abs(int(self._index.pts[c]) - int(frame.pts)))
        return previous + 1

    def _frames_from(self, key: int) -> Iterator[tuple[int, Any]]:
        """Seek to keyframe index ``key`` and yield (frame index, frame) in presentation order."""
        self._container.seek(int(self._index.pts[key]), stream=self._stream, backward=True, any_frame=False)
        position = key - 1
        for frame in self._container.decode(self._stream):
            position = self._frame_index(frame, position)
            yield position, frame

    def _start_at(self, target: int) -> Iterator[tuple[int, Any]]:
        """Frames from the keyframe before ``target``; walks back one keyframe at a time if the
        decoder starts after ``target`` (open-GOP leading frames, an imprecise container index)."""
        keys = self._index.keyframes
        j = int(np.searchsorted(keys, self._key_of[target]))
        while True:
            frames = self._frames_from(int(keys[j]))
            first = next(frames, None)
            if first is not None and (first[0] <= target or j == 0):
                return itertools.chain([first], frames)
            if j == 0:
                raise VideoDecodeError(self.path, "no frame could be decoded")
            j -= 1

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        try:
            return self._decode_exact(indices)
        except Exception as exc:  # damaged packets: read around them, when asked to
            if not self._nearest:
                raise
            return self._decode_nearest(indices, exc.reason if isinstance(exc, VideoDecodeError) else _clean_reason(exc))

    def _packetwise(self, keep: set[int] | None) -> dict[int, Any]:
        """Decode the whole stream one packet at a time, skipping packets the decoder refuses:
        index -> frame (image when in ``keep``, else None; ``keep`` None: record indices only)."""
        self._container.seek(int(self._index.pts[0]), stream=self._stream, backward=True, any_frame=False)
        found: dict[int, Any] = {}
        position = -1
        for packet in self._container.demux(self._stream):
            try:
                decoded = packet.decode()
            except Exception:  # a damaged packet (and what depends on it) is lost, the rest is not
                continue
            for frame in decoded:
                position = self._frame_index(frame, position)
                if 0 <= position < self.info.num_frames:
                    found[position] = self._image(frame) if keep is not None and position in keep else None
        return found

    def _decode_nearest(self, indices: np.ndarray, reason: str) -> np.ndarray:
        """The frames at ``indices``, each taken from the nearest frame that decodes; refused when
        fewer than :data:`MIN_DECODABLE` of the video's frames decode at all, or when a wanted
        frame lies after the last one that decodes (a truncated file is incomplete, not damaged:
        it may still be being copied)."""
        decodable = np.asarray(sorted(self._packetwise(None)), dtype=np.int64)
        total = self.info.num_frames
        if decodable.size < MIN_DECODABLE * total:
            raise VideoDecodeError(self.path, f"{reason}; only {decodable.size} of {total} frames decode "
                                              f"(at least {MIN_DECODABLE:.0%} must)")
        if indices.max() > decodable[-1]:  # no frame decodes after some point: a cut file, not damage
            raise VideoDecodeError(self.path, f"{reason}; no frame after {int(decodable[-1])} decodes (truncated?)")
        right = np.clip(np.searchsorted(decodable, indices), 0, decodable.size - 1)
        left = np.clip(right - 1, 0, decodable.size - 1)
        nearest = np.where(np.abs(decodable[left] - indices) <= np.abs(decodable[right] - indices),
                           decodable[left], decodable[right])
        images = self._packetwise(set(nearest.tolist()))
        self._replaced = {int(t): int(n) for t, n in zip(indices, nearest) if t != n}
        log.warning("%s: %d of %d frames do not decode (%s); %d sampled frame(s) taken from the nearest decodable "
                    "frame", self.path, total - decodable.size, total, reason, len(self._replaced))
        return np.stack([images[int(n)] for n in nearest])

    def _image(self, frame) -> np.ndarray:
        image = frame.to_ndarray(format="rgb24")
        return np.rot90(image, self._turns) if self._turns else image

    def _decode_exact(self, indices: np.ndarray) -> np.ndarray:
        out = np.empty((indices.size, self.info.height, self.info.width, 3), dtype=np.uint8)
        frames: Iterator[tuple[int, Any]] | None = None
        position = -1  # index of the last frame decoded
        for k, target in enumerate(indices.tolist()):
            if frames is None or self._key_of[target] > position + 1:
                frames = self._start_at(target)  # a keyframe lies ahead: skip the frames between
            frame = None
            try:
                for position, frame in frames:
                    if position >= target:
                        break
            except VideoDecodeError:
                raise
            except Exception as exc:  # the data of a frame the index lists is missing or damaged
                raise VideoDecodeError(
                    self.path, f"frame {target} could not be decoded ({_clean_reason(exc)}); the file may be truncated or damaged"
                ) from None
            if position < target:
                raise VideoDecodeError(self.path, f"frame {target} could not be decoded (the stream ends after frame {position})")
            if position > target:
                raise VideoDecodeError(self.path, f"frame {target} could not be decoded (the decoder skipped to frame {position})")
            out[k] = self._image(frame)
        return out


# --------------------------------------------------------------------------------------
# torchcodec backend (registered only when installed)
# --------------------------------------------------------------------------------------


class TorchCodecReader(VideoReader):
    """torchcodec ``VideoDecoder`` (exact seek mode); ``device="cuda"`` decodes on an NVIDIA GPU.

    Frame times come from the shared PyAV packet index (torchcodec's per-frame metadata
    API differs across versions).
    """

    def __init__(self, path: str, device: str = "cpu", num_ffmpeg_threads: int = 1):
        super().__init__(path)
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as exc:  # installed but its FFmpeg libraries are missing, etc.
            raise ConfigError(f"decode backend 'torchcodec' cannot be imported: {exc}") from None
        container, stream = _open_av(self.path)
        try:
            self._index = _index_packets(self.path, container, stream)
        finally:
            container.close()
        try:
            self._dec = VideoDecoder(
                self.path, device=device, num_ffmpeg_threads=num_ffmpeg_threads, dimension_order="NHWC", seek_mode="exact"
            )
            meta = self._dec.metadata
        except Exception as exc:
            raise VideoDecodeError(self.path, _clean_reason(exc)) from None
        self._times = _times_from_pts(self._index.pts, self._index.time_base)
        num_frames = int(meta.num_frames) if meta.num_frames else int(self._index.pts.size)
        fps = float(meta.average_fps or 0.0)
        duration = _duration(self._times, fps)
        fps = fps or num_frames / max(duration, 1e-9)
        self.info = VideoInfo(self.path, num_frames, fps, int(meta.width), int(meta.height), duration)

    def _decode_sorted(self, indices: np.ndarray) -> np.ndarray:
        batch = self._dec.get_frames_at(indices=indices.tolist())
        return batch.data.cpu().numpy()

    def frame_times(self) -> np.ndarray:
        return self._times[: self.info.num_frames].copy()

    def close(self) -> None:
        self._dec = None
        super().close()


if importlib.util.find_spec("torchcodec") is not None:
    register_backend("torchcodec")(TorchCodecReader)
