"""Beam's ``FileSystems``, imported only when a path needs it.

The read side of index, benchmark and search (manifests, shard listing, Parquet/HDF5 reads)
mostly touches local folders, and importing Beam costs about 2 s of CPU per command. So the
read calls on a local path are answered with ``os`` directly, the same way Beam's
LocalFileSystem answers them; every other call, and every path with a scheme (gs://, s3://,
hdfs://...), goes to Beam. Writes always go to Beam, which makes their atomic renames.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import IO, Any, Sequence

UNCOMPRESSED = "uncompressed"  # apache_beam.io.filesystem.CompressionTypes.UNCOMPRESSED
AUTO = "auto"  # Beam's default: decompress by extension
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd", ".lzma", ".xz", ".deflate", ".snappy")
_GLOB_CHARS = "*?["


def _beam():
    from apache_beam.io.filesystems import FileSystems as BeamFileSystems

    return BeamFileSystems


def _local(path: str) -> bool:
    return "://" not in path


@dataclass(frozen=True)
class _Metadata:
    path: str
    size_in_bytes: int
    last_updated_in_seconds: float


@dataclass(frozen=True)
class _MatchResult:
    pattern: str
    metadata_list: list


class FileSystems:
    """The subset of Beam's ``FileSystems`` this package calls, with local reads done here."""

    @staticmethod
    def get_scheme(path: str) -> str | None:
        return None if _local(path) else _beam().get_scheme(path)

    @staticmethod
    def join(base: str, *parts: str) -> str:
        return os.path.join(base, *parts) if _local(base) else _beam().join(base, *parts)

    @staticmethod
    def split(path: str) -> tuple[str, str]:
        return os.path.split(path) if _local(path) else _beam().split(path)

    @staticmethod
    def exists(path: str) -> bool:
        return os.path.exists(path) if _local(path) else _beam().exists(path)

    @staticmethod
    def open(path: str, mime_type: str = "application/octet-stream", compression_type: str = AUTO) -> IO[bytes]:
        plain = compression_type == UNCOMPRESSED or (compression_type == AUTO and not path.endswith(_COMPRESSED_SUFFIXES))
        if _local(path) and plain:
            return open(path, "rb")
        return _beam().open(path, mime_type=mime_type, compression_type=compression_type)

    @staticmethod
    def match(patterns: Sequence[str], limits: Sequence[int] | None = None) -> list[Any]:
        """Local single-folder patterns (``dir/*.parquet``) by listing the folder, as Beam does
        (``*`` matches names with a leading dot too); anything else through Beam."""
        folders = [os.path.split(p) for p in patterns]
        if limits is not None or not all(_local(p) and not any(c in d for c in _GLOB_CHARS) for p, (d, _) in
                                         zip(patterns, folders)):
            return _beam().match(list(patterns), limits)
        results = []
        for pattern, (folder, name) in zip(patterns, folders):
            try:
                entries = os.listdir(folder or ".")
            except (FileNotFoundError, NotADirectoryError):
                entries = []
            found = []
            for entry in sorted(fnmatch.filter(entries, name)):
                full = os.path.join(folder, entry)
                try:
                    stat = os.stat(full)
                except OSError:  # removed while listing
                    continue
                if not os.path.isdir(full):
                    found.append(_Metadata(full, stat.st_size, stat.st_mtime))
            results.append(_MatchResult(pattern, found))
        return results

    @staticmethod
    def create(path: str, mime_type: str = "application/octet-stream", compression_type: str = UNCOMPRESSED):
        return _beam().create(path, mime_type=mime_type, compression_type=compression_type)

    @staticmethod
    def rename(sources: Sequence[str], destinations: Sequence[str]) -> None:
        _beam().rename(list(sources), list(destinations))

    @staticmethod
    def delete(paths: Sequence[str]) -> None:
        _beam().delete(list(paths))
