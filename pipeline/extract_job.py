"""Launching the extraction job: resume state, manifests, progress, dead letters, summary.

The Beam graph itself lives in :mod:`pipeline.transforms`; this module prepares what the
graph needs (which videos each extractor still lacks, the manifest hash its shards carry)
and, once the job has run, records the shard list and merges the dead letters.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import shutil
import sys
import threading
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
from extractors.registry import build_extractor
from pipeline.transforms import ExtractFeatures
from pipeline.video_files import is_local, list_videos, normalise_dir, video_id_for
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
    direct = options.view_as(DirectOptions)
    runner = (options.view_as(StandardOptions).runner or "").lower()
    if runner not in ("directrunner", "direct") or direct.direct_running_mode != "multi_processing":
        return None
    cores = os.cpu_count() or 1
    workers = direct.direct_num_workers or cores  # 0: one per core, as the runner reads it
    return max(1, cores // workers)


def _check_formats(formats: Sequence[str]) -> list[str]:
    unknown = [f for f in formats if f not in KNOWN_FORMATS]
    if unknown or not formats:
        raise ConfigError(f"unknown shard format(s) {unknown}; choose from {list(KNOWN_FORMATS)}")
    return list(dict.fromkeys(formats))


def _prepare_manifest(name: str, extractor, out_dir: str, formats: Sequence[str]):
    """Write (or check against the existing) manifest of one extractor's folder."""
    from pipeline.manifest import Manifest, check_compatible, library_versions, read_manifest, write_manifest

    described = extractor.describe()
    settings = config_to_dict(extractor.config)
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


def _warn_uncaptionable(paths: Sequence[str], video_dir: str) -> None:
    """Video ids no caption file can name are extracted, but said at once (renaming the files
    before extraction is cheaper than after)."""
    from pipeline.captions import captionable

    bad = [vid for vid in (video_id_for(p, video_dir) for p in paths) if not captionable(vid)]
    if bad:
        shown = ", ".join(repr(v) for v in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        log.warning("%d video id(s) contain '#' or whitespace, which caption files cannot name (caption ids are "
                    "'<video id>#<n>'): %s; rename those files to train or benchmark on them", len(bad), shown)


def _duplicate_ids(paths: Sequence[str], video_dir: str) -> dict[str, str]:
    """Paths whose video id another file already has (``a.mp4`` and ``a.avi``): path -> reason."""
    seen: dict[str, str] = {}
    rejected = {}
    for path in paths:
        vid = video_id_for(path, video_dir)
        if vid in seen:
            rejected[path] = f"video id {vid!r} is already taken by {seen[vid]}"
        else:
            seen[vid] = path
    return rejected


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


def read_dead_letters(path: str) -> list[dict]:
    """The records of a dead-letter file (errors.jsonl, or one run's part of it); a line that
    is not such a record is an error naming the file and line."""
    with FileSystems.open(path) as handle:
        lines = handle.read().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)  # UnicodeDecodeError is a ValueError too
        except ValueError:
            record = None
        if not isinstance(record, dict) or any(key not in record for key in DEAD_LETTER_KEYS):
            raise VidfuseError(f"{path} line {number}: not an extraction error record")
        records.append(record)
    return records


