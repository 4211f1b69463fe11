"""What is already extracted, read by the workers: the done set as an anti-join, never a graph constant.

    shards[e] = ListShards(out/e)            # one worker lists the folder (names only)
              | Reshuffle | ReadShardIds(e)  # many workers read the id columns -> (video_id, Done)
    plan      = {paths, done, old errors} | CoGroupByKey | PlanVideo
                -> (video_id, path, pending extractors), dead letters, notes

Nothing here grows the job graph with the corpus: the launcher hands over folder names and
manifest hashes; ids travel only between workers. A damaged shard, or an id two shards hold,
becomes a *note* (kind ``refusal``/``duplicate``) instead of an exception, so every runner
reports it the same way: the launcher reads the notes after the job and refuses the folder,
and the decode step writes nothing while any refusal exists (see ``transforms``).

``Done`` carries the extractor, the shard and the row's recorded source fingerprint (size,
mtime); :class:`_PlanFn` compares it with the file's as listed (``pipeline.fingerprints``). A
row whose file changed since is *superseded*: its video is pending again, and a note
(``superseded``) tells the launcher to drop that row after the run (``fingerprints.drop_rows``,
only from the shard the note names, so the new row stays). A killed run that wrote the new row
but did not drop the old one leaves both: the next run notes the stale one again. A file still
being written (its fingerprint moves while looked at) is left for a later run (``still_written``).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics

METRICS_NAMESPACE = "vidfuse"
NOTES_TAG = "notes"
DEAD_LETTER_TAG = "dead_letters"
TODO_TAG = "todo"


@dataclass(frozen=True)
class Done:
    """One row already in a complete shard: which extractor, which shard file."""

    extractor: str
    shard: str  # file name (first format), as refusals name it
    source: tuple[int, int] | None = None  # (size, mtime ns) of the file the row was read from


@dataclass(frozen=True)
class VideoTask:
    """A video some extractor still lacks, and which extractors those are."""

    video_id: str
    path: str
    pending: tuple[str, ...]
    source: tuple[int, int] | None = None  # (size, mtime ns) as listed, recorded in the rows


def refusal(message: str) -> dict:
    return {"kind": "refusal", "message": message}


class _ListShardsFn(beam.DoFn):
    """out_dir -> paths of its complete shards (first required format), after removing what a
    killed run left (temp files, a shard renamed in one format only)."""

    def __init__(self, formats: Sequence[str]):
        self.formats = list(formats)

    def process(self, out_dir: str) -> Iterator[Any]:
        from pipeline.shards import complete_shards, remove_incomplete_shards

        remove_incomplete_shards(out_dir, self.formats)
        yield from complete_shards(out_dir, self.formats)


class _ShardIdsFn(beam.DoFn):
    """A complete shard (one path per format) -> (video_id, Done) per row, header and twins checked."""

    def __init__(self, name: str, manifest):
        self.name = name
        self.manifest = manifest  # without its shard list: a few hundred bytes
        self.read = Metrics.counter(METRICS_NAMESPACE, f"{name}_rows_present")

    def process(self, paths: tuple[str, ...]) -> Iterator[Any]:
        from pipeline.shards import ShardError, checked_rows

        shard = posixpath.basename(paths[0])
        try:
            rows = checked_rows(paths, self.manifest)
        except ShardError as exc:
            yield beam.pvalue.TaggedOutput(NOTES_TAG, refusal(str(exc)))
            return
        for video_id, source in rows:
            self.read.inc()
            yield video_id, Done(self.name, shard, source)


class ReadDoneIds(beam.PTransform):
    """(video_id, Done) for every row of one extractor folder's complete shards; refusals tagged ``notes``."""

    def __init__(self, name: str, out_dir: str, formats: Sequence[str], manifest):
        super().__init__()
        self.name, self.out_dir, self.formats, self.manifest = name, out_dir, list(formats), manifest

    def expand(self, pbegin):
        return (
            pbegin
            | "Folder" >> beam.Create([self.out_dir])
            | "ListShards" >> beam.ParDo(_ListShardsFn(self.formats))
            | "Spread" >> beam.Reshuffle()
            | "ReadIds" >> beam.ParDo(_ShardIdsFn(self.name, self.manifest)).with_outputs(NOTES_TAG, main="ids")
        )


