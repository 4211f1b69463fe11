"""Which extracted videos changed on disk since their rows were written, and replacing those rows.

Every row the extraction writes records the (size, modification time in ns) of the file it
was read from, as the job's listing saw it before decoding (``source_size``/``source_mtime_ns``
in the shards).
A rerun compares them with the files now listed: a video copied in while it was still being
written, or replaced since, is re-extracted. Files modified in the last ``RECENT_S`` seconds
are looked at again after ``SETTLE_S``: those still changing (a copy or a recording under way)
are left for a later run; the others (a copy that just finished) are extracted.

The comparison runs on the workers, where the done set is read (``pipeline.done_set``): a
stale row sends its video back to the pending set and, after the run, the launcher drops it.

Replacing rows: the stale rows' shards are rewritten without them (the other rows kept, in a
new shard). The old shard is first renamed to a temp name (never read, removed by the next run)
so that no rewrite holds a kept row twice: a job killed in between loses at most the kept rows
of that shard, which the rerun extracts again. A job killed after writing a video's new row but
before dropping the old one leaves both; the next run finds the old one stale again and drops it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Sequence

from apache_beam.io.filesystems import FileSystems

log = logging.getLogger(__name__)

RECENT_S = 5.0  # a file modified this recently may still be being copied or recorded
SETTLE_S = 0.5  # ... it is looked at again after this long: still changing, it is left for later
Fingerprint = tuple[int, int]  # (size in bytes, mtime in ns)


def fingerprint(path: str) -> Fingerprint | None:
    """(size, mtime ns) of a video file, local or remote; None when it cannot be read."""
    try:
        if FileSystems.get_scheme(path) is None:
            st = os.stat(path)
            return int(st.st_size), int(st.st_mtime_ns)
        meta = FileSystems.match([path])[0].metadata_list[0]
        return int(meta.size_in_bytes), int(meta.last_updated_in_seconds * 1e9)
    except Exception:  # a vanished or unreadable file: its decode reports it
        return None


def changed_videos(recorded: Mapping[str, Fingerprint], current: Mapping[str, Fingerprint]) -> list[str]:
    """Videos whose recorded fingerprint differs from the current one (rows without one: unknown, kept)."""
    return sorted(v for v, now in current.items() if v in recorded and now is not None and recorded[v] != now)


def recently_modified(current: Mapping[str, Fingerprint], now_ns: int | None = None,
                      seconds: float = RECENT_S) -> list[str]:
    """Videos modified less than ``seconds`` ago (or in the future: a clock skew is no proof of rest)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    return sorted(v for v, fp in current.items() if fp is not None and now_ns - fp[1] < seconds * 1e9)


def still_changing(paths: Mapping[str, str], current: Mapping[str, Fingerprint], settle_s: float = SETTLE_S) -> list[str]:
    """Of the recently modified videos (``paths``: id -> file), those whose fingerprint moves within ``settle_s``."""
    recent = recently_modified({v: current[v] for v in paths})
    if not recent:
        return []
    time.sleep(settle_s)  # one wait for all of them
    return sorted(v for v in recent if fingerprint(paths[v]) != current[v])


def drop_rows(out_dir: str, video_ids: Sequence[str] | Mapping[str, Sequence[str]], manifest) -> int:
    """Rewrite the shards of ``out_dir`` holding ``video_ids`` without those rows; returns rows dropped.

    ``video_ids`` as {shard stem: ids} drops each id from the shard named only (the other rows
    of that id, a newer extraction, stay)."""
    from pipeline.shards import (TEMP_PREFIX, TEMP_SUFFIX, FeatureRow, _complete_stems, new_shard_name, open_shard,
                                 write_shard)

    found, required, complete = _complete_stems(out_dir, manifest.formats)
    everywhere = None if isinstance(video_ids, Mapping) else set(video_ids)
    dropped = 0
    for stem in complete:
        doomed = everywhere if everywhere is not None else set(video_ids.get(stem, ()))
        if not doomed:
            continue
        with open_shard(found[required[0]][stem]) as shard:
            ids = shard.ids()
            if doomed.isdisjoint(ids):
                continue
            features = shard.read_features(manifest.dim)
            frames, offsets = shard.read_frames(manifest.dim) if shard.has_frames else (None, None)
            values, index_offsets = shard.read_frame_indices()
            num_frames, sources = shard.read_num_frames(), shard.read_sources()
        keep = [
            FeatureRow(video_id=v, feature=features[i],
                       frames=None if frames is None else frames[offsets[i] : offsets[i + 1]],
                       num_frames=int(num_frames[i]),
                       frame_indices=values[index_offsets[i] : index_offsets[i + 1]],
                       source=tuple(sources[i].tolist()) if sources[i][0] >= 0 else None)
            for i, v in enumerate(ids) if v not in doomed
        ]
        hidden = []
        for fmt in required:  # out of sight first: no moment where a kept row is in two shards
            path = found[fmt][stem]
            folder, name = FileSystems.split(path)
            hidden.append(FileSystems.join(folder, f"{TEMP_PREFIX}{name}.replaced{TEMP_SUFFIX}"))
            FileSystems.rename([path], [hidden[-1]])
        if keep:
            write_shard(out_dir, new_shard_name(), keep, manifest.formats, manifest.hash())
        FileSystems.delete(hidden)
        dropped += len(ids) - len(keep)
    return dropped
