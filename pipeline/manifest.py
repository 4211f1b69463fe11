"""``manifest.json``: what produced a feature folder, so runs and readers never mix configs.

Every shard stores :meth:`Manifest.hash` (the hash of :meth:`Manifest.identity`), so a reader can
refuse a shard written under another config, and a resumed extraction can refuse to append to a
folder extracted with different settings (:func:`check_compatible`). Shard lists and library
versions are deliberately outside the identity: they change between runs without changing what a
row means.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from importlib import metadata
from typing import Any

from pipeline.fs import UNCOMPRESSED, FileSystems

from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

# A leading "_": Arrow's dataset reader (pd.read_parquet(folder), pq.read_table) skips the file.
MANIFEST_NAME = "_manifest.json"
LEGACY_MANIFEST_NAME = "manifest.json"  # folders written before; read, and replaced on the next write
KINDS = ("video", "text")
LEVELS = ("frame", "clip", "video", "sentence")

# Distribution names whose versions are recorded (import names differ: open_clip, apache_beam...).
TRACKED_DISTRIBUTIONS = (
    "vidfuse",
    "numpy",
    "torch",
    "torchvision",
    "open_clip_torch",
    "pytorchvideo",
    "decord",
    "av",
    "torchcodec",
    "apache-beam",
    "pyarrow",
    "h5py",
    "faiss-cpu",
    "faiss-gpu",
)


class ManifestError(VidfuseError):
    """manifest.json is missing a field, is not valid JSON, or is otherwise unreadable."""


class ManifestMismatchError(ManifestError):
    """A folder was extracted with another config than the one now writing or reading it."""


@dataclass
class Manifest:
    name: str  # feature set name, e.g. "clip", "x3d", "text/clip", "text/bow"
    kind: str  # "video" | "text"
    model: str
    weights: str  # "random" | tag | path
    dim: int
    level: str  # "frame" | "clip" | "video" | "sentence"
    sampling: dict
    config: dict  # the extractor's config
    config_hash: str
    versions: dict  # library versions, see library_versions()
    formats: list[str]
    shards: list[str] = field(default_factory=list)  # shard basenames
    extra: dict = field(default_factory=dict)  # e.g. vocabulary path for bow

    def validate(self) -> None:
        """Refuse values no reader could interpret (wrong kind/level, non-positive dim)."""
        if self.kind not in KINDS:
            raise ManifestError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.level not in LEVELS:
            raise ManifestError(f"level must be one of {list(LEVELS)}, got {self.level!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise ManifestError(f"dim must be a positive integer, got {self.dim!r}")
        for key in ("sampling", "config", "versions", "extra"):
            if not isinstance(getattr(self, key), dict):
                raise ManifestError(f"{key} must be a mapping, got {type(getattr(self, key)).__name__}")
        for key in ("formats", "shards"):
            if not isinstance(getattr(self, key), list):
                raise ManifestError(f"{key} must be a list, got {type(getattr(self, key)).__name__}")

    def identity(self) -> dict:
        """Everything two runs into one folder must agree on (all fields but shards/versions/formats).

        ``formats`` is left out because Parquet and HDF5 hold the same rows: adding a format on a
        rerun does not change what a row means.
        """
        skip = {"shards", "versions", "formats"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def hash(self) -> str:
        """Short stable hash of :meth:`identity`; written into every shard as ``manifest_hash``."""
        payload = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["manifest_hash"] = self.hash()
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest") -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if _required(f)]
        missing = [k for k in required if k not in data]
        if missing:
            raise ManifestError(f"{source}: missing field(s) {missing}")
        stored_hash = data.get("manifest_hash")
        manifest = cls(**{k: data[k] for k in names if k in data})
        try:
            manifest.validate()
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
        if stored_hash is not None and stored_hash != manifest.hash():
            # Fields edited after writing: the manifest no longer describes the shards, which
            # carry the recorded hash. Refused here, or every reader would blame the shards.
            raise ManifestError(
                f"{source}: edited after extraction: its fields hash to {manifest.hash()}, but it records "
                f"manifest_hash {stored_hash}, the hash its shards were written under; restore the original "
                "manifest.json (name, dim, model, sampling and config must describe the shards) or re-extract"
            )
        return manifest


def _required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def library_versions() -> dict:
    """Versions of the libraries that shape features (from installed metadata; absent ones skipped)."""
    versions = {"python": sys.version.split()[0]}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def manifest_path(out_dir: str) -> str:
    return FileSystems.join(out_dir, MANIFEST_NAME)


def write_manifest(out_dir: str, manifest: Manifest) -> None:
    """Write ``<out_dir>/_manifest.json`` atomically: a temp file, then a rename over the old one."""
    manifest.validate()
    final = manifest_path(out_dir)
    tmp = FileSystems.join(out_dir, f".tmp-{uuid.uuid4().hex[:12]}-{MANIFEST_NAME}.partial")
    payload = json.dumps(manifest.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
    with FileSystems.create(tmp, compression_type=UNCOMPRESSED) as handle:
        handle.write(payload.encode("utf-8"))
    if FileSystems.exists(final) and FileSystems.get_scheme(final) not in (None, "file"):
        # Object stores do not rename over an existing object.
        FileSystems.delete([final])
    FileSystems.rename([tmp], [final])
    legacy = FileSystems.join(out_dir, LEGACY_MANIFEST_NAME)
    if FileSystems.exists(legacy):  # an older folder: its manifest now has the new name
        FileSystems.delete([legacy])


def read_manifest(out_dir: str) -> Manifest | None:
    """The folder's manifest, or None when it has none; a malformed one is a ManifestError."""
    path = manifest_path(out_dir)
    if not FileSystems.exists(path):
        path = FileSystems.join(out_dir, LEGACY_MANIFEST_NAME)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=UNCOMPRESSED) as handle:
            data = json.loads(handle.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    return Manifest.from_dict(data, source=path)


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            where = f"{prefix}.{key}"
            if key not in old:
                out.append(f"{where}: absent -> {new[key]!r}")
            elif key not in new:
                out.append(f"{where}: {old[key]!r} -> absent")
            else:
                out.extend(_diff(old[key], new[key], where))
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def manifest_differences(existing: Manifest, new: Manifest) -> list[str]:
    """Each identity field (nested keys spelled out) that differs, as ``field: old -> new``."""
    old_id, new_id = existing.identity(), new.identity()
    out: list[str] = []
    for key in old_id:
        out.extend(_diff(old_id[key], new_id[key], key))
    return out


def check_compatible(existing: Manifest, new: Manifest) -> None:
    """Refuse to resume into a folder whose manifest has another identity, naming each difference."""
    diffs = manifest_differences(existing, new)
    if diffs:
        raise ManifestMismatchError(
            f"feature set {existing.name!r} was extracted with another configuration "
            f"(old -> new): " + "; ".join(diffs)
            + ". Use a new output folder, or delete the old one to re-extract."
        )
