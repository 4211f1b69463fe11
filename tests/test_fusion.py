"""Fusion heads, losses, collation and the head factory, on small random tensors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fusion.config import HeadConfig
from fusion.data import FeatureBank, collate_texts, collate_videos, feature_dims
from fusion.factory import build_head
from fusion.heads import cat_embeddings, index_embeddings
from fusion.laff import FrameAttention, LaffBlock
from fusion.losses import info_nce, triplet_ranking_loss
from tests.fusion_helpers import VOCAB, random_banks, tiny_head_config
from vidfuse.errors import ConfigError, VidfuseError

HEADS = ["laff", "laff_ml", "dllfa", "meanp", "concat", "single"]


def _head(kind: str, videos: FeatureBank, texts: FeatureBank, cfg: HeadConfig | None = None):
    cfg = cfg or tiny_head_config(kind)
    return build_head(cfg, feature_dims(videos), feature_dims(texts), VOCAB)


def _encode(head, videos, texts, vidx, tidx):
    ve = head.encode_video(collate_videos(videos, vidx, head.video_inputs))
    te = head.encode_text(collate_texts(texts, tidx, head.text_inputs))
    return te, ve



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add sync overhead (badly so on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# -- LAFF block -----------------------------------------------------------------------------
def test_laff_attention_sums_to_one_and_follows_dominant_feature():
    dims = {"a": 16, "b": 24, "c": 8}
    block = LaffBlock(dims, dim=64, heads=1, dropout=0.0).eval()
    feats = {k: torch.randn(5, d) for k, d in dims.items()}
    e, a = block(feats)
    assert a.shape == (5, 1, 3)
    torch.testing.assert_close(a.sum(-1), torch.ones(5, 1))
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(5, 1))
    w = block.scorer.weight.detach()[0]
    for i, name in enumerate(block.names):
        with torch.no_grad():
            for other in block.names:  # neutral biases, then push one feature along the scorer
                block.project.proj[other].bias.zero_()
            block.project.proj[name].bias.copy_(10 * torch.sign(w))
        _, a = block(feats)
        assert torch.all(a[:, 0].argmax(-1) == i)
        assert torch.all(a[:, 0, i] > 0.9)


def test_laff_weights_xavier_zero_bias():
    block = LaffBlock({"a": 16, "b": 24}, dim=32)
    for layer in block.project.proj.values():
        assert torch.all(layer.bias == 0)
        bound = (6 / (layer.in_features + layer.out_features)) ** 0.5
        assert layer.weight.abs().max() <= bound
    assert not any("bias" in n for n, _ in block.scorer.named_parameters())  # cancels in softmax


def test_laff_ml_index_form_equals_mean_of_head_cosines():
    videos, texts = random_banks(9, 7)
    head = _head("laff_ml", videos, texts).eval()
    with torch.no_grad():
        te, ve = _encode(head, videos, texts, np.arange(9), np.arange(7))
        sim = head.similarity(te, ve)
        ip = head.query_embedding(te) @ head.index_embedding(ve).t()
        h = head.heads
        manual = torch.stack([
            F.cosine_similarity(te["emb"][:, k, None, :], ve["emb"][None, :, k, :], dim=-1) for k in range(h)
        ]).mean(0)
    assert h == 2 and te["emb"].shape[1] == 2
    assert torch.allclose(ip, sim, atol=1e-5)
    assert torch.allclose(manual, sim, atol=1e-5)
    assert head.index_embedding(ve).shape == (9, 64)


def test_eight_head_laff_per_head_batchnorm_on_tiled_passthrough():
    """LAFF as released, from the formulas: 8 heads over 8 x 32; clip (32-d) tiled 8x then one
    BatchNorm1d(256), so each head has its own scale and shift; x3d: Linear -> tanh -> dropout."""
    videos, texts = random_banks(6, 6)
    cfg = tiny_head_config("laff")
    cfg.laff.video_features, cfg.laff.text_features = ["clip", "x3d"], ["clip", "bow"]
    cfg.laff.dim, cfg.laff.heads, cfg.laff.dropout = 256, 8, 0.2
    cfg.laff.video_passthrough, cfg.laff.text_passthrough = ["clip"], ["clip"]
    head = _head("laff", videos, texts, cfg).eval()
    proj = head.video_fuse.project
    bn = proj.proj["clip"]
    assert isinstance(bn, torch.nn.BatchNorm1d) and bn.num_features == 256 and not len(proj.norm)
    with torch.no_grad():  # a distinct scale and shift per head slot, running stats per slot
        bn.weight.copy_(torch.arange(1, 257, dtype=torch.float32) / 64)
        bn.bias.copy_(torch.linspace(-1, 1, 256))
        bn.running_mean.copy_(torch.randn(256))
        bn.running_var.copy_(torch.rand(256) + 0.5)
        batch = collate_videos(videos, np.arange(6), head.video_inputs)
        e, a = head.video_fuse(head.video_in(batch)[0])
        f = batch["clip"]
        x = torch.tanh(proj.proj["x3d"](batch["x3d"]))  # eval: dropout is the identity
        for h in range(8):
            sl = slice(32 * h, 32 * (h + 1))
            clip_h = (f - bn.running_mean[sl]) / torch.sqrt(bn.running_var[sl] + bn.eps) * bn.weight[sl] + bn.bias[sl]
            xs = torch.stack([clip_h, x[:, sl]], 1)  # [B, 2, 32]
            w = head.video_fuse.scorer.weight[h]
            a_h = torch.softmax(xs @ w, dim=1)
            torch.testing.assert_close(a[:, h], a_h, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(e[:, h], F.normalize((a_h[..., None] * xs).sum(1), dim=-1), atol=1e-5, rtol=1e-5)
    # the pass-through path has no dropout: in training mode two passes agree on it
    head.train()
    with torch.no_grad():
        clip_only = {"clip": batch["clip"], "x3d": batch["x3d"]}
        one, two = proj(clip_only), proj(clip_only)
    torch.testing.assert_close(one[:, 0], two[:, 0])
    assert not torch.equal(one[:, 1], two[:, 1])  # the projected x3d goes through dropout 0.2
    # loss summed over the 8 heads, similarity their mean
    with torch.no_grad():
        head.eval()
        te, ve = _encode(head, videos, texts, np.arange(6), np.arange(6))
        per_head = head.head_similarities(te, ve)
        assert per_head.shape == (8, 6, 6)
        torch.testing.assert_close(head.similarity(te, ve), per_head.mean(0))
        pos = torch.eye(6, dtype=torch.bool)
        total, _ = head.loss(te, ve, pos)
        torch.testing.assert_close(total, sum(triplet_ranking_loss(s, pos) for s in per_head))
    # a pass-through dim that neither fills the space nor one head is refused, naming it
    cfg.laff.heads = 4
    with pytest.raises(ConfigError, match="clip"):
        _head("laff", videos, texts, cfg)


def test_laff_ml_is_multi_level_with_batchnorm_after_tanh():
    """Frame level without projection under the video level; BatchNorm after tanh/dropout on every
    projected feature, both sides; the frame level passes through (tiled, BatchNorm, no dropout)."""
    videos, texts = random_banks(5, 5)
    cfg = tiny_head_config("laff_ml")
    cfg.laff_ml.video_features = ["clip@frames", "x3d"]
    head = _head("laff_ml", videos, texts, cfg).eval()
    pool = head.video_in.pools["clip@frames"]
    assert isinstance(pool, FrameAttention)
    assert [n for n, _ in pool.named_parameters()] == ["scorer.weight"]  # no projection ("NoFrameFc")
    assert pool.scorer.weight.shape == (1, 32)
    vp, tp = head.video_fuse.project, head.text_fuse.project
    assert vp.tile == {"clip@frames": 2} and tp.tile == {"clip": 2}
    assert set(vp.norm) == {"x3d"} and set(tp.norm) == {"bow", "gru"}
    assert all(bn.num_features == 64 for bn in [*vp.norm.values(), *tp.norm.values()])
    with torch.no_grad():
        batch = collate_videos(videos, np.arange(5), head.video_inputs)
        frames, mask = batch["clip@frames"], batch["clip@mask"]
        feats, frame_attn = head.video_in(batch)
        # the frame attention by hand: a = softmax over the real frames of w.f_t, out = l2n(sum a_t f_t)
        for b in range(5):
            real = frames[b, mask[b]]
            a = torch.softmax(real @ pool.scorer.weight[0], 0)
            torch.testing.assert_close(frame_attn["clip@frames"][b, mask[b]], a)
            torch.testing.assert_close(feats["clip@frames"][b], F.normalize(a @ real, dim=0))
        # the video level: projected x3d = BN(tanh(W f + b)) (eval: running stats)
        x = vp(feats)
        bn = vp.norm["x3d"]
        ref = (torch.tanh(vp.proj["x3d"](batch["x3d"])) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        torch.testing.assert_close(x[:, 1], ref * bn.weight + bn.bias)
    # without a frame-level feature it is not LAFF-ml: refused, pointing at multi-head laff
    cfg.laff_ml.video_features = ["clip", "x3d"]
    cfg.laff_ml.video_passthrough = []
    with pytest.raises(ConfigError, match="multi-level"):
        _head("laff_ml", videos, texts, cfg)


# -- masking ------------------------------------------------------------------------------
def _pad_frames(batch: dict, extra: int) -> dict:
    padded = dict(batch)
    f, m = batch["clip@frames"], batch["clip@mask"]
    padded["clip@frames"] = torch.cat([f, 50 * torch.randn(f.shape[0], extra, f.shape[2])], 1)
    padded["clip@mask"] = torch.cat([m, torch.zeros(m.shape[0], extra, dtype=torch.bool)], 1)
    return padded


@pytest.mark.parametrize("kind", ["laff", "laff_ml", "dllfa", "meanp"])
def test_padded_frames_do_not_change_outputs(kind):
    videos, texts = random_banks(6, 5, max_frames=5)
    head = _head(kind, videos, texts).eval()
    batch = collate_videos(videos, np.arange(6), head.video_inputs)
    assert not batch["clip@mask"].all()  # the batch itself already has padding
    with torch.no_grad():
        te = head.encode_text(collate_texts(texts, np.arange(5), head.text_inputs))
        ve = head.encode_video(batch)
        ve_pad = head.encode_video(_pad_frames(batch, 3))
        torch.testing.assert_close(head.index_embedding(ve_pad), head.index_embedding(ve))
        torch.testing.assert_close(head.similarity(te, ve_pad), head.similarity(te, ve))
        # and each video alone (no padding at all) gives the same as inside the padded batch
        alone = cat_embeddings([head.encode_video(collate_videos(videos, [i], head.video_inputs)) for i in range(6)])
        torch.testing.assert_close(head.similarity(te, alone), head.similarity(te, ve), atol=1e-5, rtol=1e-5)


def test_frame_attention_masked_and_padding_changes_nothing():
    pool = FrameAttention(8).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out, a = pool(x, mask)
    torch.testing.assert_close(a.sum(1), torch.ones(3))
    assert torch.all(a[~mask] == 0)
    torch.testing.assert_close(a[2, 0], torch.tensor(1.0))
    torch.testing.assert_close(out[2], F.normalize(x[2, 0], dim=0))  # one frame: the frame itself, unit norm
    garbage = x.masked_fill(~mask[..., None], float("nan"))  # whatever sits in the padding
    out2, a2 = pool(garbage, mask)
    torch.testing.assert_close(out2, out)
    torch.testing.assert_close(a2, a)
    for b in range(3):  # each video alone, no padding at all
        alone, _ = pool(x[b : b + 1, mask[b]], None)
        torch.testing.assert_close(alone[0], out[b])


# -- DLLFA ----------------------------------------------------------------------------------
def test_dllfa_initial_state():
    videos, texts = random_banks(4, 4)
    head = _head("dllfa", videos, texts)
    eye = torch.eye(32)
    for lin in (head.w_q, head.w_k, head.w_v, head.w_o):
        assert torch.equal(lin.weight.detach(), eye)
        assert lin.bias is None or torch.all(lin.bias == 0)
    assert float(head.lam.detach()) == 0.5
    assert abs(float(head.logit_scale_value().detach()) - 100.0) < 1e-3
    with torch.no_grad():
        head.logit_scale.fill_(10.0)
    head.post_step()
    assert abs(float(head.logit_scale_value().detach()) - 100.0) < 1e-3
    assert not head.exact_index


def test_dllfa_scores_chunked_pairs_and_stage1():
    videos, texts = random_banks(7, 6)
    cfg = tiny_head_config("dllfa")
    head = _head("dllfa", videos, texts, cfg).eval()
    with torch.no_grad():
        te, ve = _encode(head, videos, texts, np.arange(7), np.arange(6))
        s, s_temp, s_rel = head.scores(te, ve)
        torch.testing.assert_close(s, 0.5 * s_temp + 0.5 * s_rel)
        torch.testing.assert_close(head.query_embedding(te) @ head.index_embedding(ve).t(), s_temp)
        cand = torch.tensor([[0, 3, 6], [2, 2, 1], [5, 4, 0], [1, 0, 2], [6, 6, 6], [3, 1, 5]])
        torch.testing.assert_close(head.pair_scores(te, ve, cand), torch.gather(s, 1, cand))
        head.cfg.pair_chunk = 4  # chunks of 4 pairs give the same numbers
        torch.testing.assert_close(head.similarity(te, ve), s)
        torch.testing.assert_close(head.pair_scores(te, ve, cand), torch.gather(s, 1, cand))
        # s_rel by hand for one pair, straight from the formulas
        i, j = 2, 4
        n = int(ve["mask"][j].sum())
        frames = collate_videos(videos, [j], head.video_inputs)
        hmat = frames["clip@frames"][0] + head.temporal(frames["clip@frames"] + head.pos.weight[:n][None])[0]
        t = collate_texts(texts, [i], head.text_inputs)["clip"][0]
        q = head.w_q(head.ln_t(t))
        k = head.w_k(head.ln_h(hmat))
        a = torch.softmax(k @ q / 32 ** 0.5, 0)
        u = head.ln_u(head.w_o(a @ head.w_v(head.ln_h(hmat))))
        z = head.ln_z(u + head.fc(u))
        assert abs(float(F.cosine_similarity(t, z, 0)) - float(s_rel[i, j])) < 1e-5


# -- gradients --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["laff", "laff_ml", "laff_ml_passthrough", "dllfa", "concat", "single"])
def test_gradients_reach_every_parameter(kind):
    videos, texts = random_banks(8, 10)
    cfg = tiny_head_config(kind.replace("_passthrough", ""))
    if kind == "laff_ml_passthrough":  # the clip vector too passes through (tiled, BatchNorm)
        cfg.laff_ml.video_passthrough = ["clip", "clip@frames"]
    if kind == "single":
        cfg.single.video_feature, cfg.single.text_feature = "clip@frames", "gru"
    head = _head(cfg.type, videos, texts, cfg).train()
    cv = torch.arange(10) % 8
    te, ve = _encode(head, videos, texts, np.arange(8), np.arange(10))
    loss, info = head.loss(te, ve, cv[:, None] == torch.arange(8)[None])
    assert torch.isfinite(loss) and info
    loss.backward()
    names = [n for n, p in head.named_parameters()]
    assert names
    for name, p in head.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.any(p.grad != 0), f"{name} has an all-zero gradient"


def test_meanp_is_parameter_free_cosine():
    videos, texts = random_banks(5, 4)
    head = _head("meanp", videos, texts)
    assert not list(head.parameters())
    te, ve = _encode(head, videos, texts, np.arange(5), np.arange(4))
    f, o = videos.frames["clip"]
    means = np.stack([f[o[i]:o[i + 1]].mean(0) for i in range(5)])
    expected = F.normalize(torch.from_numpy(texts.vectors["clip"][:4]), dim=-1) @ F.normalize(torch.from_numpy(means), dim=-1).t()
    torch.testing.assert_close(head.similarity(te, ve), expected)


@pytest.mark.parametrize("kind", HEADS)
def test_index_embedding_matches_similarity_for_exact_heads(kind):
    videos, texts = random_banks(6, 5)
    head = _head(kind, videos, texts).eval()
    with torch.no_grad():
        te, ve = _encode(head, videos, texts, np.arange(6), np.arange(5))
        sim = head.similarity(te, ve)
        ip = head.query_embedding(te) @ head.index_embedding(ve).t()
        assert sim.shape == (5, 6)
        if head.exact_index:
            torch.testing.assert_close(ip, sim, atol=1e-5, rtol=1e-5)
        sub = index_embeddings(ve, torch.tensor([4, 1]))
        torch.testing.assert_close(head.similarity(te, sub), sim[:, [4, 1]], atol=1e-5, rtol=1e-5)


def test_laff_attention_inspection():
    videos, texts = random_banks(4, 3)
    head = _head("laff", videos, texts).eval()
    te, ve = _encode(head, videos, texts, np.arange(4), np.arange(3))
    att = head.attention(ve, "video")
    assert set(att) == {"clip", "x3d", "clip@frames", "frames:clip@frames"}
    total = sum(att[k] for k in ("clip", "x3d", "clip@frames"))
    torch.testing.assert_close(total, torch.ones(4, 1))
    assert set(head.attention(te, "text")) == {"clip", "bow", "gru"}


# -- losses -----------------------------------------------------------------------------------
def test_triplet_masks_same_video_captions():
    # captions 0, 1 describe video 0; caption 2 video 1. Videos as columns: [v0, v1, v0 again]
    scores = torch.tensor([[0.5, 0.1, 0.9], [0.4, 0.3, 0.2], [0.0, 0.6, 0.1]])
    pos = torch.tensor([[1, 0, 1], [1, 0, 1], [0, 1, 0]], dtype=torch.bool)
    loss = triplet_ranking_loss(scores, pos, margin=0.2, direction="t2v")
    # each positive pair against its row's hardest NON-positive only (column 1 for rows 0, 1)
    hinge = [(0.5, 0.1), (0.9, 0.1), (0.4, 0.3), (0.2, 0.3), (0.6, 0.1)]  # (positive, its row's hardest negative)
    expected = sum(max(0.0, 0.2 - p + n) for p, n in hinge)
    assert abs(expected - 0.4) < 1e-9
    assert abs(float(loss) - expected) < 1e-6
    both = triplet_ranking_loss(scores, pos, margin=0.2, direction="both")
    v2t = sum(max(0, 0.2 - float(scores[i, j]) + float(scores[2, j] if j != 1 else scores[:2, 1].max()))
              for i, j in pos.nonzero().tolist())
    assert abs(float(both) - expected - v2t) < 1e-6
    vse0 = triplet_ranking_loss(scores, pos, margin=0.2, hardest=False)
    assert abs(float(vse0) - expected) < 1e-6  # one negative per row here: sum == max


def test_info_nce_multi_positive_matches_definition():
    torch.manual_seed(1)
    logits = torch.randn(5, 4, requires_grad=True)
    cv = torch.tensor([0, 0, 1, 2, 3])
    pos = cv[:, None] == torch.arange(4)[None]
    got = info_nce(logits, pos)
    terms_t2v, terms_v2t = [], []
    for i, j in pos.nonzero().tolist():
        negs_row = [logits[i, k] for k in range(4) if not pos[i, k]]
        negs_col = [logits[k, j] for k in range(5) if not pos[k, j]]  # caption 1 is not in caption 0's denominator
        terms_t2v.append(-logits[i, j] + torch.logsumexp(torch.stack([logits[i, j]] + negs_row), 0))
        terms_v2t.append(-logits[i, j] + torch.logsumexp(torch.stack([logits[i, j]] + negs_col), 0))
    expected = (torch.stack(terms_t2v).mean() + torch.stack(terms_v2t).mean()) / 2
    torch.testing.assert_close(got, expected)
    # a row/column with no negatives contributes 0 and yields finite gradients
    one = info_nce(torch.zeros(2, 1, requires_grad=True), torch.ones(2, 1, dtype=torch.bool))
    one.backward()
    assert float(one.detach()) == 0.0


# -- collation and data ------------------------------------------------------------------------
def test_collate_shapes_masks_tokens(tmp_path):
    videos, texts = random_banks(5, 6)
    idx = np.array([3, 0, 3])
    vb = collate_videos(videos, idx)
    f, o = videos.frames["clip"]
    lens = np.diff(o)[idx]
    assert vb["clip@frames"].shape == (3, lens.max(), 32)
    assert vb["clip@mask"].sum(1).tolist() == lens.tolist()
    np.testing.assert_allclose(vb["clip@frames"][1, : lens[1]].numpy(), f[o[0]:o[1]])
    np.testing.assert_allclose(vb["x3d"].numpy(), videos.vectors["x3d"][idx])
    tb = collate_texts(texts, np.array([1, 2]))
    ids, toff = texts.tokens
    assert tb["tokens@lengths"].tolist() == [max(1, int(toff[i + 1] - toff[i])) for i in (1, 2)]
    # h5py-backed arrays: unsorted, repeated indices work
    with h5py.File(tmp_path / "f.h5", "w") as h5:
        h5["x3d"] = videos.vectors["x3d"]
        h5["frames"] = f
    with h5py.File(tmp_path / "f.h5", "r") as h5:
        bank = FeatureBank(vectors={"x3d": h5["x3d"]}, frames={"clip": (h5["frames"], o)})
        hb = collate_videos(bank, idx)
        torch.testing.assert_close(hb["x3d"], vb["x3d"])
        torch.testing.assert_close(hb["clip@frames"], vb["clip@frames"])
    assert feature_dims(videos) == {"clip": 32, "x3d": 24, "clip@frames": 32}


def test_collate_names_missing_feature():
    videos, _ = random_banks(3, 1)
    with pytest.raises(VidfuseError, match="ircsn"):
        collate_videos(videos, [0, 1], names=["clip", "ircsn"])


# -- factory ------------------------------------------------------------------------------------
def test_build_head_errors_name_the_problem():
    videos, texts = random_banks(3, 3)
    vd, td = feature_dims(videos), feature_dims(texts)
    cfg = tiny_head_config("laff")
    cfg.laff.video_features = ["clip", "ircsn"]
    with pytest.raises(ConfigError, match="ircsn"):
        build_head(cfg, vd, td, VOCAB)
    cfg = tiny_head_config("laff")
    with pytest.raises(ConfigError, match="gru"):
        build_head(cfg, vd, td, None)
    with pytest.raises(ConfigError, match="nope"):
        build_head(HeadConfig(type="nope"), vd, td, VOCAB)
    cfg = tiny_head_config("laff")
    cfg.laff.heads = 3
    with pytest.raises(ConfigError, match="multiple of head.laff.heads=3"):
        build_head(cfg, vd, td, VOCAB)
    cfg.laff.heads = 2  # multi-head LAFF (what laff_ml once meant) is laff with heads > 1
    assert build_head(cfg, vd, td, VOCAB).heads == 2


def test_gru_word_embeddings_from_matrix():
    videos, texts = random_banks(3, 3)
    cfg = tiny_head_config("laff")
    matrix = np.random.default_rng(0).normal(size=(VOCAB, 8)).astype(np.float32)
    head = build_head(cfg, feature_dims(videos), feature_dims(texts), VOCAB, word_embeddings=matrix)
    np.testing.assert_array_equal(head.text_in.gru.embed.weight.detach().numpy(), matrix)
    with pytest.raises(ConfigError, match="word_dim"):
        build_head(cfg, feature_dims(videos), feature_dims(texts), VOCAB, word_embeddings=matrix[:, :5])
