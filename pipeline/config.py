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

VIDEO_EXTENSIONS = [".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif"]


@dataclass
class DecodeConfig:
    backend: str = "decord"  # decord | pyav | torchcodec
    fallback: Optional[str] = "pyav"  # tried when the backend cannot open a file (decord: GIF, AV1)
    extensions: List[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))


@dataclass
class OutputConfig:
    formats: List[str] = field(default_factory=lambda: ["parquet"])  # parquet, hdf5
    shard_size: int = 64  # videos per shard (a shard is written when full or at bundle end)


@dataclass
class TextConfig:
    """Caption-side encoders; ``clip`` uses the video side's ``extractors.clip`` settings."""

    encoders: List[str] = field(default_factory=lambda: ["clip", "bow"])  # clip, bow, w2v
    bow: BowConfig = field(default_factory=BowConfig)
    w2v: W2VConfig = field(default_factory=W2VConfig)
    batch_size: int = 256
    shard_size: int = 20000  # captions per shard


@dataclass
class ExtractConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    extractors: Dict[str, Any] = field(default_factory=dict)  # name -> that extractor's config
    text: TextConfig = field(default_factory=TextConfig)
