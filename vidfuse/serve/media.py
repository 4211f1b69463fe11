"""Video files and thumbnail strips for the server: only files under the recorded video folders.

A video id comes from the index, and its file is found in the video folders the features
folder recorded (``sources.json``). The file's real path (every symlink resolved) must lie
under the real path of one of those folders and be a regular file; anything else is "not
available", never served. Thumbnail strips are decoded with the project's own decoder
(:func:`pipeline.decode.open_video`) and cached on disk, keyed by the file's identity.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Sequence

import numpy as np

STRIP_HEIGHT = 64  # pixels; one tile per sampled frame
MAX_TILES = 16


def strip_frames(frames: Sequence[int]) -> list[int]:
    """At most MAX_TILES of ``frames``, evenly spread (all of them when fewer)."""
    frames = [int(i) for i in frames]
    if len(frames) <= MAX_TILES:
        return frames
    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, MAX_TILES).round()]


def safe_video_file(path: str | None, video_dirs: Sequence[str]) -> str | None:
    """``path`` resolved, if it is a regular file under one of ``video_dirs`` (also resolved)."""
    if not path:
        return None
    real = os.path.realpath(path)
    for folder in video_dirs:
        if "://" in folder:
            continue  # remote video folders are not served
        root = os.path.realpath(folder)
        if os.path.commonpath([real, root]) == root and os.path.isfile(real):
            return real
    return None


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vidfuse", "thumbnails")


class Thumbnails:
    """JPEG strips of a video's sampled frames, made on first request and kept in ``cache_dir``."""

    def __init__(self, cache_dir: str | None = None, height: int = STRIP_HEIGHT):
        self.cache_dir = cache_dir or default_cache_dir()
        self.height = height

    def strip(self, path: str, frames: Sequence[int]) -> bytes:
        """The strip of ``frames`` of the video at ``path`` (uniform frames when none are given).

        Raises :class:`pipeline.decode.VideoDecodeError` when the file cannot be decoded.
        """
        st = os.stat(path)
        key = hashlib.sha256(
            f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{list(frames)}\0{self.height}".encode()
        ).hexdigest()
        cached = os.path.join(self.cache_dir, key[:2], key + ".jpg")
        if os.path.isfile(cached):
            with open(cached, "rb") as handle:
                return handle.read()
        data = self._render(path, frames)
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cached), suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, cached)  # concurrent requests for one strip: the last complete one wins
        return data

    def _render(self, path: str, frames: Sequence[int]) -> bytes:
        from PIL import Image

        from pipeline.decode import open_video

        with open_video(path, fallback="pyav") as reader:
            count = reader.info.num_frames
            wanted = [int(i) for i in frames if 0 <= int(i) < count]
            if not wanted:
                wanted = sorted({int(i) for i in np.linspace(0, count - 1, min(count, 8)).round()})
            images = reader.get_frames(wanted)
        h, w = images.shape[1:3]
        width = max(1, round(w * self.height / h))
        tiles = [Image.fromarray(img).resize((width, self.height), Image.BILINEAR) for img in images]
        strip = Image.new("RGB", (width * len(tiles), self.height))
        for i, tile in enumerate(tiles):
            strip.paste(tile, (i * width, 0))
        out = io.BytesIO()
        strip.save(out, format="JPEG", quality=85)
        return out.getvalue()