class _PlanFn(beam.DoFn):
    """Per video id: which path keeps it, which extractors it still needs, which old errors stay.

    Rules, as before the job moved onto the workers: of several files with one id the first
    path (sorted) keeps it and the others are dead letters (only while the id is pending); an
    old errors.jsonl entry stays while its video has not been extracted since, or when its path
    lost the id to another file. Rows whose recorded source differs from the file's current
    fingerprint are superseded (see the module docstring); a file still being written is left.
    """

    def __init__(self, names: Sequence[str], out_dirs: Mapping[str, str]):
        self.names = list(names)
        self.out_dirs = dict(out_dirs)
        self.found = Metrics.counter(METRICS_NAMESPACE, "videos_found")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "videos_skipped")
        self.pending = Metrics.counter(METRICS_NAMESPACE, "videos_pending")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "videos_failed")
        self.reextracted = Metrics.counter(METRICS_NAMESPACE, "videos_reextracted")
        self.still_written = Metrics.counter(METRICS_NAMESPACE, "videos_still_written")

    def process(self, element: tuple[str, Mapping[str, Any]]) -> Iterator[Any]:
        from pipeline.captions import captionable
        from pipeline.fingerprints import still_changing
        from pipeline.transforms import DeadLetter

        video_id, groups = element
        listed = sorted(groups["paths"])  # (path, fingerprint as listed)
        paths = [path for path, _ in listed]
        current = listed[0][1] if listed else None
        if current is not None and still_changing({video_id: paths[0]}, {video_id: current}):
            self.found.inc(len(paths))
            self.still_written.inc()
            yield beam.pvalue.TaggedOutput(NOTES_TAG, {"kind": "still_written", "video_id": video_id})
            for record in groups["errors"]:  # untouched until a run looks at the finished file
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record)
            return
        owners: dict[str, list[str]] = {}
        superseded = set()
        for done in groups["done"]:
            if current is not None and done.source is not None and done.source != current:
                superseded.add(done.extractor)
                yield beam.pvalue.TaggedOutput(NOTES_TAG, {
                    "kind": "superseded", "extractor": done.extractor, "video_id": video_id, "shard": done.shard})
            else:
                owners.setdefault(done.extractor, []).append(done.shard)
        if any(name not in owners for name in superseded):
            self.reextracted.inc()
        for name, shards in sorted(owners.items()):
            if len(shards) > 1:
                shards = sorted(shards)
                yield beam.pvalue.TaggedOutput(NOTES_TAG, {
                    "kind": "duplicate", "folder": self.out_dirs.get(name, name),
                    "detail": f"{video_id!r} ({shards[0]} and {shards[1]})"})
        pending = tuple(n for n in self.names if n not in owners)
        rejected = set(paths[1:])
        for record in groups["errors"]:
            extractor = record["extractor"]
            if record["path"] in rejected or (extractor not in owners and not (paths and extractor in pending)):
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record)
        if not paths:
            return
        self.found.inc(len(paths))
        if not captionable(video_id):
            yield beam.pvalue.TaggedOutput(NOTES_TAG, {"kind": "uncaptionable", "video_id": video_id})
        if not pending:
            self.skipped.inc()
            return
        self.pending.inc()
        for path in paths[1:]:
            self.failed.inc()
            for name in pending:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    path, video_id, name, "match", f"video id {video_id!r} is already taken by {paths[0]}").record())
        yield beam.pvalue.TaggedOutput(TODO_TAG, VideoTask(video_id, paths[0], pending, current))


class PlanVideos(beam.PTransform):
    """{paths, done, errors} keyed by video id -> tasks (``todo``), ``dead_letters`` and ``notes``."""

    def __init__(self, names: Sequence[str], out_dirs: Mapping[str, str]):
        super().__init__()
        self.names, self.out_dirs = list(names), dict(out_dirs)

    def expand(self, keyed: Mapping[str, Any]):
        return (
            keyed
            | "JoinById" >> beam.CoGroupByKey()
            | "Plan" >> beam.ParDo(_PlanFn(self.names, self.out_dirs)).with_outputs(
                TODO_TAG, DEAD_LETTER_TAG, NOTES_TAG)
        )


def _parse_error_line(line: bytes, path: str) -> Iterator[Any]:
    from pipeline.extract_job import parse_dead_letter
    from vidfuse.errors import VidfuseError

    try:
        record = parse_dead_letter(line)
    except VidfuseError as exc:
        yield beam.pvalue.TaggedOutput(NOTES_TAG, refusal(f"{path}: {exc}"))
        return
    if record is not None:
        yield record["video_id"], record


class ReadOldErrors(beam.PTransform):
    """errors.jsonl of earlier runs -> (video_id, record), read by the workers (None: no file yet)."""

    def __init__(self, path: str | None):
        super().__init__()
        self.path = path

    def expand(self, pbegin):
        if self.path is None:
            none = pbegin | "NoErrors" >> beam.Create([])
            return {"records": none, NOTES_TAG: none}
        return (
            pbegin
            | "Read" >> beam.io.ReadFromText(self.path, coder=beam.coders.BytesCoder())
            | "Parse" >> beam.FlatMap(_parse_error_line, self.path).with_outputs(NOTES_TAG, main="records")
        )
