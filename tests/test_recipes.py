"""The published configs build the structure their releases have, at the released dims.

Each test loads ``configs/train/<name>.yaml``, builds the head over MSR-VTT-sized features
(CLIP 512, X3D-L 2048, irCSN-152 2048, word2vec 500, a bag of words of ``BOW`` words and the
GRU's ``BOW + 4`` tokens) and checks heads, dims, BatchNorm placement, dropout, the optimiser
and its schedule. The parameter counts are printed (``pytest -s``) and recorded in
benchmarks/README.md.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn as nn

from fusion.data import FeatureBank, collate_texts, collate_videos
from fusion.factory import build_head
from fusion.laff import FrameAttention, PassThroughNorm
from fusion.optim import LrController, build_optimizer
from fusion.trainer import TrainConfig, amp_settings, resolve_config
from tests.fusion_helpers import ragged
from vidfuse.config import load_config

BOW = 7800  # words of an MSR-VTT bag of words (min count 5, stopwords removed; as benchmarks/train.py)
VIDEO_DIMS = {"clip": 512, "clip@frames": 512, "x3d": 2048, "ircsn": 2048}
TEXT_DIMS = {"clip": 512, "bow": BOW, "w2v": 500}
GRU_TOKENS = BOW + 4  # <pad> <start> <end> <unk> + words (stopwords kept: a few more in practice)


@functools.lru_cache(maxsize=None)  # a released LAFF is 60 M parameters: build each once
def _built(name: str):
    cfg = resolve_config(load_config(TrainConfig, name, kind="train"))
    torch.manual_seed(0)
    head = build_head(cfg.head, VIDEO_DIMS, TEXT_DIMS, GRU_TOKENS)
    count = sum(p.numel() for p in head.parameters())
    print(f"\n{name}: {count:,} parameters ({count / 1e6:.1f} M)")
    return cfg, head, count


def _encode_a_batch(head) -> tuple[dict, dict]:
    """Two videos and three captions through the head (train mode: BatchNorm uses the batch)."""
    rng = np.random.default_rng(0)
    videos = FeatureBank(vectors={k: rng.normal(size=(2, d)).astype(np.float32) for k, d in VIDEO_DIMS.items()
                                  if "@" not in k},
                         frames={"clip": ragged(rng, np.array([3, 5]), 512)})
    texts = FeatureBank(vectors={k: rng.random((3, d)).astype(np.float32) for k, d in TEXT_DIMS.items()},
                        tokens=ragged(rng, np.array([4, 6, 2]), None, GRU_TOKENS))
    head.train()
    return (head.encode_video(collate_videos(videos, np.arange(2), head.video_inputs)),
            head.encode_text(collate_texts(texts, np.arange(3), head.text_inputs)))


def _check_laff_recipe(cfg, head) -> None:
    """What laff and laff_ml share: 8 heads over 4096, the LAFF loss and optimiser."""
    assert head.heads == 8 and head.video_fuse.scorer.weight.shape == (8, 512)
    assert head.text_fuse.scorer.weight.shape == (8, 512)
    for block in (head.video_fuse, head.text_fuse):
        assert block.project.dim == 4096 and block.project.dropout.p == 0.2
        for name in block.names:
            layer = block.project.proj[name.replace(".", "_")]
            if name in block.project.tile:  # pass-through: tiled 8x into one BatchNorm1d(4096)
                assert isinstance(layer, PassThroughNorm) and layer.num_features == 4096
                assert block.project.tile[name] == 8
            else:
                assert isinstance(layer, nn.Linear) and layer.out_features == 4096
    assert head.text_fuse.project.tile == {"clip": 8}
    gru = head.text_in.gru
    assert gru.embed.weight.shape == (GRU_TOKENS, 500) and gru.rnn.hidden_size == 1024 and not gru.rnn.bidirectional
    loss = cfg.head.laff_ml.loss if cfg.head.type == "laff_ml" else cfg.head.laff.loss
    assert (loss.margin, loss.direction, loss.hardest) == (0.2, "t2v", True)
    o = cfg.optim
    assert (o.name, o.lr, o.grad_clip, o.schedule, o.epoch_decay, o.plateau_factor, o.plateau_patience) == \
        ("rmsprop", 1e-4, 2.0, "decay_plateau", 0.99, 0.5, 2)
    assert (cfg.batch_size, cfg.epochs, cfg.early_stop, cfg.val_metric) == (64, 80, 10, "t2v/mIR")
    optimizer = build_optimizer(head, o)
    assert isinstance(optimizer, torch.optim.RMSprop)
    ctrl = LrController(optimizer, o, 100)
    assert isinstance(ctrl.step_lr, torch.optim.lr_scheduler.StepLR) and ctrl.step_lr.gamma == 0.99
    plateau = ctrl.plateau
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert (plateau.mode, plateau.factor, plateau.patience) == ("max", 0.5, 2)
    ve, te = _encode_a_batch(head)
    assert ve["emb"].shape == (2, 8, 512) and te["emb"].shape == (3, 8, 512)
    assert head.index_embedding(ve).shape == (2, 4096)


def test_laff_as_released():
    cfg, head, count = _built("laff")
    assert cfg.head.type == "laff"
    _check_laff_recipe(cfg, head)
    assert head.video_in.names == ["clip", "x3d", "ircsn"] and not head.video_in.pools
    assert head.video_fuse.project.tile == {"clip": 8}
    assert head.text_in.names == ["clip", "bow", "w2v", "gru"]
    # no BatchNorm after tanh on projected features (LAFF-ml's addition)
    assert not len(head.video_fuse.project.norm) and not len(head.text_fuse.project.norm)
    assert not cfg.head.laff.batch_norm
    # the count from the formulas: Linear(d -> 4096) per projected feature, BatchNorm1d(4096) per
    # pass-through one, an [8, 512] scorer per side, the GRU's embedding and its three gates
    linear, bn, scorer = (lambda d: d * 4096 + 4096), 2 * 4096, 8 * 512
    gru = GRU_TOKENS * 500 + 3 * (500 * 1024 + 1024 * 1024 + 2 * 1024)
    video = linear(2048) + linear(2048) + bn + scorer
    text = bn + linear(BOW) + linear(500) + linear(1024) + gru + scorer
    assert count == video + text


def test_laff_ml_as_released():
    cfg, head, count = _built("laff_ml")
    assert cfg.head.type == "laff_ml"
    _check_laff_recipe(cfg, head)
    # frame level: attention straight over the 512-d CLIP frames, no projection
    pool = head.video_in.pools["clip@frames"]
    assert isinstance(pool, FrameAttention) and pool.scorer.weight.shape == (1, 512)
    assert sum(p.numel() for p in pool.parameters()) == 512
    assert head.video_fuse.project.tile == {"clip@frames": 8}
    # BatchNorm1d(4096) after tanh/dropout on every projected feature, both sides
    assert set(head.video_fuse.project.norm) == {"x3d", "ircsn"}
    assert set(head.text_fuse.project.norm) == {"bow", "w2v", "gru"}
    for block in (head.video_fuse, head.text_fuse):
        assert all(isinstance(bn, PassThroughNorm) and bn.num_features == 4096 for bn in block.project.norm.values())
    # fp16 mixed precision on CUDA; a CPU falls back to float32
    assert cfg.amp and cfg.amp_dtype == "float16"
    assert amp_settings(cfg, torch.device("cpu")) == (False, torch.float32)
    if torch.cuda.is_available():
        assert amp_settings(cfg, torch.device("cuda")) == (True, torch.float16)
    _, laff, laff_count = _built("laff")
    # one 512-weight scorer and 6 BatchNorm(4096) (2 x 4096 affine each) more; the clip vector
    # is replaced by the frame level
    assert count == laff_count + 512 + 5 * 2 * 4096


def test_dllfa_as_specified():
    cfg, head, count = _built("dllfa")
    assert cfg.head.type == "dllfa" and head.dim == 512
    assert len(head.temporal.layers) == 4 and head.temporal.layers[0].self_attn.num_heads == 8
    assert head.temporal.layers[0].norm_first  # pre-LN
    assert head.pos.weight.shape == (cfg.head.dllfa.max_frames, 512)
    assert float(torch.sigmoid(head.theta.detach())) == 0.5
    o = cfg.optim
    assert (o.name, o.lr, o.weight_decay, o.grad_clip, o.schedule, o.warmup) == \
        ("adamw", 1e-4, 0.2, 1.0, "warmup_cosine", 0.1)
    assert isinstance(build_optimizer(head, o, head.no_weight_decay()), torch.optim.AdamW)
    assert 12e6 < count < 14e6


def test_baselines_as_specified():
    _, meanp, count = _built("meanp")
    assert count == 0
    cfg, concat, count = _built("concat")
    assert concat.video_out.in_features == 512 * 3 and concat.text_out.in_features == 512 * 4
    assert cfg.optim.name == "rmsprop" and cfg.optim.schedule == "decay_plateau"
