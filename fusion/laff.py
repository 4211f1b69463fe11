"""The LAFF block (DESIGN 5): per-feature projection, one attention scorer per head.

x_i = dropout(tanh(W_i f_i + b_i))       projected feature [then BatchNorm1d(d) with batch_norm]
x_i = BatchNorm1d(d)(tile(f_i))         pass-through feature: f_i repeated to width d, no dropout
a   = softmax_i(w_h^T x_i[h] + c_h)     per head h, over the k features
e_h = l2n(sum_i a_i x_i[h])

With h heads the d-wide projection is split into h slices of d/h, each with its own scorer
and softmax; h = 1 is the plain block. A pass-through feature of dim d/h is tiled h times
before its BatchNorm1d(d), so each head has its own scale and shift. Xavier-uniform
weights, zero biases. The scorer's bias c is shared by all k features, so it cancels in the
softmax (its gradient is identically zero): the scorer is a bias-free Linear(d/h -> 1),
which computes exactly the same attention.

:class:`FrameAttention` is the frame level of LAFF-ml: the same attention directly over the
T frame features of one video, with no projection (a = softmax_t(w^T f_t + c), padded
frames masked), whose unit-norm output joins the video level.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.data import FRAMES_SUFFIX, MASK_SUFFIX
from fusion.heads import l2n
from vidfuse.errors import ConfigError


def xavier_(module: nn.Module) -> nn.Module:
    """Xavier-uniform weights, zero biases, for every Linear inside ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class PassThroughNorm(nn.BatchNorm1d):
    """BatchNorm1d whose batch of one uses running stats (so a lone query still encodes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] < 2:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def passthrough_tiles(name: str, d: int, dim: int, heads: int, side: str) -> int:
    """How often a pass-through feature of dim ``d`` is repeated to fill the common space ``dim``."""
    if d == dim:
        return 1
    if heads > 1 and d * heads == dim:
        return heads
    raise ConfigError(
        f"{side} passthrough feature {name!r} has dim {d}, but the common space is {dim}"
        + (f" ({heads} heads of {dim // heads})" if heads > 1 else "")
    )


class FeatureProjector(nn.Module):
    """Maps each named feature into the common space (see the module doc): ``[B, k, dim]``.

    ``proj[name]`` is the feature's Linear, or the BatchNorm1d(dim) of a pass-through feature;
    ``norm[name]`` the BatchNorm1d(dim) after tanh/dropout of a projected one (``batch_norm``).
    """

    def __init__(self, in_dims: dict[str, int], dim: int, heads: int = 1, dropout: float = 0.2,
                 passthrough: Sequence[str] = (), side: str = "video", batch_norm: bool = False):
        super().__init__()
        self.names = list(in_dims)
        self.dim, self.heads = dim, heads
        self.proj = nn.ModuleDict()
        self.norm = nn.ModuleDict()
        self.tile: dict[str, int] = {}
        unknown = sorted(set(passthrough) - set(in_dims))
        if unknown:
            raise ConfigError(f"{side} passthrough feature {unknown[0]!r} is not among the fused features {self.names}")
        for name, d in in_dims.items():
            key = _key(name)
            if name in passthrough:
                self.tile[name] = passthrough_tiles(name, d, dim, heads, side)
                self.proj[key] = PassThroughNorm(dim)
            else:
                self.proj[key] = xavier_(nn.Linear(d, dim))
                if batch_norm:
                    self.norm[key] = PassThroughNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, k, dim]`` in the order of ``self.names``."""
        xs = []
        for name in self.names:
            key = _key(name)
            f = feats[name]
            if name in self.tile:
                x = self.proj[key](f.repeat(1, self.tile[name]) if self.tile[name] > 1 else f)
            else:
                x = self.dropout(torch.tanh(self.proj[key](f)))
                if key in self.norm:
                    x = self.norm[key](x)
            xs.append(x)
        return torch.stack(xs, 1)


def _key(name: str) -> str:
    # ModuleDict keys may not contain "."; "@" is fine but keep keys readable
    return name.replace(".", "_")


