"""Launching the extraction job: resume state, manifests, progress, dead letters, summary.

The Beam graph itself lives in :mod:`pipeline.transforms`; this module prepares what the
graph needs (which videos each extractor still lacks, the manifest hash its shards carry)
and, once the job has run, records the shard list and merges the dead letters.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipeline.config import ExtractConfig
from pipeline.features import SOURCES_FILE
from pipeline.job_lock import exclusive_folder
from pipeline.transforms import ExtractFeatures
from pipeline.video_files import NoVideosError, first_video, is_local, normalise_dir
from vidfuse.config import config_hash, config_to_dict
from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

ERRORS_FILE = "errors.jsonl"
DEAD_LETTERS_DIR = "_dead_letters"  # this run's dead-letter files until merged into errors.jsonl
KNOWN_FORMATS = ("parquet", "hdf5")


@dataclass
class ExtractSummary:
    """What one run did; ``failed`` counts videos this run could not decode or embed."""

    total: int
    done: int
    skipped: int
    failed: int
    rows_added: dict[str, int] = field(default_factory=dict)
    errors_path: str = ""
    reextracted: int = 0  # videos changed on disk since their rows were written, extracted again
    still_written: int = 0  # videos modified in the last seconds, left for a later run
    launcher_seconds: float = 0.0  # the launcher's own work: before and after the workers' run
    launcher_peak_rss: int = 0  # bytes, the launcher process's peak before the workers' run (Linux)

    def line(self) -> str:
        text = f"{self.total} videos: {self.done} done, {self.skipped} skipped (already extracted), {self.failed} failed"
        if self.failed:
            text += f" (see {self.errors_path})"
        if self.reextracted:
            text += f", {self.reextracted} re-extracted (changed since their extraction)"
        if self.still_written:
            text += f", {self.still_written} left for a later run (modified in the last seconds)"
        return text


# The Python minor the worker image (Dockerfile ARG PYTHON_VERSION) runs; its Beam is pyproject's pin.
WORKER_IMAGE_PYTHON = "3.12"
_IMAGE_OPTIONS = ("sdk_container_image", "environment_config")


def unknown_beam_flags(beam_args: Sequence[str]) -> list[str]:
    """Arguments of ``beam_args`` that no Beam PipelineOptions class defines, parsed by Beam's
    own options parser (a mistyped vidfuse option lands here too: ``--extractros clip`` must
    not run every extractor in silence)."""
    parsers = []
    PipelineOptions(list(beam_args)).get_all_options(add_extra_args_fn=parsers.append)
    _, unknown = parsers[0].parse_known_args(list(beam_args))
    return unknown


def check_runner(options: PipelineOptions) -> None:
    """A runner Beam cannot build is one clear line before any folder is made (an unknown name,
    or a ``module.Class`` whose module does not import)."""
    from apache_beam.runners.runner import create_runner

    name = options.view_as(StandardOptions).runner or ""
    if name.lower() in ("directrunner", "direct"):
        return
    try:
        create_runner(name)
    except ImportError as exc:
        raise ConfigError(f"--runner={name}: cannot import it ({exc}); is its package installed?") from None
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"--runner={name}: {str(exc).splitlines()[0]}") from None


def worker_image_warning(options: PipelineOptions, launcher: tuple[int, int] = sys.version_info[:2]) -> str | None:
    """What to say when workers run in vidfuse's image and this launcher's Python is another minor.

    Beam's SDK harness in a custom container must run the launcher's Python minor and Beam
    version; the Beam version is pinned (pyproject), the image's Python is WORKER_IMAGE_PYTHON.
    """
    given = options.get_all_options(drop_default=True)
    if not any(given.get(name) for name in _IMAGE_OPTIONS):
        return None
    mine = f"{launcher[0]}.{launcher[1]}"
    if mine == WORKER_IMAGE_PYTHON:
        return None
    return (f"this launcher runs Python {mine}, vidfuse's worker image (Dockerfile) Python {WORKER_IMAGE_PYTHON} with "
            f"apache-beam {beam.version.__version__}: workers must run the launcher's Python minor; build the image "
            f"with --build-arg PYTHON_VERSION={mine}, or launch from Python {WORKER_IMAGE_PYTHON}")


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options from the user's flags; DirectRunner, one process per core, by default.

    The runner is always named: left alone, recent Beam may pick the Prism runner, which
    downloads a binary at start-up. A single DirectRunner worker runs inside this process
    (``in_memory``) unless ``--direct_running_mode`` says otherwise: a worker process would
    add only its start-up (Python, Beam, torch imports, model builds: seconds per run).
    Worker processes log at the launcher's level (``--default_sdk_harness_log_level``).
    """
    args = list(beam_args)
    unknown = unknown_beam_flags(args)
    if unknown:
        raise ConfigError(f"unrecognized arguments: {' '.join(unknown)} (neither a vidfuse option nor a Beam pipeline option)")
    given = lambda flag: any(a == flag or a.startswith(flag + "=") for a in args)  # noqa: E731
    if not given("--runner"):
        args.append("--runner=DirectRunner")
    if not given("--default_sdk_harness_log_level"):
        level = logging.getLogger("apache_beam").getEffectiveLevel()
        args.append(f"--default_sdk_harness_log_level={logging.getLevelName(level)}")
    runner = PipelineOptions(args).view_as(StandardOptions).runner or ""
    if runner.lower() in ("directrunner", "direct"):
        if not given("--direct_num_workers"):
            args.append(f"--direct_num_workers={os.cpu_count() or 1}")
        if not given("--direct_running_mode"):
            workers = PipelineOptions(args).view_as(DirectOptions).direct_num_workers
            args.append("--direct_running_mode=" + ("in_memory" if workers == 1 else "multi_processing"))
    options = PipelineOptions(args)
    check_runner(options)
    warning = worker_image_warning(options)
    if warning:
        log.warning(warning)
    return options


