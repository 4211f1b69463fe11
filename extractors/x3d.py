"""X3D clip features from pytorchvideo's ``create_x3d`` with the published X3D-XS/S/M/L settings.

Feature of a clip = the head's last hidden layer, before the classifier: stages -> ProjectedPool
(pre_conv, BN, ReLU, AvgPool with the published kernel, post_conv, ReLU) -> global average
over the remaining (t, h, w) positions: ``head_dim_out`` dims (2048 for the real models). The
video vector is the mean over its clips, not normalised.

Weights: the Kinetics-400 checkpoints of pytorchvideo's model zoo (``pretrained: kinetics400``;
cached as ``torch.hub.get_dir()/checkpoints/X3D_L.pyth`` etc.), a local checkpoint path
(a state_dict, plain or under ``model_state``), or ``null`` for random weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

import torch
from pytorchvideo.models.hub.x3d import checkpoint_paths as X3D_ZOO_URLS
from pytorchvideo.models.x3d import create_x3d

from extractors.base import ClipLevelExtractor
from extractors.preprocess import FrameTransform
from extractors.registry import register_extractor
from extractors.weights import (
    WeightsNotFoundError,
    load_state_dict_strict,
    local_checkpoint,
    read_state_dict,
    resolve_url_checkpoint,
)
from pipeline.sampling import SamplingConfig
from vidfuse.errors import ConfigError

log = logging.getLogger(__name__)

KINETICS_MEAN = (0.45, 0.45, 0.45)  # pytorchvideo / SlowFast X3D normalisation
KINETICS_STD = (0.225, 0.225, 0.225)
ZOO_TAG = "kinetics400"


@dataclass(frozen=True)
class X3DVariant:
    """Architecture (pytorchvideo.models.hub.x3d) and single-view test sampling (SlowFast configs)."""

    clip_len: int  # input_clip_length: frames per clip
    crop: int  # input_crop_size (1-crop test: shorter side -> crop, centre crop)
    stride: int  # frame step inside a clip (DATA.SAMPLING_RATE)
    depth_factor: float
    width_factor: float = 2.0
    stem_dim_in: int = 12
    head_dim_out: int = 2048
    zoo: Optional[str] = None  # key of pytorchvideo's checkpoint_paths


X3D_VARIANTS: dict[str, X3DVariant] = {
    "xs": X3DVariant(clip_len=4, crop=160, stride=12, depth_factor=2.2, zoo="x3d_xs"),
    "s": X3DVariant(clip_len=13, crop=160, stride=6, depth_factor=2.2, zoo="x3d_s"),
    "m": X3DVariant(clip_len=16, crop=224, stride=5, depth_factor=2.2, zoo="x3d_m"),
    "l": X3DVariant(clip_len=16, crop=312, stride=5, depth_factor=5.0, zoo="x3d_l"),
    # Fast random-init stand-in for tests and the demo: same code path, tiny widths.
    "tiny": X3DVariant(clip_len=4, crop=64, stride=2, depth_factor=1.0, width_factor=1.0, stem_dim_in=8, head_dim_out=128),
}


@dataclass
class X3DConfig:
    variant: str = "l"  # xs | s | m | l | tiny
    pretrained: Optional[str] = ZOO_TAG  # kinetics400 (model zoo) | checkpoint path | null (random)
    crop_size: Optional[int] = None  # null: the variant's crop (xs/s 160, m 224, l 312)
    resize: Optional[int] = None  # shorter side before the centre crop; null: = crop_size
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(kind="clips", clip_len=16, stride=5, clips=10)
    )
    batch_size: int = 8  # clips per forward pass


def build_x3d(variant: X3DVariant) -> torch.nn.Module:
    """The pytorchvideo X3D network for ``variant`` (classifier included, so zoo weights load)."""
    return create_x3d(
        input_clip_length=variant.clip_len,
        input_crop_size=variant.crop,
        depth_factor=variant.depth_factor,
        width_factor=variant.width_factor,
        stem_dim_in=variant.stem_dim_in,
        head_dim_out=variant.head_dim_out,
    )


@register_extractor("x3d")
class X3DExtractor(ClipLevelExtractor):
    Config = X3DConfig

    def __init__(self, config: X3DConfig, device: str | torch.device = "auto"):
        super().__init__(config, device)
        self.variant = X3D_VARIANTS[config.variant]
        self.transform = type(self).frame_transform_for(config)
        self.model = build_x3d(self.variant)
        self.weights = self._load_weights()
        self.dim = self.variant.head_dim_out
        self._finish_model()

    @classmethod
    def check_config(cls, config: X3DConfig) -> None:
        super().check_config(config)
        if config.variant not in X3D_VARIANTS:
            raise ConfigError(
                f"extractor 'x3d': unknown variant {config.variant!r} (key 'variant'); one of {sorted(X3D_VARIANTS)}"
            )
        variant = X3D_VARIANTS[config.variant]
        crop = config.crop_size or variant.crop
        resize = config.resize or crop
        if crop < variant.crop:
            raise ConfigError(
                f"extractor 'x3d': crop_size {crop} is smaller than X3D-{config.variant}'s pooling window "
                f"({variant.crop}) (key 'crop_size')"
            )
        if resize < crop:
            raise ConfigError(f"extractor 'x3d': resize {resize} < crop_size {crop} (key 'resize')")
        if config.sampling.clip_len < variant.clip_len:
            raise ConfigError(
                f"extractor 'x3d': sampling.clip_len {config.sampling.clip_len} is shorter than "
                f"X3D-{config.variant}'s temporal window ({variant.clip_len}) (key 'sampling.clip_len')"
            )

    @classmethod
    def frame_transform_for(cls, config: X3DConfig) -> FrameTransform:
        crop = config.crop_size or X3D_VARIANTS[config.variant].crop
        return FrameTransform(resize=config.resize or crop, crop=crop, mean=KINETICS_MEAN, std=KINETICS_STD)

    @classmethod
    def model_name_for(cls, config: X3DConfig) -> str:
        return f"x3d_{config.variant}"

    @classmethod
    def dim_for(cls, config: X3DConfig) -> int:
        return X3D_VARIANTS[config.variant].head_dim_out

    @classmethod
    def weights_label(cls, config: X3DConfig) -> str:
        pretrained = config.pretrained
        if pretrained is None:
            return "random"
        path = local_checkpoint(pretrained, extractor="x3d")
        if path is not None:
            return str(path)
        if pretrained != ZOO_TAG:
            raise WeightsNotFoundError(
                f"x3d: pretrained {pretrained!r} is neither a checkpoint file nor the model-zoo tag "
                f"{ZOO_TAG!r} (key extractors.x3d.pretrained; null = random weights)"
            )
        if X3D_VARIANTS[config.variant].zoo is None:
            raise WeightsNotFoundError(
                f"x3d: variant {config.variant!r} has no model-zoo weights; use pretrained: null "
                "or a checkpoint path"
            )
        return pretrained

    def _load_weights(self) -> str:
        label = type(self).weights_label(self.config)
        if label == "random":
            return label
        path = local_checkpoint(self.config.pretrained, extractor="x3d")
        if path is None:
            path = resolve_url_checkpoint(
                X3D_ZOO_URLS[self.variant.zoo], extractor="x3d", tag=label, model=self.model_name()
            )
            s = self.config.sampling
            if (s.clip_len, s.stride) != (self.variant.clip_len, self.variant.stride):
                log.warning(
                    "x3d: %s was trained on %dx%d clips; sampling is %dx%d",
                    self.model_name(), self.variant.clip_len, self.variant.stride, s.clip_len, s.stride,
                )
        load_state_dict_strict(self.model, read_state_dict(path, extractor="x3d"), extractor="x3d", source=str(path))
        return label

    def model_name(self) -> str:
        return type(self).model_name_for(self.config)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch
        for block in self.model.blocks[:-1]:
            x = block(x)
        x = self.model.blocks[-1].pool(x)  # ProjectedPool: [B, head_dim_out, t, h, w] after ReLU
        return x.mean(dim=(2, 3, 4))
