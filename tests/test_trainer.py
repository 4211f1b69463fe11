"""Trainer: overfitting, exact kill-and-resume, checkpoints, config and dim errors, encoding."""

from __future__ import annotations

import glob
import json

import numpy as np
import pytest
import torch

from fusion.checkpoint import CheckpointError, check_banks, load_checkpoint, load_run
from fusion.data import DataError, FeatureBank, TrainData, feature_dims
from fusion.encode import encode_texts, encode_videos, rerank_scores, similarity_matrix
from fusion.factory import build_head
from fusion.optim import LrController, OptimConfig, build_optimizer, resolve_optim
from fusion.trainer import TrainConfig, epoch_batches, train
from index.metrics import t2v_v2t_metrics
from tests.fusion_helpers import VOCAB, random_banks, tiny_head_config
from vidfuse.config import load_config
from vidfuse.errors import ConfigError, VidfuseError

FAKE_VIDEO_DIMS = {"clip": 512, "x3d": 2048, "ircsn": 2048, "clip@frames": 512}
FAKE_TEXT_DIMS = {"clip": 512, "bow": 300, "w2v": 500}


def random_data(n_videos: int, per_video: int = 2, val_videos: int = 0, seed: int = 3) -> TrainData:
    """Unrelated random video and caption features: anything learnt is memorised."""
    videos, texts = random_banks(n_videos, n_videos * per_video, seed=seed)
    cv = np.arange(n_videos * per_video) % n_videos
    caps = np.arange(len(cv))
    is_val = cv >= n_videos - val_videos
    return TrainData(videos=videos, texts=texts, caption_video=cv,
                     train_captions=caps[~is_val] if val_videos else caps,
                     val_captions=caps[is_val] if val_videos else caps,
                     video_ids=[f"v{i}" for i in range(n_videos)], caption_ids=[f"c{i}" for i in caps],
                     vocab_size=VOCAB)


def tiny_train_config(kind: str, **kw) -> TrainConfig:
    cfg = TrainConfig(head=tiny_head_config(kind), **kw)
    return cfg



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: intra-op threads only add sync overhead (badly so on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# -- learning ----------------------------------------------------------------------------------
# LAFF-ml has BatchNorm on every fused feature: its running statistics (momentum 0.1) need a
# few dozen steps to match the batches', hence small batches (4 steps an epoch)
@pytest.mark.parametrize("kind, lr, batch, epochs", [("laff_ml", 1e-3, 4, 15), ("dllfa", 3e-3, 4, 10)])
def test_tiny_run_overfits_training_pairs(tmp_path, kind, lr, batch, epochs):
    data = random_data(8)  # validation = the training pairs
    cfg = tiny_train_config(kind, epochs=epochs, batch_size=batch, early_stop=0)
    cfg.optim.lr = lr
    if kind == "dllfa":
        cfg.optim.schedule = "constant"
    result = train(cfg, data, tmp_path / kind, progress=False)
    first = result.history[0]["t2v"]["R@1"]
    assert result.best_val["t2v"]["R@1"] == 100.0, [h["t2v"]["R@1"] for h in result.history]
    assert first < 100.0  # it was learnt, not given
    # the best checkpoint reproduces the metric through the public loading/encoding path
    head, cfg2, info = load_run(tmp_path / kind)
    assert info["epoch"] == result.best_epoch and cfg2.head.type == kind
    sim = similarity_matrix(head, data.texts, data.videos)
    assert t2v_v2t_metrics(sim, data.caption_video)["t2v"]["R@1"] == 100.0


# -- resume ------------------------------------------------------------------------------------
def _files(run):
    lines = (run / "metrics.jsonl").read_text()
    return lines, load_checkpoint(run / "last.pt")["model"], load_checkpoint(run / "checkpoint.pt")


def _assert_same_run(a, b):
    lines_a, last_a, best_a = _files(a)
    lines_b, last_b, best_b = _files(b)
    assert lines_a == lines_b
    assert last_a.keys() == last_b.keys()
    for k in last_a:
        assert torch.equal(last_a[k], last_b[k]), k
    assert best_a["epoch"] == best_b["epoch"]
    for k in best_a["model"]:
        assert torch.equal(best_a["model"][k], best_b["model"][k]), k


def test_kill_and_resume_equals_uninterrupted_laff(tmp_path):
    data = random_data(10, val_videos=4)
    cfg = tiny_train_config("laff", epochs=4, batch_size=6, early_stop=0)
    cfg.head.laff.dropout = 0.3  # dropout draws must line up too
    straight = train(cfg, data, tmp_path / "straight", progress=False)
    cfg.epochs = 2  # the "killed" run: an epochs limit, then continued to 4
    train(cfg, data, tmp_path / "resumed", progress=False)
    assert len((tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2
    cfg.epochs = 4
    resumed = train(cfg, data, tmp_path / "resumed", progress=False)
    assert resumed.epochs_run == straight.epochs_run == 4
    assert resumed.history == straight.history
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")
    # resuming a finished run trains nothing and reports the same
    again = train(cfg, data, tmp_path / "resumed", progress=False)
    assert again.history == straight.history


def test_stop_and_resume_equals_uninterrupted_dllfa(tmp_path):
    data = random_data(8, val_videos=3)
    cfg = tiny_train_config("dllfa", epochs=3, batch_size=5)
    cfg.head.dllfa.dropout = 0.2
    train(cfg, data, tmp_path / "straight", progress=False)
    train(cfg, data, tmp_path / "resumed", progress=False, stop_after=1)  # killed after epoch 1
    # a kill between writing metrics.jsonl and last.pt leaves an extra line: it is dropped
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "loss": 0.0}) + "\n")
    train(cfg, data, tmp_path / "resumed", progress=False)
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_resume_refuses_other_dims_and_settings(tmp_path):
    data = random_data(6, val_videos=2)
    cfg = tiny_train_config("laff", epochs=1, batch_size=4)
    train(cfg, data, tmp_path / "run", progress=False)
    other = random_data(6, val_videos=2)
    other.videos.vectors["x3d"] = np.zeros((6, 30), np.float32)
    cfg.epochs = 2
    with pytest.raises(CheckpointError, match=r"x3d.*24.*30"):
        train(cfg, other, tmp_path / "run", progress=False)
    cfg.head.laff.dim = 32
    with pytest.raises(CheckpointError, match=r"head\.laff\.dim was 64, now 32"):
        train(cfg, data, tmp_path / "run", progress=False)
    # resume=False starts over instead
    result = train(cfg, other, tmp_path / "run", resume=False, progress=False)
    assert result.epochs_run == 2
    # a loaded run checks banks handed to it later (index / benchmark)
    _, _, info = load_run(tmp_path / "run")
    check_banks(info, other.videos, other.texts, VOCAB)
    with pytest.raises(CheckpointError, match=r"x3d.*30.*24"):
        check_banks(info, data.videos)
    with pytest.raises(CheckpointError, match="vocabulary"):
        check_banks(info, texts=data.texts, vocab_size=VOCAB + 1)


