"""Feature rows -> shards whose names depend only on what they hold, so a retried bundle rewrites
the same files instead of adding a second copy of its rows.

    rows | KeyByGroup(hash of video id, count of pending videos)   # deterministic key
         | GroupByKey                                              # the runner commits each group once
         | WriteGroup: sorted by id, cut into shard_size rows,
                       each shard named part-<sha1(extractor, its ids)[:16]>

Every distributed runner retries failed bundles and may run a bundle twice (speculative
execution): what a shard holds is fixed by the GroupByKey (not by bundle boundaries), its name
is a function of that, and :func:`pipeline.shards.write_shard` writes under a temp name then
renames over the same final name. A second attempt therefore leaves one shard with the same
rows; none is refused as a duplicate.

Sizes: a group holds about ``GROUP_SHARDS`` shards' worth of rows (hash buckets), so every
shard holds exactly ``shard_size`` rows except the last one of each group, which holds the
rest (between 1 and ``shard_size`` rows). With fewer pending videos than one group, that is
one group: the shards are [shard_size, ..., remainder].
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipeline.done_set import METRICS_NAMESPACE

GROUP_SHARDS = 16  # shards per group: one short shard per this many, and bounded group memory


def stable_bucket(video_id: str, buckets: int) -> int:
    """The same bucket for the same id on every worker and every attempt (not Python's salted hash)."""
    digest = hashlib.sha1(video_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % max(1, buckets)


def group_count(pending: int, shard_size: int) -> int:
    return max(1, -(-pending // (shard_size * GROUP_SHARDS)))


def shard_name(extractor: str, ids: Sequence[str]) -> str:
    """``part-`` + 16 hex digits of the extractor and the shard's sorted ids: its content identity."""
    digest = hashlib.sha1(extractor.encode("utf-8"))
    for video_id in sorted(ids):
        digest.update(b"\0" + video_id.encode("utf-8"))
    return f"part-{digest.hexdigest()[:16]}"


class _WriteGroupFn(beam.DoFn):
    """(bucket, rows) -> shards of ``shard_size`` rows in id order; yields the final paths."""

    def __init__(self, name: str, out_dir: str, formats: Sequence[str], manifest_hash: str, shard_size: int):
        self.name, self.out_dir, self.formats = name, out_dir, list(formats)
        self.manifest_hash, self.shard_size = manifest_hash, shard_size
        self.shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")
        self.rows = Metrics.counter(METRICS_NAMESPACE, f"{name}_rows_written")

    def process(self, element: tuple[int, Sequence[Any]]) -> Iterator[str]:
        from pipeline.shards import write_shard

        _, rows = element
        rows = sorted(rows, key=lambda r: r.video_id)
        for start in range(0, len(rows), self.shard_size):
            chunk = rows[start : start + self.shard_size]
            name = shard_name(self.name, [r.video_id for r in chunk])
            yield from write_shard(self.out_dir, name, chunk, self.formats, self.manifest_hash)
            self.shards.inc()
            self.rows.inc(len(chunk))


class WriteFeatureShards(beam.PTransform):
    """FeatureRows of one extractor -> complete shards in ``out_dir`` (retry-safe, see the module doc).

    ``pending``: a singleton side input, the number of videos this run extracts (sizes the groups).
    """

    def __init__(self, name: str, out_dir: str, formats: Sequence[str], manifest_hash: str, shard_size: int, pending):
        super().__init__()
        self.name, self.out_dir, self.formats = name, out_dir, list(formats)
        self.manifest_hash, self.shard_size, self.pending = manifest_hash, shard_size, pending

    def expand(self, rows):
        shard_size = self.shard_size
        return (
            rows
            | "KeyByGroup" >> beam.Map(
                lambda row, n: (stable_bucket(row.video_id, group_count(n, shard_size)), row), n=self.pending)
            | "Group" >> beam.GroupByKey()
            | "Write" >> beam.ParDo(
                _WriteGroupFn(self.name, self.out_dir, self.formats, self.manifest_hash, self.shard_size))
        )