class HeadScorer(nn.Module):
    """One bias-free Linear(d/h -> 1) per head, stored as ``weight [h, d/h]``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"common dim {dim} is not divisible by heads={heads}")
        self.heads = heads
        self.weight = nn.Parameter(torch.empty(heads, dim // heads))
        bound = (6.0 / (dim // heads + 1)) ** 0.5  # xavier-uniform of a Linear(d/h, 1)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, k, h, d/h]`` -> logits ``[B, k, h]``."""
        return torch.einsum("bkhd,hd->bkh", x, self.weight)


class LaffBlock(nn.Module):
    """Fuses k named features into h unit vectors; returns them with the attention weights."""

    def __init__(self, in_dims: dict[str, int], dim: int, heads: int = 1, dropout: float = 0.2,
                 passthrough: Sequence[str] = (), side: str = "video", batch_norm: bool = False):
        super().__init__()
        if not in_dims:
            raise ConfigError(f"{side} side fuses no features")
        self.names = list(in_dims)
        self.heads = heads
        self.project = FeatureProjector(in_dims, dim, heads, dropout, passthrough, side, batch_norm)
        self.scorer = HeadScorer(dim, heads)

    def forward(self, feats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``e [B, h, d/h]`` (unit norm per head), ``a [B, h, k]`` (sums to 1 over k)."""
        x = self.project(feats)
        b, k, d = x.shape
        x = x.view(b, k, self.heads, d // self.heads)
        a = torch.softmax(self.scorer(x).float(), dim=1).to(x.dtype)  # [B, k, h]
        e = l2n(torch.einsum("bkh,bkhd->bhd", a, x))
        return e, a.transpose(1, 2)


class FrameAttention(nn.Module):
    """Frame level of LAFF-ml: ``[B, T, D]`` + mask -> ``l2n(sum_t a_t f_t)`` ``[B, D]`` and ``a`` ``[B, T]``.

    No projection: the scorer reads the frame features themselves. Padded frames are zeroed
    before scoring and masked out of the softmax, so padding changes nothing.
    """

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim
        self.scorer = xavier_(nn.Linear(in_dim, 1, bias=False))  # a bias cancels in the softmax

    def forward(self, frames: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        if mask is not None:
            frames = frames.masked_fill(~mask[..., None], 0.0)  # garbage in padding never reaches a sum
        logits = self.scorer(frames).squeeze(-1).float()
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        a = torch.softmax(logits, dim=1).to(frames.dtype)
        return l2n(torch.einsum("bt,btd->bd", a, frames)), a


class VideoInputs(nn.Module):
    """Collects the named video features; ``"<name>@frames"`` is pooled by a :class:`FrameAttention`."""

    def __init__(self, names: Sequence[str], video_dims: dict[str, int]):
        super().__init__()
        self.names = list(names)
        self.dims: dict[str, int] = {}
        self.pools = nn.ModuleDict()
        for name in self.names:
            if name not in video_dims:
                raise ConfigError(f"video feature {name!r} is not in the data (available: {sorted(video_dims)})")
            if name.endswith(FRAMES_SUFFIX):
                pool = FrameAttention(video_dims[name])
                self.pools[_key(name)] = pool
                self.dims[name] = pool.out_dim
            else:
                self.dims[name] = video_dims[name]

    @property
    def batch_keys(self) -> tuple[str, ...]:
        keys = []
        for n in self.names:
            keys += [n, n[: -len(FRAMES_SUFFIX)] + MASK_SUFFIX] if n.endswith(FRAMES_SUFFIX) else [n]
        return tuple(keys)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """-> features by name, frame attention ``[B, T]`` by pooled name."""
        feats, frame_attn = {}, {}
        for name in self.names:
            if _key(name) in self.pools:
                mask = batch[name[: -len(FRAMES_SUFFIX)] + MASK_SUFFIX]
                feats[name], frame_attn[name] = self.pools[_key(name)](batch[name], mask)
            else:
                feats[name] = batch[name]
        return feats, frame_attn
