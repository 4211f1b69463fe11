"""The extraction job as composite Beam transforms.

    videos  = MatchVideos(dir)                 # listed by the workers -> (video_id, (path, size+mtime))
    done[e] = ReadDoneIds(out/e)               # id columns of the shards, read by the workers
    plan    = {videos, done, old errors} | PlanVideos      # anti-join: what each video still needs
    decoded = plan.todo | Reshuffle | DecodeAndSample      # one decode per video, the union of
                                               # every pending extractor's sampled frames
    rows[e] = decoded[e] | EmbedVideos(e)      # RunInference: one model per worker process
    rows[e] | WriteFeatureShards(out/e)        # retry-safe shards named by their content
    dead letters | WriteDeadLetters, notes | WriteNotes    # merged by the launcher

DoFns touch inputs and outputs only through Beam's FileSystems (see ``video_files.local_copy``
and ``shards.write_shard``), so the same job runs on Dataflow, Flink or Spark.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.metrics import Metrics

from pipeline import progress
from pipeline.video_files import has_video_extension, is_local, local_copy, video_glob, video_id_for

log = logging.getLogger(__name__)

from pipeline.done_set import DEAD_LETTER_TAG, METRICS_NAMESPACE, NOTES_TAG, TODO_TAG  # noqa: F401
@dataclass
class DecodedVideo:
    """Sampled frames of one video for one extractor, already at the model's resolution: uint8
    [N, 3, S, S], N = indices.size (resized and cropped right after decoding)."""

    video_id: str
    path: str
    num_frames: int
    indices: np.ndarray
    frames: np.ndarray
    source: tuple[int, int] | None = None  # (size, mtime ns) of the file just before it was read


@dataclass
class DeadLetter:
    """A video that could not be turned into features, and why (one line of errors.jsonl)."""

    path: str
    video_id: str
    extractor: str
    stage: str
    reason: str
    time: float = field(default_factory=time.time)

    def record(self) -> dict:
        """The errors.jsonl record (a plain dict: old and new records travel together)."""
        return dict(self.__dict__)


class _WalkFolderFn(beam.DoFn):
    """A local folder -> its video paths, walked on the worker with the link rules of
    :func:`pipeline.video_files.walk_local_files` (folder links followed, each real folder
    once, broken links listed so that decoding names them)."""

    def __init__(self, extensions: Sequence[str]):
        self.extensions = list(extensions)

    def process(self, folder: str) -> Iterator[tuple[str, Any]]:
        from pipeline.fingerprints import fingerprint
        from pipeline.video_files import normalise_dir, walk_local_files

        for path in walk_local_files(normalise_dir(folder)):
            if has_video_extension(path, self.extensions):
                yield path, fingerprint(path)  # os.stat here, on the worker


class MatchVideos(beam.PTransform):
    """Every file under ``video_dir`` (recursive) with a video extension -> (video_id, (path,
    fingerprint)), the fingerprint (size, mtime ns) from the listing itself,
    listed by the workers: Beam's ``fileio.MatchFiles`` for object stores, a worker-side walk
    for local folders (Beam's local match neither follows folder links nor lists broken ones)."""

    def __init__(self, video_dir: str, extensions: Sequence[str]):
        super().__init__()
        self.video_dir = video_dir
        self.extensions = list(extensions)

    def expand(self, pbegin):
        video_dir, extensions = self.video_dir, self.extensions
        if is_local(video_dir):
            paths = (
                pbegin
                | "Folder" >> beam.Create([video_dir])
                | "Walk" >> beam.ParDo(_WalkFolderFn(extensions))
            )
        else:
            paths = (
                pbegin
                | "Match" >> fileio.MatchFiles(video_glob(video_dir))
                | "KeepVideos" >> beam.Filter(lambda m: has_video_extension(m.path, extensions))
                | "Fingerprints" >> beam.Map(
                    lambda m: (m.path, (int(m.size_in_bytes), int(m.last_updated_in_seconds * 1e9))))
            )
        return paths | "NameVideos" >> beam.Map(lambda listed: (video_id_for(listed[0], video_dir), listed))


class _DecodeAndSampleFn(beam.DoFn):
    """Decodes each video once, reading only the frames some pending extractor samples.

    ``blocked`` (side input): refusals found while reading the done set; while there is one
    the job must not write into the folder, so nothing is decoded.
    """

    def __init__(self, samplings: Mapping[str, Any], transforms: Mapping[str, Any], backend: str,
                 fallback: str | None, device: str = "cpu"):
        self.samplings = dict(samplings)
        self.transforms = dict(transforms)
        self.backend = backend
        self.fallback = fallback
        self.device = device
        self.options: dict[str, Any] = {}
        self.decoded = Metrics.counter(METRICS_NAMESPACE, "videos_decoded")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "videos_failed")

    def setup(self) -> None:
        from pipeline.decode_auto import resolve_backend

        self.backend = resolve_backend(self.backend)  # ``auto``: what this worker can load
        if self.device != "cpu":
            if self.backend == "torchcodec":
                self.options = {"device": self.device}  # NVDEC; frames come back to the CPU resize
            else:
                log.warning("decode.device %s needs torchcodec; decoding with %s on the CPU", self.device, self.backend)

    def process(self, task, blocked: int = 0) -> Iterator[Any]:
        from pipeline.decode import open_video
        from pipeline.sampling import sample_indices

        if blocked:
            return
        video_id, path, pending = task.video_id, task.path, list(task.pending)
        try:
            with local_copy(path) as local, open_video(
                local, backend=self.backend, fallback=self.fallback, **self.options
            ) as reader:
                info = reader.info
                times = None
                if any(self.samplings[n].kind == "fps" for n in pending):
                    times = reader.frame_times()
                wanted = {n: sample_indices(self.samplings[n], info.num_frames, times) for n in pending}
                union = np.unique(np.concatenate([idx.ravel() for idx in wanted.values()]))
                frames = reader.get_frames(union, nearest=True)
                replaced = dict(reader.replaced)  # damaged frames read from their nearest decodable one
        except Exception as exc:  # a bad video is a dead letter, never a crash of the job
            self.failed.inc()
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            for name in pending:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER_TAG, DeadLetter(path, video_id, name, "decode", reason).record()
                )
            return
        self.decoded.inc()
        progress.report(1)
        position = {int(i): k for k, i in enumerate(union)}
        resized = {}
        for name, idx in wanted.items():
            take = np.fromiter((position[int(i)] for i in idx.ravel()), dtype=np.int64)
            resized[name] = self.transforms[name].resize_crop(frames[take]).numpy()
            if replaced:  # the row records the frames its features come from
                wanted[name] = np.vectorize(lambda i: replaced.get(int(i), int(i)), otypes=[np.int64])(idx)
        del frames  # the full-resolution frames go before any model sees the video
        for name, idx in wanted.items():
            yield beam.pvalue.TaggedOutput(
                name, DecodedVideo(video_id, path, info.num_frames, idx, resized[name], task.source)
            )