def test_run_files_and_early_stop(tmp_path):
    data = random_data(8, val_videos=3)
    cfg = tiny_train_config("concat", epochs=30, batch_size=8, early_stop=2)
    cfg.optim.lr = 3e-2  # overshoots: the val metric stops improving quickly
    result = train(cfg, data, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, result.epochs_run + 1))
    assert result.stopped_early and result.epochs_run < 30
    assert result.epochs_run - result.best_epoch == 2
    assert {"t2v", "v2t", "loss", "lr", "val_metric"} <= set(lines[0])
    assert {"R@1", "R@5", "R@10", "MedR", "mIR", "rsum"} <= set(lines[0]["t2v"])
    best = max(lines, key=lambda r: r["t2v"]["mIR"])
    assert best["epoch"] == result.best_epoch and result.best_metric == best["t2v"]["mIR"]
    saved = load_config(TrainConfig, run / "config.yaml")
    assert saved.optim.name == "rmsprop" and saved.optim.lr == 3e-2 and saved.head.type == "concat"
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == result.best_epoch


def test_meanp_evaluates_only(tmp_path):
    data = random_data(6, val_videos=6)
    data.train_captions = data.val_captions
    result = train(TrainConfig(head=tiny_head_config("meanp"), epochs=5), data, tmp_path / "m", progress=False)
    assert result.epochs_run == 1
    head, _, _ = load_run(tmp_path / "m")
    sim = similarity_matrix(head, data.texts, data.videos, data.val_captions)
    assert result.best_val["t2v"] == t2v_v2t_metrics(sim, data.caption_video)["t2v"]


