"""Config schemas of the fusion heads (OmegaConf structured: unknown keys are refused).

``HeadConfig.type`` picks the head; only the section of that name is read. Which features
feed which side is configuration: lists of feature names as they appear in the data
(``"clip"``, ``"x3d"``; ``"clip@frames"`` = the per-frame matrix of ``clip``, pooled by a
frame-level LAFF block; text ``"gru"`` = the learned GRU over token ids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List

HEAD_TYPES = ("laff", "laff_ml", "dllfa", "meanp", "concat", "single")


@dataclass
class GruConfig:
    """Learned text feature ``gru``: word embedding -> 1-layer GRU -> mean over steps."""

    word_dim: int = 500
    hidden: int = 1024
    bidirectional: bool = False  # output dim doubles when True


@dataclass
class LossConfig:
    """Hardest-negative triplet ranking (VSE++), cosine scores."""

    margin: float = 0.2
    direction: str = "t2v"  # t2v (as published) | both
    hardest: bool = True  # False: sum over all violating negatives (VSE0)


@dataclass
class FramePoolConfig:
    """LAFF block over the T frames of a ``<name>@frames`` feature (frame-level LAFF)."""

    dim: int = 0  # width of the pooled feature; 0 = the frame feature's own dim
    dropout: float = 0.2


@dataclass
class LaffConfig:
    """LAFF / LAFF-ml: per-feature projection, shared attention scorer per head."""

    video_features: List[str] = field(default_factory=lambda: ["clip", "x3d", "ircsn"])
    text_features: List[str] = field(default_factory=lambda: ["clip", "bow", "w2v", "gru"])
    dim: int = 512  # common space width (all heads together)
    heads: int = 1
    dropout: float = 0.2
    # features already in the common space: BatchNorm instead of tanh(W f + b);
    # their dim must equal `dim` or `dim / heads` (then the same vector feeds every head)
    video_passthrough: List[str] = field(default_factory=list)
    text_passthrough: List[str] = field(default_factory=list)
    frame_pool: FramePoolConfig = field(default_factory=FramePoolConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class DllfaConfig:
    """Dual-level language-frames attention over per-frame CLIP features (DESIGN 5)."""

    frame_feature: str = "clip"  # reads "<frame_feature>@frames"
    text_feature: str = "clip"  # CLIP sentence embedding t
    layers: int = 4
    attn_heads: int = 8
    ff_mult: int = 4
    max_frames: int = 64  # length of the learned positional embedding
    dropout: float = 0.1
    theta_init: float = 0.0  # lambda = sigmoid(theta)
    logit_scale_init: float = math.log(100.0)
    logit_scale_max: float = 100.0
    aux_weight: float = 0.5  # weight of the InfoNCE terms on s_temp and on s_rel
    pair_chunk: int = 4096  # text x video pairs per s_rel chunk (memory bound)


@dataclass
class MeanPConfig:
    """CLIP4Clip meanP on frozen features: parameter-free."""

    frame_feature: str = "clip"
    text_feature: str = "clip"
    temperature_scale: float = 100.0  # only for the reported InfoNCE loss


@dataclass
class ConcatConfig:
    """W2VV++-style: x_i = tanh(W_i f_i + b_i) per feature, concatenated, Linear -> l2n."""

    video_features: List[str] = field(default_factory=lambda: ["clip", "x3d", "ircsn"])
    text_features: List[str] = field(default_factory=lambda: ["clip", "bow", "w2v", "gru"])
    dim: int = 512
    dropout: float = 0.2
    frame_pool: FramePoolConfig = field(default_factory=FramePoolConfig)
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class SingleConfig:
    """One feature per side; ``project: false`` compares raw vectors (dims must match)."""

    video_feature: str = "clip"
    text_feature: str = "clip"
    project: bool = True
    dim: int = 512
    dropout: float = 0.2
    loss: LossConfig = field(default_factory=LossConfig)


@dataclass
class HeadConfig:
    type: str = "laff"  # laff | laff_ml | dllfa | meanp | concat | single
    laff: LaffConfig = field(default_factory=LaffConfig)
    laff_ml: LaffConfig = field(default_factory=lambda: LaffConfig(dim=4096, heads=8))
    dllfa: DllfaConfig = field(default_factory=DllfaConfig)
    meanp: MeanPConfig = field(default_factory=MeanPConfig)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    single: SingleConfig = field(default_factory=SingleConfig)
    gru: GruConfig = field(default_factory=GruConfig)
