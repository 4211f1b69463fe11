"""Finding the videos of a folder and naming them, on any filesystem Beam knows.

The video id is the path relative to the video folder, without extension (DESIGN §4), so
two ``clip.mp4`` in different sub-folders stay distinct.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import posixpath
import shutil
import tempfile
from typing import Iterator, Sequence

from pipeline.fs import FileSystems

from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)


class NoVideosError(VidfuseError):
    """The input folder holds no file with a video extension."""


def is_local(path: str) -> bool:
    """True for paths on this machine's filesystem (no ``scheme://``)."""
    return "://" not in path


def normalise_dir(video_dir: str) -> str:
    """Absolute (when local) folder path with one trailing separator, for prefix matching."""
    if is_local(video_dir):
        video_dir = os.path.abspath(video_dir)
    return video_dir.rstrip("/") + "/"


def video_glob(video_dir: str) -> str:
    """Recursive glob pattern understood by ``FileSystems.match`` and ``fileio.MatchFiles``.

    Glob characters in the folder's own path (``clips [2020]``, ``a*b``) are escaped so they
    match only themselves, not a sibling folder such as ``clips 2``.
    """
    return glob.escape(normalise_dir(video_dir)) + "**"


def has_video_extension(path: str, extensions: Sequence[str]) -> bool:
    wanted = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    return posixpath.splitext(path)[1].lower() in wanted


def video_id_for(path: str, video_dir: str) -> str:
    """``<video_dir>/a/b/clip.mp4`` -> ``a/b/clip``."""
    root = normalise_dir(video_dir)
    rel = path[len(root):] if path.startswith(root) else posixpath.basename(path)
    return posixpath.splitext(rel.replace(os.sep, "/"))[0]


def _warn_unlistable(error: OSError) -> None:
    log.warning("cannot list %s (%s): the videos under it are not extracted", error.filename, error.strerror)


def walk_local_files(root: str) -> Iterator[str]:
    """Every file under the local folder ``root``, following links to folders.

    Why not Beam's local listing: it does not follow folder links (datasets are often linked
    into a videos folder) and silently drops broken links. Here each real folder is entered
    once, so a link loop ends and a folder linked twice is listed once; broken links and
    other non-regular entries are listed, so that decoding names them instead of the video
    going missing unnoticed.
    """
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_warn_unlistable):
        try:
            stat = os.stat(dirpath)
        except OSError as exc:
            _warn_unlistable(exc)
            dirnames[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirnames[:] = []  # reached again through a link: already listed
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirnames.sort()
        for name in sorted(filenames):
            yield os.path.join(dirpath, name)


def list_videos(video_dir: str, extensions: Sequence[str]) -> list[str]:
    """Every video path under ``video_dir`` (recursive), sorted; a clear error when none.

    Local folders are walked with :func:`walk_local_files`; other filesystems through
    Beam's ``FileSystems.match``.
    """
    if is_local(video_dir):
        if not os.path.isdir(video_dir):
            raise NoVideosError(f"video folder not found: {video_dir}")
        listed = walk_local_files(normalise_dir(video_dir))
    else:
        listed = (m.path for m in FileSystems.match([video_glob(video_dir)])[0].metadata_list)
    paths = sorted(p for p in listed if has_video_extension(p, extensions))
    if not paths:
        raise NoVideosError(
            f"no videos found under {video_dir} (looked recursively for {', '.join(extensions)})"
        )
    return paths


def first_video(video_dir: str, extensions: Sequence[str]) -> str:
    """Some video path under ``video_dir``: the launcher's check that the folder is worth a job.

    It stops at the first video (the workers list the rest, :class:`pipeline.transforms.MatchVideos`),
    so its cost does not grow with the folder. A missing folder, or one without a video, is a
    NoVideosError naming it.
    """
    if is_local(video_dir):
        if not os.path.isdir(video_dir):
            raise NoVideosError(f"video folder not found: {video_dir}")
        listed: Iterator[str] = walk_local_files(normalise_dir(video_dir))
    else:
        listed = (m.path for m in FileSystems.match([video_glob(video_dir)])[0].metadata_list)
    found = next((p for p in listed if has_video_extension(p, extensions)), None)
    if found is None:
        raise NoVideosError(
            f"no videos found under {video_dir} (looked recursively for {', '.join(extensions)})"
        )
    return found


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local path for ``path``: itself when local, else a temporary download via FileSystems.

    Decoders need seekable local files; remote workers (Dataflow, Flink, Spark) read inputs
    through Beam's FileSystems and never assume a shared disk.
    """
    if is_local(path):
        yield path
        return
    suffix = posixpath.splitext(path)[1]
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        with FileSystems.open(path) as src:
            shutil.copyfileobj(src, tmp, length=8 << 20)
        tmp.flush()
        yield tmp.name