# -- encoding helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["laff_ml", "dllfa"])
def test_encode_helpers_agree_with_similarity(kind):
    videos, texts = random_banks(9, 7)
    head = build_head(tiny_head_config(kind), feature_dims(videos), feature_dims(texts), VOCAB).eval()
    v = encode_videos(head, videos, batch_size=4)
    q = encode_texts(head, texts, batch_size=3)
    sim = similarity_matrix(head, texts, videos, batch_size=4)
    assert v.dtype == np.float32 and v.shape[0] == 9 and q.shape[0] == 7
    if head.exact_index:
        np.testing.assert_allclose(q @ v.T, sim, atol=1e-5)
    cand = np.random.default_rng(0).integers(0, 9, (7, 4))
    np.testing.assert_allclose(rerank_scores(head, texts, videos, cand, batch_size=3),
                               np.take_along_axis(sim, cand, 1), atol=1e-5)
    sub = similarity_matrix(head, texts, videos, text_idx=[5, 1], video_idx=[8, 0, 3])
    np.testing.assert_allclose(sub, sim[[5, 1]][:, [8, 0, 3]], atol=1e-5)


# -- configs and pieces ---------------------------------------------------------------------------
# *_ft configs fine-tune an extractor (fusion/finetune.py, tested in test_finetune*.py), not a head
@pytest.mark.parametrize("path", sorted(p for p in glob.glob("configs/train/*.yaml") if not p.endswith("_ft.yaml")))
def test_bundled_configs_load_and_build(path):
    cfg = load_config(TrainConfig, path)
    tiny = "tiny_" in path
    vdims = {"clip": 64, "x3d": 128, "clip@frames": 64} if tiny else FAKE_VIDEO_DIMS
    tdims = {"clip": 64, "bow": 50} if tiny else FAKE_TEXT_DIMS
    head = build_head(cfg.head, vdims, tdims, 100)
    assert head.video_inputs and head.text_inputs
    if tiny and cfg.head.type in ("laff", "laff_ml", "concat"):
        section = getattr(cfg.head, cfg.head.type)
        frames = ["clip@frames"] if cfg.head.type == "laff_ml" else ["clip"]  # LAFF-ml: the frame level
        assert section.video_features == frames + ["x3d"] and section.text_features == ["clip", "bow", "gru"]


def test_unknown_config_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="dimm"):
        load_config(TrainConfig, "tiny_laff", ["head.laff.dimm=3"], kind="train")
    with pytest.raises(ConfigError, match="lrr"):
        load_config(TrainConfig, "laff", ["optim.lrr=1"], kind="train")
    bad = tmp_path / "bad.yaml"
    bad.write_text("head:\n  type: laff\n  laff:\n    vidoe_features: [clip]\n")
    with pytest.raises(ConfigError, match="vidoe_features"):
        load_config(TrainConfig, bad)
    with pytest.raises(ConfigError, match="val_metric"):
        train(TrainConfig(head=tiny_head_config("laff"), val_metric="t2v/R@3"), random_data(4), tmp_path / "x")
    with pytest.raises(ConfigError, match="recipe"):
        resolve_optim(OptimConfig(recipe="sgd-please"), "laff")


