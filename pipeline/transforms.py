"""The extraction job as composite Beam transforms.

    videos  = MatchVideos(dir)                 # file paths -> (video_id, path)
    decoded = videos | Reshuffle | DecodeAndSample(extractors)   # one decode per video,
                                               # the union of every extractor's sampled frames
    rows[e] = decoded[e] | BatchElements | EmbedVideos(e)        # model loaded once per worker
    rows[e] | WriteFeatureShards(out/e)        # atomic shards, one per batch of rows
    decoded.dead_letters | WriteDeadLetters(out)

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

from pipeline.video_files import has_video_extension, is_local, list_videos, local_copy, video_glob, video_id_for

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "vidfuse"
DEAD_LETTER_TAG = "dead_letters"
@dataclass
class DecodedVideo:
    """Sampled frames of one video for one extractor (uint8 [N, H, W, 3], N = indices.size)."""

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

    def to_json(self) -> str:
        return json.dumps(self.__dict__, ensure_ascii=False)


class MatchVideos(beam.PTransform):
    """Every file under ``video_dir`` (recursive) with a video extension -> (video_id, path)."""

    def __init__(self, video_dir: str, extensions: Sequence[str]):
        super().__init__()
        self.video_dir = video_dir
        self.extensions = list(extensions)

    def expand(self, pbegin):
        video_dir, extensions = self.video_dir, self.extensions
        if is_local(video_dir):  # listed here: links followed, broken ones kept (see list_videos)
            paths = pbegin | "List" >> beam.Create(list_videos(video_dir, extensions))
        else:  # listed by the runner's workers, however many files
            paths = (
                pbegin
                | "Match" >> fileio.MatchFiles(video_glob(video_dir))
                | "Paths" >> beam.Map(lambda m: m.path)
                | "KeepVideos" >> beam.Filter(has_video_extension, extensions)
            )
        return paths | "NameVideos" >> beam.Map(lambda p: (video_id_for(p, video_dir), p))


class _DecodeAndSampleFn(beam.DoFn):
    """Decodes each video once, reading only the frames some extractor samples."""

    def __init__(
        self,
        samplings: Mapping[str, Any],
        done: Mapping[str, set[str]],
        rejected: Mapping[str, str],
        backend: str,
        fallback: str | None,
    ):
        self.samplings = dict(samplings)
        self.done = {name: set(ids) for name, ids in done.items()}
        self.rejected = dict(rejected)
        self.backend = backend
        self.fallback = fallback
        self.decoded = Metrics.counter(METRICS_NAMESPACE, "videos_decoded")
        self.skipped = Metrics.counter(METRICS_NAMESPACE, "videos_skipped")
        self.failed = Metrics.counter(METRICS_NAMESPACE, "videos_failed")

    def process(self, element: tuple[str, str]) -> Iterator[Any]:
        from pipeline.decode import open_video
        from pipeline.sampling import sample_indices

        video_id, path = element
        pending = [name for name in self.samplings if video_id not in self.done.get(name, ())]
        if not pending:
            self.skipped.inc()
            return
        if path in self.rejected:
            self.failed.inc()
            for name in pending:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER_TAG, DeadLetter(path, video_id, name, "match", self.rejected[path])
                )
            return
        from pipeline.fingerprints import fingerprint

        source = fingerprint(path)  # before reading: a file changed while read differs on the rerun
        try:
            with local_copy(path) as local, open_video(local, backend=self.backend, fallback=self.fallback) as reader:
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
                    DEAD_LETTER_TAG, DeadLetter(path, video_id, name, "decode", reason)
                )
            return
        self.decoded.inc()
        position = {int(i): k for k, i in enumerate(union)}
        for name, idx in wanted.items():
            take = np.fromiter((position[int(i)] for i in idx.ravel()), dtype=np.int64)
            if replaced:  # the row records the frames its features come from
                idx = np.vectorize(lambda i: replaced.get(int(i), int(i)), otypes=[np.int64])(idx)
            yield beam.pvalue.TaggedOutput(
                name, DecodedVideo(video_id, path, info.num_frames, idx, frames[take], source)
            )


class DecodeAndSample(beam.PTransform):
    """(video_id, path) -> one tagged output per extractor, plus ``dead_letters``."""

    def __init__(
        self,
        samplings: Mapping[str, Any],
        done: Mapping[str, set[str]],
        rejected: Mapping[str, str],
        backend: str,
        fallback: str | None = None,
    ):
        super().__init__()
        self.samplings = dict(samplings)
        self.done = done
        self.rejected = rejected
        self.backend = backend
        self.fallback = fallback

    def expand(self, videos):
        return videos | "Decode" >> beam.ParDo(
            _DecodeAndSampleFn(self.samplings, self.done, self.rejected, self.backend, self.fallback)
        ).with_outputs(*self.samplings, DEAD_LETTER_TAG)


class _EmbedFn(beam.DoFn):
    """Batch of decoded videos -> FeatureRows; the model is built once per worker (setup).

    ``torch_threads``: torch's intra-op threads in this worker process (None: torch's default).
    """

    def __init__(self, name: str, config: Mapping[str, Any], device: str, torch_threads: int | None = None):
        self.name = name
        self.config = dict(config)
        self.device = device
        self.torch_threads = torch_threads
        self.extractor = None
        self.embedded = Metrics.counter(METRICS_NAMESPACE, f"{name}_embedded")

    def setup(self) -> None:
        from extractors.registry import build_extractor

        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)
        self.extractor = build_extractor(self.name, self.config, device=self.device)

    def process(self, batch: Sequence[DecodedVideo]) -> Iterator[Any]:
        from pipeline.shards import FeatureRow

        units = [self.extractor.preprocess(video.frames) for video in batch]
        counts = [len(u) for u in units]
        import torch

        features = self.extractor.embed(torch.cat(units))
        start = 0
        for video, count in zip(batch, counts):
            unit_features = features[start : start + count]
            start += count
            self.embedded.inc()
            yield FeatureRow(
                video_id=video.video_id,
                feature=self.extractor.pool(unit_features).astype(np.float32),
                frames=unit_features.astype(np.float32),
                num_frames=video.num_frames,
                frame_indices=np.asarray(video.indices, dtype=np.int64).ravel(),
                source=video.source,
            )


class EmbedVideos(beam.PTransform):
    """Decoded videos of one extractor -> FeatureRows, embedded in batches of ``batch_videos``."""

    def __init__(
        self, name: str, config: Mapping[str, Any], device: str, batch_videos: int, torch_threads: int | None = None
    ):
        super().__init__()
        self.name, self.config, self.device, self.batch_videos = name, config, device, batch_videos
        self.torch_threads = torch_threads

    def expand(self, decoded):
        return (
            decoded
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_videos)
            | "Embed" >> beam.ParDo(_EmbedFn(self.name, self.config, self.device, self.torch_threads))
        )


class _WriteShardFn(beam.DoFn):
    def __init__(self, out_dir: str, formats: Sequence[str], manifest_hash: str):
        self.out_dir = out_dir
        self.formats = list(formats)
        self.manifest_hash = manifest_hash
        self.shards = Metrics.counter(METRICS_NAMESPACE, "shards_written")

    def process(self, rows: Sequence[Any]) -> Iterator[str]:
        from pipeline.shards import new_shard_name, write_shard

        yield from write_shard(self.out_dir, new_shard_name(), list(rows), self.formats, self.manifest_hash)
        self.shards.inc()


class WriteFeatureShards(beam.PTransform):
    """FeatureRows -> complete shards of up to ``shard_size`` rows (temp name, then rename)."""

    def __init__(self, out_dir: str, formats: Sequence[str], manifest_hash: str, shard_size: int):
        super().__init__()
        self.out_dir, self.formats = out_dir, list(formats)
        self.manifest_hash, self.shard_size = manifest_hash, shard_size

    def expand(self, rows):
        return (
            rows
            | "GroupRows" >> beam.BatchElements(
                min_batch_size=self.shard_size, max_batch_size=self.shard_size
            )
            | "Write" >> beam.ParDo(_WriteShardFn(self.out_dir, self.formats, self.manifest_hash))
        )


class WriteDeadLetters(beam.PTransform):
    """Dead letters -> ``<prefix>-SSSSS-of-NNNNN.jsonl``, merged into errors.jsonl by the launcher."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def expand(self, dead_letters):
        return (
            dead_letters
            | "ToJson" >> beam.Map(lambda d: d.to_json())
            | "Write" >> beam.io.WriteToText(self.prefix, file_name_suffix=".jsonl")
        )