def _merge_dead_letters(
    out_dir: str, prefix: str, present: dict[str, set[str]], rejected: dict[str, str]
) -> tuple[str, int]:
    """Fold this run's dead letters into errors.jsonl; drop entries that have since succeeded.

    A path ``rejected`` for a duplicate id stays listed although its id is present: the row
    holding that id came from the other file.
    """
    errors_path = posixpath.join(out_dir, ERRORS_FILE)
    entries: dict[tuple[str, str], dict] = {}
    if FileSystems.exists(errors_path):
        for record in read_dead_letters(errors_path):
            entries[(record["path"], record["extractor"])] = record
    parts = [m.path for m in FileSystems.match([prefix + "*"])[0].metadata_list]
    new_failures = set()
    for part in parts:
        for record in read_dead_letters(part):
            entries[(record["path"], record["extractor"])] = record
            new_failures.add(record["path"])
    entries = {
        key: rec
        for key, rec in entries.items()
        if rec["path"] in rejected or rec["video_id"] not in present.get(rec["extractor"], ())
    }
    records = sorted(entries.values(), key=lambda r: (r["path"], r["extractor"]))
    _write_atomic(errors_path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
    if parts:
        FileSystems.delete(parts)
    return errors_path, len(new_failures)


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


class _ProgressPoller:
    """Shows videos done / total and the rate, read from the complete shards on disk.

    Reading the output (rather than worker callbacks) works the same on every runner.
    """

    def __init__(self, out_dirs: dict[str, str], before: dict[str, int], total: int, enabled: bool):
        self.out_dirs, self.before, self.total, self.enabled = out_dirs, before, total, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        if self.enabled and self.total:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _count(self) -> int:
        from pipeline.shards import existing_ids

        added = [len(existing_ids(d)) - self.before[n] for n, d in self.out_dirs.items()]
        return max(0, min(added))

    def _run(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, desc="extract", unit="video", dynamic_ncols=True) as bar:
            while not self._stop.wait(2.0):
                try:
                    bar.n = self._count()
                    bar.refresh()
                except Exception:  # shards appearing while we read; try again next tick
                    continue
            bar.n = self._count()
            bar.refresh()


def _check_sources(paths, video_dir, rejected, out_dirs, manifests, done):
    """Videos still being written are left out (warned); rows of videos changed since
    their extraction are dropped so that this run extracts them again (``done`` updated).

    Returns (paths to run, changed video ids, fresh video ids). Local folders only: a remote
    listing would cost a metadata call per file here (the workers' MatchFiles has them).
    """
    from pipeline.fingerprints import changed_videos, drop_rows, fingerprint, recorded_sources, still_changing

    if not is_local(video_dir):
        return paths, [], []
    by_id = {video_id_for(p, video_dir): p for p in paths if p not in rejected}
    current = {v: fingerprint(p) for v, p in by_id.items()}
    fresh = still_changing({v: p for v, p in by_id.items() if current[v] is not None}, current)
    if fresh:
        log.warning("%d video(s) still being written (size or time changed while looked at) are left for a "
                    "later run: %s%s", len(fresh), ", ".join(fresh[:5]), " ..." if len(fresh) > 5 else "")
        skip = set(fresh)
        paths = [p for p in paths if p in rejected or video_id_for(p, video_dir) not in skip]
        for v in fresh:
            current.pop(v, None)
    changed: set[str] = set()
    for name, folder in out_dirs.items():
        stale = changed_videos(recorded_sources(folder), {v: fp for v, fp in current.items() if v in done[name]})
        if stale:
            drop_rows(folder, stale, manifests[name])
            done[name] -= set(stale)
            changed.update(stale)
    if changed:
        log.warning("%d video(s) changed on disk since they were extracted: extracting them again: %s%s",
                    len(changed), ", ".join(sorted(changed)[:5]), " ..." if len(changed) > 5 else "")
    return paths, sorted(changed), fresh


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
    from pipeline.shards import existing_ids, list_shards, remove_incomplete_shards, shard_stem
    from pipeline.manifest import write_manifest

    names = list(extractors or config.extractors.keys())
    missing = [n for n in names if n not in config.extractors]
    if missing:
        raise ConfigError(
            f"extractor(s) {missing} have no settings in the config (it defines {sorted(config.extractors)})"
        )
    formats = _check_formats(list(formats or config.output.formats))
    options = beam_options(beam_args)
    if runs_locally(options):  # remote workers have their own devices; local ones are this machine's
        from extractors.base import resolve_device

        resolve_device(device)
    paths = list_videos(video_dir, config.decode.extensions)
    _warn_uncaptionable(paths, video_dir)

    with exclusive_folder(out_dir, "extract job"):
        out_dirs = {n: posixpath.join(out_dir, n) for n in names}
        built = {n: build_extractor(n, config.extractors[n], device="cpu") for n in names}
        manifests = {n: _prepare_manifest(n, built[n], out_dirs[n], formats) for n in names}
        for n in names:  # what a killed run left: temp files, shards missing a format twin
            remove_incomplete_shards(out_dirs[n], formats)
        done = {n: existing_ids(out_dirs[n]) for n in names}
        rejected = _duplicate_ids(paths, video_dir)
        paths, changed, fresh = _check_sources(paths, video_dir, rejected, out_dirs, manifests, done)
        ids = [video_id_for(p, video_dir) for p in paths if p not in rejected]
        pending = [v for v in ids if any(v not in done[n] for n in names)]
        log.info("%d videos found, %d already extracted, %d to do", len(paths), len(ids) - len(pending), len(pending))

        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        dead_dir = posixpath.join(out_dir, DEAD_LETTERS_DIR)
        _remove_tree(dead_dir)  # unfinished files of a killed run; its videos are retried
        _remove_temp_files(out_dir)
        dead_prefix = posixpath.join(dead_dir, f"run-{run_id}")
        pipeline = beam.Pipeline(runner=pipeline_runner(options), options=options)
        _ = pipeline | "ExtractFeatures" >> ExtractFeatures(
            video_dir,
            out_dirs,
            {n: config_to_dict(built[n].config) for n in names},
            {n: built[n].config.sampling for n in names},
            {n: manifests[n].hash() for n in names},
            {n: done[n] | set(fresh) for n in names},  # the pipeline lists videos itself: skip those left for later
            rejected=rejected,
            extensions=config.decode.extensions,
            backend=config.decode.backend,
            fallback=config.decode.fallback,
            formats=formats,
            shard_size=config.output.shard_size,
            batch_videos=batch_videos,
            device=device,
            dead_letter_prefix=dead_prefix,
            torch_threads=worker_torch_threads(options),
        )
        del built  # the launcher's copies were for checking weights and describing; workers load their own
        before = {n: len(done[n]) for n in names}
        with _ProgressPoller(out_dirs, before, len(pending), progress):
            result = pipeline.run()
            result.wait_until_finish()

        present = {n: existing_ids(out_dirs[n]) for n in names}
        for n in names:
            manifests[n].shards = sorted(
                {shard_stem(p) for f in formats for p in list_shards(out_dirs[n], f)}
            )
            write_manifest(out_dirs[n], manifests[n])
        errors_path, failed = _merge_dead_letters(out_dir, dead_prefix, present, rejected)
        _remove_tree(dead_dir)
        _record_source(out_dir, video_dir)

    complete = set.intersection(*(present[n] for n in names)) if names else set()
    return ExtractSummary(
        total=len(paths) + len(fresh),
        done=len(complete & set(pending)),
        skipped=len(ids) - len(pending),
        failed=failed,
        rows_added={n: len(present[n]) - before[n] for n in names},
        errors_path=errors_path,
        reextracted=len(changed),
        still_written=len(fresh),
    )