def test_recipes_and_lr_controller():
    laff = resolve_optim(OptimConfig(), "laff_ml")
    assert (laff.name, laff.lr, laff.grad_clip, laff.epoch_decay, laff.plateau_factor, laff.plateau_patience) == \
        ("rmsprop", 1e-4, 2.0, 0.99, 0.5, 2)
    dl = resolve_optim(OptimConfig(), "dllfa")
    assert (dl.name, dl.lr, dl.weight_decay, dl.grad_clip, dl.schedule, dl.warmup) == \
        ("adamw", 1e-4, 0.2, 1.0, "warmup_cosine", 0.1)
    assert resolve_optim(OptimConfig(lr=5e-4), "dllfa").lr == 5e-4
    # plateau: x0.99 per epoch, x0.5 on the third epoch in a row without improvement
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = torch.optim.SGD([p], lr=1e-4)
    ctrl = LrController(opt, laff, total_steps=10)
    for improved in (True, False, False):
        ctrl.end_epoch(improved)
    assert abs(ctrl.lr - 1e-4 * 0.99 ** 3) < 1e-12
    ctrl.end_epoch(False)
    assert abs(ctrl.lr - 1e-4 * 0.99 ** 4 * 0.5) < 1e-12
    # warm-up then cosine to zero
    ctrl = LrController(opt, dl, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(ctrl.lr)
        ctrl.step()
    assert lrs[0] < lrs[5] < lrs[9] and abs(max(lrs) - 1e-4) < 1e-12 and lrs[-1] < 1e-6
    # weight decay spares norms, biases, embeddings, the logit scale and lambda
    videos, texts = random_banks(3, 3)
    head = build_head(tiny_head_config("dllfa"), feature_dims(videos), feature_dims(texts), VOCAB)
    groups = build_optimizer(head, dl, head.no_weight_decay()).param_groups
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.2 and groups[1]["weight_decay"] == 0.0
    for name, p in head.named_parameters():
        expect = p.ndim >= 2 and name not in ("pos.weight",)
        assert (id(p) in decayed) == expect, name


# a validation sequence (t2v mIR per epoch) with plateaus, ties with the best and tiny gains
VAL_SEQUENCE = [0.10, 0.12, 0.12, 0.11, 0.13, 0.13, 0.12, 0.125, 0.14, 0.140001, 0.139, 0.140002, 0.15, 0.15, 0.14]


def _torch_schedule(values, mode="max"):
    """The lr after each epoch with torch's StepLR(x0.99) then ReduceLROnPlateau(factor 0.5, patience 2)."""
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.99)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=0.5, patience=2)
    out = []
    for v in values:
        opt.step()
        step.step()
        plateau.step(v)
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("val_metric", ["t2v/mIR", "t2v/MedR"])
def test_plateau_schedule_matches_torch(val_metric):
    lower = val_metric.endswith("MedR")
    values = [(1.0 / v if lower else v) for v in VAL_SEQUENCE]  # a rank: lower is better
    expect = _torch_schedule(values, "min" if lower else "max")
    cfg = resolve_optim(OptimConfig(), "laff")
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ctrl = LrController(opt, cfg, total_steps=100, lower_is_better=lower)
    best, got = None, []
    for v in values:
        opt.step()
        improved = best is None or (v < best if lower else v > best)
        best = v if improved else best
        ctrl.end_epoch(improved, v)
        got.append(ctrl.lr)
    np.testing.assert_allclose(got, expect, rtol=1e-12)
    if lower:
        return
    # by hand: the lr halves on epoch 8 (6, 7, 8 without a gain) and on epoch 12 (the gains of
    # 10 and 12 are below torch's 1e-4 relative threshold), never on a second bad epoch
    halvings = [e for e in range(1, len(got)) if got[e] / got[e - 1] < 0.9]
    assert [e + 1 for e in halvings] == [8, 12]
    assert got[-1] == pytest.approx(1e-4 * 0.99 ** 15 * 0.25)


def test_lr_controller_state_resumes_the_same_schedule():
    cfg = resolve_optim(OptimConfig(), "laff")
    opt = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    ctrl = LrController(opt, cfg, total_steps=100)
    for v in VAL_SEQUENCE[:7]:
        ctrl.end_epoch(False, v)
    opt2 = torch.optim.RMSprop([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    opt2.load_state_dict(opt.state_dict())
    again = LrController(opt2, cfg, total_steps=100)
    again.load_state_dict(ctrl.state_dict())
    for v in VAL_SEQUENCE[7:]:
        ctrl.end_epoch(False, v)
        again.end_epoch(False, v)
        assert again.lr == ctrl.lr
    with pytest.raises(VidfuseError, match="--fresh"):
        again.load_state_dict({"steps": 0, "epochs": 3, "plateau_mult": 0.5, "bad_epochs": 1})


def test_epoch_batches_depend_on_seed_and_epoch_only():
    caps = np.arange(23)
    a = epoch_batches(caps, 5, seed=1, epoch=3)
    assert [len(b) for b in a] == [5, 5, 5, 5, 3]
    assert all(np.array_equal(x, y) for x, y in zip(a, epoch_batches(caps, 5, seed=1, epoch=3)))
    assert not np.array_equal(a[0], epoch_batches(caps, 5, seed=1, epoch=4)[0])
    assert sorted(np.concatenate(a).tolist()) == caps.tolist()
    assert [len(b) for b in epoch_batches(np.arange(11), 5, 0, 1)] == [5, 5]  # a lone caption is dropped


def test_train_data_validation_names_the_problem(tmp_path):
    data = random_data(4)
    data.caption_video = data.caption_video.copy()
    data.caption_video[0] = 9
    with pytest.raises(DataError, match="caption_video"):
        train(TrainConfig(head=tiny_head_config("laff")), data, tmp_path / "x")
    data = random_data(4)
    data.videos = FeatureBank(vectors={"clip": np.zeros((4, 32), np.float32), "x3d": np.zeros((3, 24), np.float32)})
    with pytest.raises(DataError, match="x3d"):
        data.validate()


def test_dataloader_workers_give_the_same_run(tmp_path):
    data = random_data(6, val_videos=2)
    cfg = tiny_train_config("laff", epochs=1, batch_size=4)
    inline = train(cfg, data, tmp_path / "a", progress=False)
    cfg.num_workers = 1
    workers = train(cfg, data, tmp_path / "b", progress=False)
    assert inline.history == workers.history