def runs_locally(options: PipelineOptions) -> bool:
    """Whether the workers run on this machine (the DirectRunner), so its devices are theirs."""
    return (options.view_as(StandardOptions).runner or "").lower() in ("directrunner", "direct")


def pipeline_runner(options: PipelineOptions):
    """The runner object for ``beam.Pipeline``: for the DirectRunner, the FnApiRunner it runs batch jobs on.

    Beam's DirectRunner first tries the Prism runner, whatever the runner is named: online it
    downloads a binary and runs every worker inside this process (LOOPBACK environment), so
    ``--direct_num_workers`` and ``--direct_running_mode`` are ignored; offline the download
    fails and it falls back to the FnApiRunner. Building that FnApiRunner here, as the
    DirectRunner does on its fallback, runs the same job in both cases. Other runners: None
    (Beam builds the one named in the options).
    """
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if runner not in ("directrunner", "direct"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return _fn_api_runner_class()(provision_info=fn_runner.ExtendedProvisionInfo(provision))


def _fn_api_runner_class():
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms import environments

    class QuietWorkersFnApiRunner(fn_runner.FnApiRunner):
        """The FnApiRunner, with its worker processes (``multi_processing``) started through
        :mod:`pipeline.beam_worker`, so they log at the launcher's level instead of Beam's INFO."""

        @property
        def _default_environment(self):
            return self.__dict__.get("_vidfuse_environment")

        @_default_environment.setter
        def _default_environment(self, environment) -> None:
            if isinstance(environment, environments.SubprocessSDKEnvironment):
                environment = environments.SubprocessSDKEnvironment.from_command_string(
                    f"{sys.executable} -m pipeline.beam_worker"
                )
            self.__dict__["_vidfuse_environment"] = environment

    return QuietWorkersFnApiRunner


def worker_torch_threads(options: PipelineOptions) -> int | None:
    """torch threads per worker process when the DirectRunner runs N local worker processes.

    Left at torch's default (every core), N workers ran N x cores threads on the cores, and
    oversubscribed OpenMP threads spin against each other: on 2 cores, 2 workers were
    slower than 1. The cores are shared out instead. None (torch's default) for the other
    modes and runners, which size their own machines.
    """
    if not local_worker_processes(options):
        return None
    cores = os.cpu_count() or 1
    workers = options.view_as(DirectOptions).direct_num_workers or cores  # 0: one per core, as the runner reads it
    return max(1, cores // workers)


def local_worker_processes(options: PipelineOptions) -> bool:
    """Whether the job's workers are processes this launcher starts (DirectRunner, ``multi_processing``)."""
    return runs_locally(options) and options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def _check_formats(formats: Sequence[str]) -> list[str]:
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown shard format(s) {unknown}; choose from {list(KNOWN_FORMATS)}")
    return list(dict.fromkeys(formats))


def _prepare_manifest(name: str, described: dict, settings: dict, out_dir: str, formats: Sequence[str],
                      precision: str):
    """Write (or check against the existing) manifest of one extractor's folder.

    ``described``: the extractor's manifest fields from its config and weights file, without
    building the model (``extractors.registry.describe_extractor``). A precision other than
    fp32 is part of the folder's identity (``extra.precision``): its rows differ in the last bits.
    """
    from pipeline.manifest import Manifest, check_compatible, library_versions, read_manifest, write_manifest

    manifest = Manifest(
        name=name,
        kind="video",
        model=str(described["model"]),
        weights=str(described["weights"]),
        dim=int(described["dim"]),
        level=str(described["level"]),
        sampling=dict(described["sampling"]),
        config=settings,
        config_hash=config_hash(settings),
        versions=library_versions(),
        formats=list(formats),
        extra={} if precision == "fp32" else {"precision": precision},
    )
    existing = read_manifest(out_dir)
    if existing is not None:
        check_compatible(existing, manifest)
        if sorted(existing.formats) != sorted(formats):
            raise ConfigError(
                f"{out_dir} holds {existing.formats} shards; resume with --format {','.join(existing.formats)} "
                "or extract into another folder"
            )
        manifest.shards = list(existing.shards)
    write_manifest(out_dir, manifest)
    return manifest


def _read_notes(prefix: str) -> list[dict]:
    """What the workers noted for the launcher (see ``pipeline.done_set``)."""
    notes = []
    for meta in FileSystems.match([prefix + "*"])[0].metadata_list:
        with FileSystems.open(meta.path) as handle:
            notes += [json.loads(line) for line in handle.read().splitlines() if line.strip()]
    return notes


def _refuse_if_noted(notes: Sequence[dict]) -> None:
    """A damaged shard or an id in two shards: the folder is refused (the job wrote nothing)."""
    from pipeline.shards import ShardError, duplicate_ids_error

    refusals = sorted(n["message"] for n in notes if n["kind"] == "refusal")
    if refusals:
        raise ShardError(refusals[0] + (f" (and {len(refusals) - 1} more problem(s))" if len(refusals) > 1 else ""))
    duplicates: dict[str, list[str]] = {}
    for note in notes:
        if note["kind"] == "duplicate":
            duplicates.setdefault(note["folder"], []).append(note["detail"])
    for folder, details in sorted(duplicates.items()):
        raise duplicate_ids_error(folder, sorted(details))


def _warn_uncaptionable(notes: Sequence[dict]) -> None:
    """Video ids no caption file can name are extracted, but said (renaming the files is
    cheaper than re-extracting after)."""
    bad = sorted(n["video_id"] for n in notes if n["kind"] == "uncaptionable")
    if bad:
        shown = ", ".join(repr(v) for v in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        log.warning("%d video id(s) contain '#' or whitespace, which caption files cannot name (caption ids are "
                    "'<video id>#<n>'): %s; rename those files to train or benchmark on them", len(bad), shown)


def _remove_tree(folder: str) -> None:
    """Delete ``folder`` and everything under it, if present (object stores: every object under it)."""
    if is_local(folder):
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        return
    found = FileSystems.match([posixpath.join(folder, "**")])[0].metadata_list
    if found:
        FileSystems.delete([m.path for m in found])


def _write_atomic(path: str, data: bytes) -> None:
    """Write a small file of the folder under a temp name (the shards' convention), then rename.

    A killed job leaves the old file or the new one, never half of one (a half sources.json
    made every later run into the folder fail to parse it); its temp file is removed by the
    next run (:func:`_remove_temp_files`).
    """
    from pipeline.shards import TEMP_PREFIX, TEMP_SUFFIX

    folder, name = posixpath.split(path)
    tmp = posixpath.join(folder, f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        handle.write(data)
    if not is_local(path) and FileSystems.exists(path):
        FileSystems.delete([path])  # object stores do not rename over an existing object
    FileSystems.rename([tmp], [path])


def _remove_temp_files(folder: str) -> None:
    """Temp files a killed run left in the job folder itself (errors.jsonl, sources.json)."""
    from pipeline.shards import TEMP_PREFIX, is_temp_name

    found = FileSystems.match([posixpath.join(folder, TEMP_PREFIX + "*")])[0].metadata_list
    doomed = [m.path for m in found if is_temp_name(m.path)]
    if doomed:
        FileSystems.delete(doomed)


DEAD_LETTER_KEYS = ("path", "video_id", "extractor", "reason")


def parse_dead_letter(line: bytes | str) -> dict | None:
    """One line of a dead-letter file as its record (None for a blank line); anything else is
    a VidfuseError (the callers name the file and line)."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)  # UnicodeDecodeError is a ValueError too
    except ValueError:
        record = None
    if not isinstance(record, dict) or any(key not in record for key in DEAD_LETTER_KEYS):
        raise VidfuseError("not an extraction error record")
    return record


def read_dead_letters(path: str) -> list[dict]:
    """The records of a dead-letter file (errors.jsonl, or one run's part of it); a line that
    is not such a record is an error naming the file and line."""
    with FileSystems.open(path) as handle:
        lines = handle.read().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = parse_dead_letter(line)
        except VidfuseError as exc:
            raise VidfuseError(f"{path} line {number}: {exc}") from None
        if record is not None:
            records.append(record)
    return records


def _merge_dead_letters(out_dir: str, prefix: str) -> str:
    """Replace errors.jsonl by this run's dead-letter files: the earlier records the workers kept
    (videos still not extracted, paths that lost their id to another file) and the new ones.

    One record per (path, extractor), the latest; the launcher reads only failures, never the
    corpus.
    """
    errors_path = posixpath.join(out_dir, ERRORS_FILE)
    parts = [m.path for m in FileSystems.match([prefix + "*"])[0].metadata_list]
    entries: dict[tuple[str, str], dict] = {}
    for part in parts:
        for record in read_dead_letters(part):
            key = (record["path"], record["extractor"])
            if key not in entries or record.get("time", 0) >= entries[key].get("time", 0):
                entries[key] = record
    records = sorted(entries.values(), key=lambda r: (r["path"], r["extractor"]))
    _write_atomic(errors_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    if parts:
        FileSystems.delete(parts)
    return errors_path


def _record_source(out_dir: str, video_dir: str) -> None:
    """Remember which video folders fed this features folder (search shows video paths)."""
    path = posixpath.join(out_dir, SOURCES_FILE)
    sources = {"video_dirs": []}
    if FileSystems.exists(path):
        with FileSystems.open(path) as handle:
            sources = json.loads(handle.read().decode("utf-8"))
    folder = normalise_dir(video_dir).rstrip("/")
    if folder not in sources["video_dirs"]:
        sources["video_dirs"].append(folder)
        _write_atomic(path, json.dumps(sources, indent=2).encode("utf-8"))


def _peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (0 where unknown)."""
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    except (ImportError, OSError):
        return 0


def _counters(result) -> dict[str, int]:
    """The job's committed ``vidfuse`` counters, summed over steps (retried bundles count once)."""
    from apache_beam.metrics.metric import MetricsFilter

    from pipeline.done_set import METRICS_NAMESPACE

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


@dataclass
class PreparedJob:
    """The launcher's part of a run: the Beam pipeline (not run yet) and what the merge needs."""

    pipeline: beam.Pipeline
    names: list[str]
    out_dirs: dict[str, str]
    manifests: dict
    formats: list[str]
    dead_dir: str
    dead_prefix: str
    notes_prefix: str


def prepare_extraction(
    video_dir: str,
    out_dir: str,
    config: ExtractConfig,
    names: Sequence[str],
    formats: Sequence[str],
    beam_args: Sequence[str] = (),
    device: str = "auto",
    batch_videos: int = 8,
) -> PreparedJob:
    """Manifests written, leftovers of a killed run removed, the graph built: all the launcher
    does before the workers run. Its cost does not grow with the corpus: it reads no shard, lists
    no video (but one, to refuse an empty folder) and builds no model."""
    from extractors.registry import describe_extractor, extractor_class
    from pipeline.model_handlers import VideoModelHandler, units_per_video
    from pipeline.transforms import ExtractorPlan

    first_video(video_dir, config.decode.extensions)
    out_dirs = {n: posixpath.join(out_dir, n) for n in names}
    described = {n: describe_extractor(n, config.extractors[n]) for n in names}
    precision = config.inference.precision
    manifests = {
        n: _prepare_manifest(n, described[n][1], config_to_dict(described[n][0]), out_dirs[n], formats, precision)
        for n in names
    }
    run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
    dead_dir = posixpath.join(out_dir, DEAD_LETTERS_DIR)
    _remove_tree(dead_dir)  # unfinished files of a killed run; its videos are retried
    _remove_temp_files(out_dir)
    errors_path = posixpath.join(out_dir, ERRORS_FILE)
    options = beam_options(beam_args)
    threads = worker_torch_threads(options)
    plans = {}
    for n in names:
        settings, _ = described[n]
        bare = dataclasses.replace(manifests[n], shards=[])  # the graph carries no shard list
        plans[n] = ExtractorPlan(
            out_dir=out_dirs[n],
            sampling=settings.sampling,
            transform=extractor_class(n).frame_transform_for(settings),
            manifest=bare,
            handler=VideoModelHandler(
                n, config_to_dict(settings), device,
                max_units=batch_videos * units_per_video(settings.sampling), precision=precision,
                torch_threads=threads, model_copies=config.inference.model_copies,
            ),
        )
    pipeline = beam.Pipeline(runner=pipeline_runner(options), options=options)
    _ = pipeline | "ExtractFeatures" >> ExtractFeatures(
        video_dir,
        plans,
        errors_path=errors_path if FileSystems.exists(errors_path) else None,
        extensions=config.decode.extensions,
        backend=config.decode.backend,
        fallback=config.decode.fallback,
        decode_device=config.decode.device,
        formats=formats,
        shard_size=config.output.shard_size,
        dead_letter_prefix=posixpath.join(dead_dir, f"run-{run_id}"),
        notes_prefix=posixpath.join(dead_dir, f"notes-{run_id}"),
    )
    return PreparedJob(pipeline, list(names), out_dirs, manifests, list(formats), dead_dir,
                       posixpath.join(dead_dir, f"run-{run_id}"), posixpath.join(dead_dir, f"notes-{run_id}"))


def _shown(ids: Sequence[str]) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else "")


def _replace_superseded(notes: Sequence[dict], out_dirs: dict[str, str], manifests: dict) -> None:
    """After the run: drop the rows the workers found superseded (their video's file changed
    since; the run extracted it again), from the shards the notes name only, so the new row
    stays; and say which videos were left because their file is still being written."""
    from pipeline.fingerprints import drop_rows
    from pipeline.shards import shard_stem

    fresh = sorted({n["video_id"] for n in notes if n["kind"] == "still_written"})
    if fresh:
        log.warning("%d video(s) still being written (size or time changed while looked at) are left for a "
                    "later run: %s", len(fresh), _shown(fresh))
    stale: dict[str, dict[str, set[str]]] = {}
    for note in notes:
        if note["kind"] == "superseded":
            by_shard = stale.setdefault(note["extractor"], {})
            by_shard.setdefault(shard_stem(note["shard"]), set()).add(note["video_id"])
    changed = sorted({v for by_shard in stale.values() for ids in by_shard.values() for v in ids})
    if changed:
        log.warning("%d video(s) changed on disk since they were extracted: extracted them again: %s",
                    len(changed), _shown(changed))
    for name, by_shard in sorted(stale.items()):
        drop_rows(out_dirs[name], by_shard, manifests[name])


def run_extraction(
    video_dir: str,
    out_dir: str,
    config: ExtractConfig,
    extractors: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
    beam_args: Sequence[str] = (),
    device: str = "auto",
    batch_videos: int = 8,
    progress: bool = True,
) -> ExtractSummary:
    """Extract features of every video under ``video_dir`` into ``out_dir/<extractor>/``."""
    from pipeline.beam_run import run_to_end
    from pipeline.manifest import write_manifest
    from pipeline.progress import job_progress
    from pipeline.shards import list_shards, shard_stem

    names = list(extractors or config.extractors.keys())
    missing = [n for n in names if n not in config.extractors]
    if missing:
        raise ConfigError(
            f"extractor(s) {missing} have no settings in the config (it defines {sorted(config.extractors)})"
        )
    formats = _check_formats(list(formats or config.output.formats))
    if runs_locally(beam_options(beam_args)):  # remote workers have their own devices; local ones are this machine's
        from extractors.base import resolve_device

        resolve_device(device)

    with exclusive_folder(out_dir, "extract job"):
        started = time.perf_counter()
        job = prepare_extraction(video_dir, out_dir, config, names, formats, beam_args, device, batch_videos)
        peak_rss = _peak_rss()
        run_started = time.perf_counter()
        with job_progress(progress):
            result = run_to_end(job.pipeline, watch_workers=local_worker_processes(job.pipeline.options))
        run_seconds = time.perf_counter() - run_started
        counters = _counters(result)
        notes = _read_notes(job.notes_prefix)
        if any(n["kind"] in ("refusal", "duplicate") for n in notes):
            _remove_tree(job.dead_dir)
            _refuse_if_noted(notes)
        _warn_uncaptionable(notes)
        _replace_superseded(notes, job.out_dirs, job.manifests)
        if not counters.get("videos_found"):  # listed by the workers; the launcher saw one video
            _remove_tree(job.dead_dir)
            raise NoVideosError(f"no videos found under {video_dir} (the job's workers listed none)")
        log.info("%d videos found, %d already extracted, %d to do (as the workers listed them)",
                 counters.get("videos_found", 0), counters.get("videos_skipped", 0), counters.get("videos_pending", 0))
        for n in names:
            job.manifests[n].shards = sorted(
                {shard_stem(p) for f in formats for p in list_shards(job.out_dirs[n], f)}
            )
            write_manifest(job.out_dirs[n], job.manifests[n])
        errors_path = _merge_dead_letters(out_dir, job.dead_prefix)
        _remove_tree(job.dead_dir)
        _record_source(out_dir, video_dir)
        launcher_seconds = time.perf_counter() - started - run_seconds

    return ExtractSummary(
        total=counters.get("videos_found", 0),
        done=counters.get("videos_decoded", 0),
        skipped=counters.get("videos_skipped", 0),
        failed=counters.get("videos_failed", 0),
        rows_added={n: counters.get(f"{n}_rows_written", 0) for n in names},
        errors_path=errors_path,
        launcher_seconds=launcher_seconds,
        launcher_peak_rss=peak_rss,
        reextracted=counters.get("videos_reextracted", 0),
        still_written=counters.get("videos_still_written", 0),
    )
