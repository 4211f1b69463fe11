"""Schema of an extraction config (``configs/extract/*.yaml``).

Each entry under ``extractors`` is validated by the extractor's own config dataclass when
the extractor is built (see ``extractors.registry.build_extractor``), so a typo in any
extractor's settings is refused with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from extractors.text_bow import BowConfig
from extractors.text_w2v import W2VConfig
from vidfuse.config import merge_config
from vidfuse.errors import ConfigError, VidfuseError

TEXT_ENCODERS = ("clip", "bow", "w2v")
VIDEO_EXTENSIONS = [".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif"]


@dataclass
class DecodeConfig:
    backend: str = "auto"  # auto (torchcodec where it loads, else pyav; see pipeline.decode_auto) | decord | pyav | torchcodec
    fallback: Optional[str] = "pyav"  # tried when the backend cannot open a file (decord: GIF, AV1)
    device: str = "cpu"  # cpu | cuda: NVDEC decoding (torchcodec, or auto where torchcodec loads)
    extensions: List[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))


@dataclass
class OutputConfig:
    formats: List[str] = field(default_factory=lambda: ["parquet"])  # parquet, hdf5
    shard_size: int = 64  # videos per shard (a shard is written when full or at bundle end)


@dataclass
class InferenceConfig:
    """How the models run on the workers (RunInference, see ``pipeline.model_handlers``)."""

    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; recorded in the manifest when not fp32)
    model_copies: Optional[int] = None  # models per machine shared by its processes (GPU); null: one per process


@dataclass
class TextConfig:
    """Caption-side encoders; ``clip`` uses the video side's ``extractors.clip`` settings."""

    encoders: List[str] = field(default_factory=lambda: ["clip", "bow"])  # TEXT_ENCODERS
    bow: BowConfig = field(default_factory=BowConfig)
    w2v: W2VConfig = field(default_factory=W2VConfig)
    batch_size: int = 256
    shard_size: int = 20000  # captions per shard


@dataclass
class ExtractConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    extractors: Dict[str, Any] = field(default_factory=dict)  # name -> that extractor's config
    text: TextConfig = field(default_factory=TextConfig)


def _at_least(value: int, minimum: int, key: str) -> None:
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def check_decode_config(cfg: DecodeConfig, prefix: str = "decode") -> None:
    """Backends that exist here, and some extension to look for."""
    from pipeline.decode import available_backends

    from pipeline.decode_auto import AUTO

    known = available_backends()
    for key in ("backend", "fallback"):
        name = getattr(cfg, key)
        if key == "backend" and name == AUTO:
            continue
        if (name is not None or key == "backend") and name not in known:
            raise ConfigError(f"{prefix}.{key}: unknown or unavailable decode backend {name!r} (available: {', '.join(known)})")
    if cfg.device not in ("cpu", "cuda"):
        raise ConfigError(f"{prefix}.device: {cfg.device!r} is not cpu or cuda")
    if cfg.device == "cuda" and cfg.backend not in (AUTO, "torchcodec"):
        raise ConfigError(f"{prefix}.device: cuda decodes with torchcodec; set {prefix}.backend to torchcodec or auto")
    if not cfg.extensions:
        raise ConfigError(f"{prefix}.extensions is empty: no file would be taken for a video")


def check_extract_config(cfg: ExtractConfig) -> None:
    """Every value an extraction config can get wrong without reading a video or a caption.

    Run by ``load_config(..., check=)`` in ``extract`` and ``extract-text``, so a bad value is
    refused with its dotted key before an output folder is made. Each ``extractors.<name>``
    entry is checked against that extractor's schema; what needs the model itself (weights,
    sampling kind against the model's level) is checked when the extractor is built.
    """
    from extractors.registry import extractor_class
    from pipeline.shards import normalize_format

    check_decode_config(cfg.decode)
    if not cfg.output.formats:
        raise ConfigError("output.formats is empty; give parquet and/or hdf5")
    for fmt in cfg.output.formats:
        try:
            normalize_format(fmt)
        except VidfuseError as exc:
            raise ConfigError(f"output.formats: {exc}") from None
    _at_least(cfg.output.shard_size, 1, "output.shard_size")
    from pipeline.model_handlers import PRECISIONS

    if cfg.inference.precision not in PRECISIONS:
        raise ConfigError(f"inference.precision: {cfg.inference.precision!r} is not one of {list(PRECISIONS)}")
    if cfg.inference.model_copies is not None:
        _at_least(cfg.inference.model_copies, 1, "inference.model_copies")
    for name, settings in cfg.extractors.items():
        try:
            schema = extractor_class(name).Config
        except ConfigError as exc:
            raise ConfigError(f"extractors.{name}: {exc}") from None
        merge_config(schema, settings, source=f"extractors.{name}", prefix=f"extractors.{name}")
    unknown = [e for e in cfg.text.encoders if e not in TEXT_ENCODERS]
    if unknown:
        raise ConfigError(f"text.encoders: unknown text encoder(s) {unknown}; choose from {list(TEXT_ENCODERS)}")
    _at_least(cfg.text.batch_size, 1, "text.batch_size")
    _at_least(cfg.text.shard_size, 1, "text.shard_size")
    _at_least(cfg.text.bow.min_count, 1, "text.bow.min_count")
