"""irCSN clip features from pytorchvideo's ``create_csn``.

irCSN = interaction-reduced channel-separated network (Tran et al., ICCV 2019): a ResNet
bottleneck whose 3x3x3 conv is depthwise (``stage_conv_b_width_per_group=1``, which is what
``create_csn`` builds). irCSN-152: stage depths (3, 8, 36, 3), 3x7x7 stem + 1x3x3 max-pool,
2048-d res5. Feature of a clip = global average of res5 (the classifier's input; for 32x224
input this equals the published (4, 7, 7) average pool). The video vector is the mean over
clips, not normalised.

Weights: the IG-65M irCSN-152 weights are NOT in pytorchvideo's model zoo and vidfuse cannot
download them, so ``pretrained`` must be a local checkpoint already in ``create_csn``'s key
layout (a state_dict, plain or under ``model_state``/``state_dict``), or ``null`` for random
weights. Checkpoints in another layout (VMZ, mmaction2) need their keys renamed: set
``IrCSNExtractor.state_dict_converter`` to a function ``state_dict -> state_dict`` before
building; loading is strict, and a mismatch names the keys that differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Optional

import torch
import torch.nn as nn
from pytorchvideo.models.csn import create_csn

from extractors.base import ClipLevelExtractor
from extractors.preprocess import FrameTransform
from extractors.registry import register_extractor
from extractors.weights import (
    WeightsNotFoundError,
    load_state_dict_strict,
    local_checkpoint,
    read_state_dict,
)
from pipeline.sampling import SamplingConfig
from vidfuse.errors import ConfigError

IG65M_MEAN = (0.43216, 0.394666, 0.37645)  # VMZ / mmaction2 irCSN (IG-65M) normalisation
IG65M_STD = (0.22803, 0.22145, 0.216989)
IG65M_TAG = "ig65m"
CSN_DEPTHS = (50, 101, 152)


@dataclass
class IrCSNConfig:
    depth: int = 152  # 50 | 101 | 152 (stage depths of create_csn)
    stem_dim: int = 64  # stem width; features have 32 * stem_dim dims (64 -> 2048)
    pretrained: Optional[str] = IG65M_TAG  # a local checkpoint path (required for real weights) | null
    crop_size: int = 224
    resize: int = 256  # shorter side before the centre crop
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(kind="clips", clip_len=32, stride=2, clips=10)
    )
    batch_size: int = 4  # clips per forward pass


def build_ircsn(depth: int, stem_dim: int) -> nn.Module:
    """pytorchvideo's CSN as irCSN (depthwise conv_b), with a size-agnostic global average head."""
    return create_csn(
        model_depth=depth,
        stem_dim_out=stem_dim,
        stem_pool=nn.MaxPool3d,
        stage_conv_b_width_per_group=1,  # depthwise 3x3x3: the "interaction-reduced" bottleneck
        head_pool=nn.AdaptiveAvgPool3d,
        head_output_size=(1, 1, 1),
    )


@register_extractor("ircsn")
class IrCSNExtractor(ClipLevelExtractor):
    Config = IrCSNConfig
    # Optional key renaming for checkpoints in another layout (see the module docstring).
    state_dict_converter: ClassVar[Optional[Callable[[dict], dict]]] = None

    def __init__(self, config: IrCSNConfig, device: str | torch.device = "auto"):
        super().__init__(config, device)
        self.transform = type(self).frame_transform_for(config)
        self.model = build_ircsn(config.depth, config.stem_dim)
        self.dim = type(self).dim_for(config)
        self.weights = self._load_weights()
        self._finish_model()

    @classmethod
    def check_config(cls, config: IrCSNConfig) -> None:
        super().check_config(config)
        if config.depth not in CSN_DEPTHS:
            raise ConfigError(f"extractor 'ircsn': depth {config.depth} not one of {list(CSN_DEPTHS)} (key 'depth')")
        if config.stem_dim < 1:
            raise ConfigError(f"extractor 'ircsn': stem_dim must be >= 1, got {config.stem_dim} (key 'stem_dim')")
        if config.resize < config.crop_size or config.crop_size < 32:
            raise ConfigError(
                f"extractor 'ircsn': need 32 <= crop_size <= resize, got crop_size {config.crop_size}, "
                f"resize {config.resize} (key 'crop_size')"
            )

    @classmethod
    def frame_transform_for(cls, config: IrCSNConfig) -> FrameTransform:
        return FrameTransform(resize=config.resize, crop=config.crop_size, mean=IG65M_MEAN, std=IG65M_STD)

    @classmethod
    def dim_for(cls, config: IrCSNConfig) -> int:
        return 32 * config.stem_dim

    @classmethod
    def model_name_for(cls, config: IrCSNConfig) -> str:
        width = "" if config.stem_dim == 64 else f"_w{config.stem_dim}"
        return f"ircsn_{config.depth}{width}"

    @classmethod
    def weights_label(cls, config: IrCSNConfig) -> str:
        pretrained = config.pretrained
        if pretrained is None:
            return "random"
        path = local_checkpoint(pretrained, extractor="ircsn")
        if path is None:
            raise WeightsNotFoundError(
                f"ircsn: {cls.model_name_for(config)} weights {pretrained!r} cannot be fetched: the IG-65M irCSN "
                "weights are not in pytorchvideo's model zoo. Supply a checkpoint in pytorchvideo create_csn layout "
                "(e.g. converted from the VMZ or mmaction2 release) with "
                "extractors.ircsn.pretrained: /path/to/ircsn_152_ig65m.pth (null = random weights)"
            )
        return str(path)

    def _load_weights(self) -> str:
        label = type(self).weights_label(self.config)
        if label == "random":
            return label
        load_state_dict_strict(
            self.model,
            read_state_dict(Path(label), extractor="ircsn"),
            extractor="ircsn",
            source=label,
            convert=type(self).state_dict_converter,
        )
        return label

    def model_name(self) -> str:
        return type(self).model_name_for(self.config)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch
        for block in self.model.blocks[:-1]:
            x = block(x)
        return x.mean(dim=(2, 3, 4))  # global average of res5 = the classifier's input