class DecodeAndSample(beam.PTransform):
    """VideoTasks -> one tagged output per extractor, plus ``dead_letters``."""

    def __init__(self, samplings: Mapping[str, Any], transforms: Mapping[str, Any], backend: str,
                 fallback: str | None = None, blocked=None, device: str = "cpu"):
        super().__init__()
        self.samplings = dict(samplings)
        self.transforms = dict(transforms)
        self.device = device
        self.backend = backend
        self.fallback = fallback
        self.blocked = blocked

    def expand(self, tasks):
        extra = {} if self.blocked is None else {"blocked": self.blocked}
        return tasks | "Decode" >> beam.ParDo(
            _DecodeAndSampleFn(self.samplings, self.transforms, self.backend, self.fallback, self.device), **extra
        ).with_outputs(*self.samplings, DEAD_LETTER_TAG)


class EmbedVideos(beam.PTransform):
    """Decoded videos of one extractor -> FeatureRows through Beam's RunInference (one model per
    worker process, shared by its threads; batches of up to ``max_units`` frames or clips)."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def expand(self, decoded):
        from apache_beam.ml.inference.base import RunInference

        return decoded | "RunInference" >> RunInference(self.handler)


class WriteDeadLetters(beam.PTransform):
    """Dead letters -> ``<prefix>-SSSSS-of-NNNNN.jsonl``, merged into errors.jsonl by the launcher."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False))
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl")
        )


