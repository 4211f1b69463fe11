"""Schema of an extraction config (``configs/extract/*.yaml``).

Each entry under ``extractors`` is validated by the extractor's own config dataclass when
the extractor is built (see ``extractors.registry.build_extractor``), so a typo in any
extractor's settings is refused with the key named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

VIDEO_EXTENSIONS = [".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".gif"]


@dataclass
class DecodeConfig:
    backend: str = "decord"  # decord | pyav | torchcodec
    extensions: List[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))


@dataclass
class OutputConfig:
    formats: List[str] = field(default_factory=lambda: ["parquet"])  # parquet, hdf5
    shard_size: int = 64  # videos per shard (a shard is written when full or at bundle end)


@dataclass
class TextConfig:
    encoders: List[str] = field(default_factory=lambda: ["clip", "bow"])  # clip, bow, w2v
    bow_min_count: int = 5
    w2v_path: Optional[str] = None  # word2vec file (binary .bin or text) or BigFile folder
    batch_size: int = 256


@dataclass
class ExtractConfig:
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    extractors: Dict[str, Any] = field(default_factory=dict)  # name -> that extractor's config
    text: TextConfig = field(default_factory=TextConfig)
