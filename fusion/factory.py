"""``build_head``: a fusion head from its declarative config and the data's feature dims.

``video_dims`` / ``text_dims`` come from :func:`fusion.data.feature_dims` (frame matrices
appear as ``"<name>@frames"``); ``vocab_size`` is needed only when the text side uses the
learned ``gru`` feature.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from fusion.config import HEAD_TYPES, HeadConfig, check_head_config
from fusion.heads import RetrievalHead
from vidfuse.errors import ConfigError


def build_head(cfg: HeadConfig, video_dims: dict[str, int], text_dims: dict[str, int],
               vocab_size: Optional[int] = None, word_embeddings: Optional[np.ndarray] = None) -> RetrievalHead:
    """The head named by ``cfg.type``, configured by ``cfg.<type>`` (whose values are checked first)."""
    check_head_config(cfg)
    if cfg.type in ("laff", "laff_ml"):
        from fusion.laff_ml import LaffHead

        return LaffHead(getattr(cfg, cfg.type), video_dims, text_dims, vocab_size, cfg.gru, word_embeddings)
    if cfg.type == "dllfa":
        from fusion.dllfa import DllfaHead

        return DllfaHead(cfg.dllfa, video_dims, text_dims)
    if cfg.type == "meanp":
        from fusion.baselines import MeanPHead

        return MeanPHead(cfg.meanp, video_dims, text_dims)
    if cfg.type == "concat":
        from fusion.baselines import ConcatHead

        return ConcatHead(cfg.concat, video_dims, text_dims, vocab_size, cfg.gru, word_embeddings)
    if cfg.type == "single":
        from fusion.baselines import SingleFeatureHead

        return SingleFeatureHead(cfg.single, video_dims, text_dims, vocab_size, cfg.gru, word_embeddings)
    raise ConfigError(f"head.type {cfg.type!r} is unknown (choose from {', '.join(HEAD_TYPES)})")


def uses_tokens(cfg: HeadConfig) -> bool:
    """Whether the head reads token ids (text feature ``gru``), hence needs a vocabulary."""
    section = getattr(cfg, cfg.type, None)
    names = list(getattr(section, "text_features", []) or []) + [getattr(section, "text_feature", "")]
    return "gru" in names