class WriteNotes(beam.PTransform):
    """Notes for the launcher (refusals, duplicate ids, uncaptionable ids) -> ``<prefix>-*.jsonl``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, notes):
        return (
            notes
            | "ToJson" >> beam.Map(lambda note: json.dumps(note, ensure_ascii=False, sort_keys=True))
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl")
        )


@dataclass
class ExtractorPlan:
    """What the graph needs of one extractor: small and fixed, whatever the corpus."""

    out_dir: str
    sampling: Any
    transform: Any  # extractors.preprocess.FrameTransform: resize + crop right after decoding
    manifest: Any  # pipeline.manifest.Manifest without its shard list
    handler: Any  # pipeline.model_handlers.VideoModelHandler


class ExtractFeatures(beam.PTransform):
    """The whole extraction: video folder -> feature shards per extractor + dead letters + notes.

    Everything that grows with the corpus (the file list, the done set, earlier errors) is read
    by the workers; the graph holds folder names, configs and manifest hashes only.
    """

    def __init__(
        self,
        video_dir: str,
        extractors: Mapping[str, ExtractorPlan],
        *,
        errors_path: str | None,
        extensions: Sequence[str],
        backend: str,
        fallback: str | None,
        formats: Sequence[str],
        shard_size: int,
        dead_letter_prefix: str,
        notes_prefix: str,
        decode_device: str = "cpu",
    ):
        super().__init__()
        self.video_dir = video_dir
        self.extractors = dict(extractors)
        self.errors_path = errors_path
        self.extensions, self.backend, self.formats = list(extensions), backend, list(formats)
        self.fallback = fallback
        self.shard_size = shard_size
        self.dead_letter_prefix, self.notes_prefix = dead_letter_prefix, notes_prefix
        self.decode_device = decode_device

    def expand(self, pbegin):
        from pipeline.done_set import PlanVideos, ReadDoneIds, ReadOldErrors
        from pipeline.shard_sink import WriteFeatureShards

        names = list(self.extractors)
        videos = pbegin | "MatchVideos" >> MatchVideos(self.video_dir, self.extensions)
        done = {n: pbegin | f"Done[{n}]" >> ReadDoneIds(n, e.out_dir, self.formats, e.manifest)
                for n, e in self.extractors.items()}
        old_errors = pbegin | "OldErrors" >> ReadOldErrors(self.errors_path)
        plan = {
            "paths": videos,
            "done": [d["ids"] for d in done.values()] | "AllDone" >> beam.Flatten(),
            "errors": old_errors["records"],
        } | "Plan" >> PlanVideos(names, {n: e.out_dir for n, e in self.extractors.items()})
        notes = (
            [plan[NOTES_TAG], old_errors[NOTES_TAG], *(d[NOTES_TAG] for d in done.values())]
            | "AllNotes" >> beam.Flatten()
        )
        blocked = (
            notes
            | "Refusals" >> beam.Filter(lambda note: note["kind"] in ("refusal", "duplicate"))
            | "CountRefusals" >> beam.combiners.Count.Globally()
        )
        pending = plan[TODO_TAG] | "CountPending" >> beam.combiners.Count.Globally()
        decoded = (
            plan[TODO_TAG]
            | "Spread" >> beam.Reshuffle()
            | "DecodeAndSample" >> DecodeAndSample(
                {n: e.sampling for n, e in self.extractors.items()},
                {n: e.transform for n, e in self.extractors.items()}, self.backend, self.fallback,
                blocked=beam.pvalue.AsSingleton(blocked), device=self.decode_device,
            )
        )
        written = []
        for name, extractor in self.extractors.items():
            written.append(
                decoded[name]
                | f"Embed[{name}]" >> EmbedVideos(extractor.handler)
                | f"Write[{name}]" >> WriteFeatureShards(
                    name, extractor.out_dir, self.formats, extractor.manifest.hash(), self.shard_size,
                    beam.pvalue.AsSingleton(pending),
                )
            )
        (
            [decoded[DEAD_LETTER_TAG], plan[DEAD_LETTER_TAG]]
            | "AllDeadLetters" >> beam.Flatten()
            | "DeadLetters" >> WriteDeadLetters(self.dead_letter_prefix)
        )
        notes | "Notes" >> WriteNotes(self.notes_prefix)
        return written
