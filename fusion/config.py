"""Config schemas of the fusion heads (OmegaConf structured: unknown keys are refused).

``HeadConfig.type`` picks the head; only the section of that name is read. Which features
feed which side is configuration: lists of feature names as they appear in the data
(``"clip"``, ``"x3d"``; ``"clip@frames"`` = the per-frame matrix of ``clip``, pooled by the
frame-level LAFF attention, which has no projection; text ``"gru"`` = the learned GRU over
token ids).

``laff`` and ``laff_ml`` share one schema (DESIGN 5): ``laff`` is the released LAFF (h heads
over one common space, h = 1 the plain block); ``laff_ml`` is multi-level LAFF, so its video
side must read at least one ``<name>@frames`` feature (the frame level), normally as a
pass-through feature, with ``batch_norm`` after tanh/dropout of every projected feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

HEAD_TYPES = ("laff", "laff_ml", "dllfa", "meanp", "concat", "single")


@dataclass
class GruConfig:
    """Learned text feature ``gru``: word embedding -> 1-layer GRU -> mean over steps.

    Its vocabulary is its own (stopwords kept, ``<start>``/``<end>``/``<unk>``): extractors.text_gru.
    """

    word_dim: int = 500
    hidden: int = 1024
    bidirectional: bool = False  # output dim doubles when True
    # word vectors (word2vec .bin/.txt or BigFile folder) that initialise the word embeddings,
    # as released (word_dim must be their dim); null: uniform random
    word2vec: Optional[str] = None


@dataclass
class LossConfig:
    """Hardest-negative triplet ranking (VSE++), cosine scores."""

    margin: float = 0.2
    direction: str = "t2v"  # t2v (as published) | both
    hardest: bool = True  # False: sum over all violating negatives (VSE0)


@dataclass
class LaffConfig:
    """LAFF / LAFF-ml: per-feature projection, one attention scorer and softmax per head."""

    video_features: List[str] = field(default_factory=lambda: ["clip", "x3d", "ircsn"])
    text_features: List[str] = field(default_factory=lambda: ["clip", "bow", "w2v", "gru"])
    dim: int = 512  # common space width (all heads together)
    heads: int = 1
    dropout: float = 0.2  # after tanh on projected features; never on pass-through ones
    # BatchNorm1d(dim) after tanh/dropout on every projected feature (LAFF-ml as released)
    batch_norm: bool = False
    # features already in the common space: tiled to `dim` (their dim must be `dim` or
    # `dim / heads`) and BatchNorm1d(dim), so each head has its own scale and shift
    video_passthrough: List[str] = field(default_factory=list)
    text_passthrough: List[str] = field(default_factory=list)
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
    laff_ml: LaffConfig = field(default_factory=lambda: LaffConfig(
        video_features=["clip@frames", "x3d", "ircsn"], dim=4096, heads=8, batch_norm=True,
        video_passthrough=["clip@frames"], text_passthrough=["clip"]))
    dllfa: DllfaConfig = field(default_factory=DllfaConfig)
    meanp: MeanPConfig = field(default_factory=MeanPConfig)
    concat: ConcatConfig = field(default_factory=ConcatConfig)
    single: SingleConfig = field(default_factory=SingleConfig)
    gru: GruConfig = field(default_factory=GruConfig)


# --- value checks: what the schemas' types cannot say (sizes, fractions, names) -------------------
# Run by the commands through ``load_config(..., check=)`` before any file is read or written,
# so a zero width or an unknown loss direction is refused by its dotted key, not by torch mid-run.

LOSS_DIRECTIONS = ("t2v", "v2t", "both")


def _fail(key: str, reason: str, value) -> None:
    from vidfuse.errors import ConfigError

    raise ConfigError(f"{key} {reason}, got {value!r}")


def _at_least(value, minimum, key: str) -> None:
    if value < minimum:
        _fail(key, f"must be >= {minimum}", value)


def _positive(value, key: str) -> None:
    if not value > 0:
        _fail(key, "must be > 0", value)


def _dropout(value, key: str) -> None:
    if not 0.0 <= value < 1.0:
        _fail(key, "must be in [0, 1)", value)


def _feature_names(names, key: str) -> None:
    if not names:
        _fail(key, "is empty: that side would fuse no feature", list(names))
    for name in names:
        if not str(name).strip():
            _fail(key, "holds an empty feature name", list(names))
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        _fail(key, f"names {repeated} more than once", list(names))


def check_loss_config(cfg: LossConfig, prefix: str) -> None:
    _at_least(cfg.margin, 0.0, f"{prefix}.margin")
    if cfg.direction not in LOSS_DIRECTIONS:
        _fail(f"{prefix}.direction", f"must be one of {list(LOSS_DIRECTIONS)}", cfg.direction)


def check_head_config(cfg: HeadConfig, prefix: str = "head") -> None:
    """The section ``cfg.type`` picks (the others are not read), and the GRU when it is used."""
    if cfg.type not in HEAD_TYPES:
        _fail(f"{prefix}.type", f"must be one of {list(HEAD_TYPES)}", cfg.type)
    at = f"{prefix}.{cfg.type}"
    section = getattr(cfg, cfg.type)
    texts: list = []
    if cfg.type in ("laff", "laff_ml", "concat"):
        _feature_names(section.video_features, f"{at}.video_features")
        _feature_names(section.text_features, f"{at}.text_features")
        texts = list(section.text_features)
        _at_least(section.dim, 1, f"{at}.dim")
        _dropout(section.dropout, f"{at}.dropout")
        check_loss_config(section.loss, f"{at}.loss")
        if cfg.type != "concat":
            _at_least(section.heads, 1, f"{at}.heads")
            if section.dim % section.heads:
                _fail(f"{at}.dim", f"must be a multiple of {at}.heads={section.heads}", section.dim)
        from fusion.data import FRAMES_SUFFIX

        if cfg.type == "laff_ml" and not any(str(n).endswith(FRAMES_SUFFIX) for n in section.video_features):
            _fail(f"{at}.video_features", "has no '<name>@frames' feature: LAFF-ml is multi-level LAFF (a frame-level "
                  "attention under the video level); for multi-head LAFF use head.type=laff with head.laff.heads > 1",
                  list(section.video_features))
    elif cfg.type == "single":
        _feature_names([section.video_feature], f"{at}.video_feature")
        _feature_names([section.text_feature], f"{at}.text_feature")
        texts = [section.text_feature]
        if section.project:
            _at_least(section.dim, 1, f"{at}.dim")
        _dropout(section.dropout, f"{at}.dropout")
        check_loss_config(section.loss, f"{at}.loss")
    elif cfg.type == "dllfa":
        _feature_names([section.frame_feature], f"{at}.frame_feature")
        _feature_names([section.text_feature], f"{at}.text_feature")
        for key in ("layers", "attn_heads", "ff_mult", "max_frames", "pair_chunk"):
            _at_least(getattr(section, key), 1, f"{at}.{key}")
        _dropout(section.dropout, f"{at}.dropout")
        _positive(section.logit_scale_max, f"{at}.logit_scale_max")
        _at_least(section.aux_weight, 0.0, f"{at}.aux_weight")
    elif cfg.type == "meanp":
        _feature_names([section.frame_feature], f"{at}.frame_feature")
        _feature_names([section.text_feature], f"{at}.text_feature")
        _positive(section.temperature_scale, f"{at}.temperature_scale")
    if "gru" in texts:
        _at_least(cfg.gru.word_dim, 1, f"{prefix}.gru.word_dim")
        _at_least(cfg.gru.hidden, 1, f"{prefix}.gru.hidden")


def check_optim_values(cfg, prefix: str = "optim") -> None:
    """Numbers of an optimiser config after ``fusion.optim.resolve_optim`` filled it (names checked there)."""
    _positive(cfg.lr, f"{prefix}.lr")
    _at_least(cfg.weight_decay, 0.0, f"{prefix}.weight_decay")
    _at_least(cfg.grad_clip, 0.0, f"{prefix}.grad_clip")
    for key in ("epoch_decay", "plateau_factor"):  # lr multipliers
        value = getattr(cfg, key)
        if not 0.0 < value <= 1.0:
            _fail(f"{prefix}.{key}", "must be in (0, 1]", value)
    _at_least(cfg.plateau_patience, 0, f"{prefix}.plateau_patience")
    if not 0.0 <= cfg.warmup < 1.0:
        _fail(f"{prefix}.warmup", "must be in [0, 1) (a fraction of all steps)", cfg.warmup)


def check_run_settings(cfg) -> None:
    """``early_stop``, ``num_workers`` and ``device`` of a training config (fusion or clip-ft)."""
    from extractors.base import resolve_device

    _at_least(cfg.early_stop, 0, "early_stop")
    _at_least(cfg.num_workers, 0, "num_workers")
    resolve_device(cfg.device)  # ConfigError "device 'tpu' is not a torch device (...)"


def check_train_config(cfg) -> None:
    """A ``TrainConfig`` after ``fusion.trainer.resolve_config`` (which checks val_metric, sizes, optimiser names)."""
    check_head_config(cfg.head)
    check_optim_values(cfg.optim)
    check_run_settings(cfg)