class ExtractFeatures(beam.PTransform):
    """The whole extraction: video folder -> feature shards per extractor + dead letters."""

    def __init__(
        self,
        video_dir: str,
        out_dirs: Mapping[str, str],
        extractor_configs: Mapping[str, Mapping[str, Any]],
        samplings: Mapping[str, Any],
        manifest_hashes: Mapping[str, str],
        done: Mapping[str, set[str]],
        *,
        rejected: Mapping[str, str],
        extensions: Sequence[str],
        backend: str,
        fallback: str | None,
        formats: Sequence[str],
        shard_size: int,
        batch_videos: int,
        device: str,
        dead_letter_prefix: str,
        torch_threads: int | None = None,
    ):
        super().__init__()
        self.video_dir = video_dir
        self.out_dirs = dict(out_dirs)
        self.extractor_configs = {k: dict(v) for k, v in extractor_configs.items()}
        self.samplings = dict(samplings)
        self.manifest_hashes = dict(manifest_hashes)
        self.done = done
        self.rejected = dict(rejected)
        self.extensions, self.backend, self.formats = list(extensions), backend, list(formats)
        self.fallback = fallback
        self.shard_size, self.batch_videos, self.device = shard_size, batch_videos, device
        self.dead_letter_prefix = dead_letter_prefix
        self.torch_threads = torch_threads

    def expand(self, pbegin):
        decoded = (
            pbegin
            | "MatchVideos" >> MatchVideos(self.video_dir, self.extensions)
            | "Spread" >> beam.Reshuffle()
            | "DecodeAndSample" >> DecodeAndSample(
                self.samplings, self.done, self.rejected, self.backend, self.fallback
            )
        )
        written = []
        for name, config in self.extractor_configs.items():
            written.append(
                decoded[name]
                | f"Embed[{name}]" >> EmbedVideos(name, config, self.device, self.batch_videos, self.torch_threads)
                | f"Write[{name}]" >> WriteFeatureShards(
                    self.out_dirs[name], self.formats, self.manifest_hashes[name], self.shard_size
                )
            )
        decoded[DEAD_LETTER_TAG] | "DeadLetters" >> WriteDeadLetters(self.dead_letter_prefix)
        return written
