"""DLLFA: dual-level language-frames attention over per-frame CLIP features (DESIGN 5).

Level 1 (temporal order, text-independent):
    H = F + Transformer(F + P)         4 pre-LN layers, 8 heads, learned P, padding masked
    v_g = l2n(masked mean of l2n(H_i)),   s_temp = cos(t, v_g)
Level 2 (language-frame relevance):
    a_i = softmax_i((W_q LN t) . (W_k LN H_i) / sqrt(D))
    u = LN(W_o sum_i a_i W_v LN H_i),   z = LN(u + dropout(FC(u))),   s_rel = cos(t, z)
Score s = lambda s_temp + (1 - lambda) s_rel, lambda = sigmoid(theta).

W_q, W_k, W_v, W_o start at identity with zero biases; W_k has no bias at all, because
q . b_k is the same for every frame and cancels in the softmax (zero gradient forever).

Everything text-independent (v_g, keys, and the values already passed through W_o:
W_o(sum a W_v x) = sum a W_o(W_v x) because the a_i sum to 1) is computed once per
video in :meth:`encode_video`; s_rel is computed pairwise in chunks of ``pair_chunk``
text x video pairs, so an N x M score matrix never holds N*M*D floats at once.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from fusion.config import DllfaConfig
from fusion.data import FRAMES_SUFFIX, MASK_SUFFIX
from fusion.heads import Embedding, RetrievalHead, l2n, shared_space_dim
from fusion.losses import info_nce
from vidfuse.errors import ConfigError, VidfuseError


def identity_linear(dim: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(dim, dim, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(dim))
        if bias:
            layer.bias.zero_()
    return layer


class DllfaHead(RetrievalHead):
    exact_index = False  # the index holds v_g (exact for s_temp); s needs a re-rank

    def __init__(self, cfg: DllfaConfig, video_dims: dict[str, int], text_dims: dict[str, int]):
        super().__init__()
        self.cfg = cfg
        dim = shared_space_dim("dllfa", cfg.frame_feature, cfg.text_feature, video_dims, text_dims)
        frames_key = cfg.frame_feature + FRAMES_SUFFIX
        if dim % cfg.attn_heads:
            raise ConfigError(f"dllfa.attn_heads={cfg.attn_heads} does not divide the feature dim {dim}")
        self.dim = dim
        self.frames_key, self.mask_key = frames_key, cfg.frame_feature + MASK_SUFFIX
        self.video_inputs = (self.frames_key, self.mask_key)
        self.text_inputs = (cfg.text_feature,)
        # level 1
        self.pos = nn.Embedding(cfg.max_frames, dim)
        nn.init.normal_(self.pos.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, cfg.attn_heads, cfg.ff_mult * dim, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.temporal = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        # level 2
        self.ln_t, self.ln_h = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.w_q, self.w_v, self.w_o = (identity_linear(dim) for _ in range(3))
        self.w_k = identity_linear(dim, bias=False)  # q . b_k is the same for every frame: cancels
        self.ln_u, self.ln_z = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, dim)
        self.drop = nn.Dropout(cfg.dropout)
        # fusion and loss
        self.theta = nn.Parameter(torch.tensor(float(cfg.theta_init)))
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    # -- encoders ---------------------------------------------------------------------------
    def encode_video(self, batch: dict[str, torch.Tensor]) -> Embedding:
        frames, mask = batch[self.frames_key], batch[self.mask_key].bool()
        t = frames.shape[1]
        if t > self.cfg.max_frames:
            raise VidfuseError(f"dllfa: {t} frames per video exceed dllfa.max_frames={self.cfg.max_frames}")
        pos = self.pos.weight[:t][None]
        h = frames + self.temporal(frames + pos, src_key_padding_mask=~mask)
        h = h.masked_fill(~mask[..., None], 0.0)
        m = mask[..., None].to(h.dtype)
        v_g = l2n((l2n(h) * m).sum(1) / m.sum(1).clamp(min=1))
        hn = self.ln_h(h)
        return {"v_g": v_g, "k": self.w_k(hn), "v": self.w_o(self.w_v(hn)), "mask": mask}

    def encode_text(self, batch: dict[str, torch.Tensor]) -> Embedding:
        t = batch[self.cfg.text_feature]
        return {"t": l2n(t), "q": self.w_q(self.ln_t(t))}

    # -- scores -----------------------------------------------------------------------------
    @property
    def lam(self) -> torch.Tensor:
        return torch.sigmoid(self.theta)

    def _relate(self, pooled: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``pooled [..., D]`` attention outputs and unit texts ``t [..., D]`` -> s_rel ``[...]``."""
        u = self.ln_u(pooled)
        z = self.ln_z(u + self.drop(self.fc(u)))
        return (l2n(z) * t).sum(-1)

    def _rel_grid(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        """s_rel of every text with every video, ``[Nt, Nv]``, in chunks of pairs."""
        q, t = text_emb["q"], text_emb["t"]
        k, v, mask = video_emb["k"], video_emb["v"], video_emb["mask"]
        nt, nv = q.shape[0], k.shape[0]
        scale = 1.0 / math.sqrt(self.dim)
        vc = max(1, min(nv, self.cfg.pair_chunk))
        tc = max(1, self.cfg.pair_chunk // vc)
        rows = []
        for i in range(0, nt, tc):
            cols = []
            for j in range(0, nv, vc):
                logits = torch.einsum("id,jtd->ijt", q[i : i + tc], k[j : j + vc]).float() * scale
                logits = logits.masked_fill(~mask[None, j : j + vc], float("-inf"))
                a = torch.softmax(logits, -1).to(v.dtype)
                pooled = torch.einsum("ijt,jtd->ijd", a, v[j : j + vc])
                cols.append(self._relate(pooled, t[i : i + tc, None, :]))
            rows.append(torch.cat(cols, 1))
        return torch.cat(rows, 0)

    def _rel_pairs(self, text_emb: Embedding, video_emb: Embedding, ti: torch.Tensor, vj: torch.Tensor) -> torch.Tensor:
        """s_rel of aligned pairs (text ``ti[p]``, video ``vj[p]``), ``[P]``."""
        out = []
        for s in range(0, ti.shape[0], self.cfg.pair_chunk):
            a_i, b_j = ti[s : s + self.cfg.pair_chunk], vj[s : s + self.cfg.pair_chunk]
            a = self.frame_attention(text_emb, video_emb, a_i, b_j)
            pooled = torch.einsum("pt,ptd->pd", a, video_emb["v"][b_j])
            out.append(self._relate(pooled, text_emb["t"][a_i]))
        return torch.cat(out) if out else text_emb["t"].new_zeros(0)

    def frame_attention(self, text_emb: Embedding, video_emb: Embedding, ti: torch.Tensor, vj: torch.Tensor) -> torch.Tensor:
        """Level-2 relevance weights a_i over the frames of video ``vj[p]`` for text ``ti[p]``,
        ``[P, T]`` (0 on padding): which frames the relevance score looked at."""
        logits = torch.einsum("pd,ptd->pt", text_emb["q"][ti], video_emb["k"][vj]).float() * (1.0 / math.sqrt(self.dim))
        logits = logits.masked_fill(~video_emb["mask"][vj], float("-inf"))
        return torch.softmax(logits, -1).to(video_emb["v"].dtype)

    def scores(self, text_emb: Embedding, video_emb: Embedding) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(s, s_temp, s_rel), each ``[Nt, Nv]``."""
        s_temp = text_emb["t"] @ video_emb["v_g"].t()
        s_rel = self._rel_grid(text_emb, video_emb).to(s_temp.dtype)
        lam = self.lam.to(s_temp.dtype)
        return lam * s_temp + (1 - lam) * s_rel, s_temp, s_rel

    def similarity(self, text_emb: Embedding, video_emb: Embedding) -> torch.Tensor:
        return self.scores(text_emb, video_emb)[0]

    def pair_scores(self, text_emb: Embedding, video_emb: Embedding, candidates: torch.Tensor) -> torch.Tensor:
        nt, k = candidates.shape
        ti = torch.arange(nt, device=candidates.device).repeat_interleave(k)
        vj = candidates.reshape(-1)
        s_temp = (text_emb["t"][ti] * video_emb["v_g"][vj]).sum(-1)
        s_rel = self._rel_pairs(text_emb, video_emb, ti, vj).to(s_temp.dtype)
        lam = self.lam.to(s_temp.dtype)
        return (lam * s_temp + (1 - lam) * s_rel).view(nt, k)

    def loss(self, text_emb: Embedding, video_emb: Embedding, positives: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        s, s_temp, s_rel = self.scores(text_emb, video_emb)
        scale = self.logit_scale_value()
        l_s = info_nce(scale * s.float(), positives)
        l_temp = info_nce(scale * s_temp.float(), positives)
        l_rel = info_nce(scale * s_rel.float(), positives)
        w = self.cfg.aux_weight
        total = l_s + w * (l_temp + l_rel)
        return total, {
            "nce": float(l_s.detach()), "nce_temp": float(l_temp.detach()), "nce_rel": float(l_rel.detach()),
            "lambda": float(self.lam.detach()), "logit_scale": float(scale.detach()),
        }

    def logit_scale_value(self) -> torch.Tensor:
        """exp(logit_scale) capped at ``logit_scale_max``; the gradient passes even at the cap
        (as in CLIP, where the parameter is clamped after each step: see :meth:`post_step`)."""
        over = (self.logit_scale - math.log(self.cfg.logit_scale_max)).clamp(min=0).detach()
        return (self.logit_scale - over).exp()

    def post_step(self) -> None:
        with torch.no_grad():  # CLIP's cap: the parameter itself never exceeds ln(max)
            self.logit_scale.clamp_(max=math.log(self.cfg.logit_scale_max))

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "theta", "pos.weight"}

    # -- index ------------------------------------------------------------------------------
    def index_embedding(self, video_emb: Embedding) -> torch.Tensor:
        return video_emb["v_g"]

    def query_embedding(self, text_emb: Embedding) -> torch.Tensor:
        return text_emb["t"]
