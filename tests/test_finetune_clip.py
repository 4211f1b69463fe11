"""finetune-clip (clip-ft): CLIP trained end to end, loaded back by the clip extractor.

One tiny fine-tuning run (module fixture, the tiny config on a synthetic set) is measured
through the pipeline's own outputs: `extract` + `extract-text` with the tiny extraction
config (before) and with the run's extraction config (after), cosine of the caption
feature vs the video feature, on the val split and on a test split never used for model
selection.

Split design: a from-scratch 64-d CLIP learns in a CPU minute what the objects of its
training scenes look like and are called, not a general visual vocabulary. Each synthetic
video has a contrast partner (the same scene played backwards, other captions); val and
test hold partners of training videos: unseen videos and unseen captions, over the
objects seen in training.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from extractors.registry import build_extractor
from fusion.checkpoint import CheckpointError
from fusion.finetune import FinetuneModel
from fusion.clip_ft import (CLIP_FT, CLIP_FT_INFO, EXTRACT_CONFIG, ClipFtConfig, ClipFtDataError, batch_captions,
                            build_start_model, load_clip_ft_data, random_segment_indices, run_finetune_clip,
                            zero_shot_metrics)
from index.metrics import t2v_v2t_metrics
from pipeline.captions import read_captions
from pipeline.config import ExtractConfig
from pipeline.extract_job import run_extraction
from pipeline.features import load_feature_set
from pipeline.manifest import read_manifest
from pipeline.text_job import run_text_extraction
from extractors.registry import build_extractor
from pipeline.training_set import check_clip_pairing
from pipeline.video_files import NoVideosError
from extract_helpers import IN_PROCESS
from vidfuse.cli import main
from vidfuse.config import load_config
from vidfuse.errors import ConfigError
from vidfuse.synth import generate_dataset

N_VIDEOS = 96  # 48 contrast pairs
EPOCHS = 24


def tiny_cfg(*overrides: str) -> ClipFtConfig:
    return load_config(ClipFtConfig, "tiny_clip_ft", list(overrides), kind="train")


def write_splits(folder: Path, **splits: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (folder / f"{name}.txt").write_text("".join(f"{v}\n" for v in ids))
    return folder


def partner_splits(n: int) -> dict[str, list[str]]:
    """val / test: the second video of the first / second sixth of the pairs; train: the rest."""
    pairs, sixth = n // 2, n // 12
    val = [f"video{2 * p + 1}" for p in range(sixth)]
    test = [f"video{2 * p + 1}" for p in range(sixth, 2 * sixth)]
    held = set(val) | set(test)
    return {"train": [f"video{i}" for i in range(2 * pairs) if f"video{i}" not in held], "val": val, "test": test}


def link_videos(src: Path, dst: Path, ids) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for v in ids:
        (dst / f"{v}.mp4").symlink_to(src / f"{v}.mp4")
    return dst


def extract_features(videos: Path, captions: Path, splits: Path, config: str | Path, out: Path) -> Path:
    """`vidfuse extract --extractors clip` + `vidfuse extract-text --encoders clip` into ``out``."""
    cfg = load_config(ExtractConfig, config, ["output.formats=[parquet]"], kind="extract")
    run_extraction(str(videos), str(out), cfg, extractors=["clip"], beam_args=IN_PROCESS, device="cpu", progress=False)
    run_text_extraction(str(captions), str(out), cfg, encoders=["clip"], splits_dir=str(splits), device="cpu",
                        progress=False)
    return out


def feature_metrics(features: Path, captions: Path, video_ids: list[str]) -> dict:
    """Zero-shot retrieval from written features: cosine of text clip vs video clip (no head)."""
    videos, texts = load_feature_set(str(features / "clip")), load_feature_set(str(features / "text" / "clip"))
    V = np.stack([videos.get(v) for v in video_ids])
    caps = [c for c in read_captions(captions) if c.video_id in set(video_ids)]
    T = np.stack([texts.get(c.caption_id) for c in caps])
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    return t2v_v2t_metrics(T @ V.T, np.array([video_ids.index(c.video_id) for c in caps]))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("clipft")
    ds = generate_dataset(root / "synth", N_VIDEOS, 0, width=64, height=64, duration=(1.0, 1.5), progress=False)
    splits = partner_splits(N_VIDEOS)
    return SimpleNamespace(root=root, ds=ds, splits=splits, splits_dir=write_splits(root / "splits", **splits))


@pytest.fixture(scope="module")
def finetuned(synth):
    run = synth.root / "run"
    torch.manual_seed(0)
    result = run_finetune_clip(tiny_cfg(f"epochs={EPOCHS}"), str(synth.ds.videos_dir), str(synth.ds.captions_txt),
                               str(run), str(synth.splits_dir), progress=False)
    held = link_videos(synth.ds.videos_dir, synth.root / "held_out", synth.splits["val"] + synth.splits["test"])
    args = (held, synth.ds.captions_txt, synth.splits_dir)
    before = extract_features(*args, "tiny", synth.root / "features_base")
    after = extract_features(*args, run / EXTRACT_CONFIG, synth.root / "features_ft")
    return SimpleNamespace(run=run, result=result, before=before, after=after)


# --- the result ----------------------------------------------------------------------------------


def test_finetuning_raises_zero_shot_recall_of_the_clip_features(synth, finetuned):
    caps = synth.ds.captions_txt
    for split, r1_gain, mir_gain in (("val", 15.0, 0.15), ("test", 7.5, 0.08)):
        before = feature_metrics(finetuned.before, caps, synth.splits[split])["t2v"]
        after = feature_metrics(finetuned.after, caps, synth.splits[split])["t2v"]
        chance_r1 = 100.0 / len(synth.splits[split])
        assert before["R@1"] < 3 * chance_r1, (split, before)  # random weights: about chance
        assert after["R@1"] >= before["R@1"] + r1_gain, (split, before, after)
        assert after["mIR"] >= before["mIR"] + mir_gain, (split, before, after)
    # the run's own validation measured the same thing: epoch 0 = the tiny extractor's model
    history = finetuned.result.history
    assert history[0]["epoch"] == 0 and history[0]["baseline"]
    base_val = feature_metrics(finetuned.before, caps, synth.splits["val"])["t2v"]
    assert history[0]["t2v"]["R@1"] == pytest.approx(base_val["R@1"])
    assert history[0]["t2v"]["mIR"] == pytest.approx(base_val["mIR"], abs=1e-4)
    best_val = feature_metrics(finetuned.after, caps, synth.splits["val"])["t2v"]
    assert finetuned.result.best_val["t2v"]["R@1"] == pytest.approx(best_val["R@1"])
    assert finetuned.result.baseline_val["t2v"]["R@1"] == pytest.approx(base_val["R@1"])


def test_run_folder_holds_config_metrics_checkpoints_and_extract_config(synth, finetuned):
    run, result = finetuned.run, finetuned.result
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(EPOCHS + 1))
    assert sum(r["best"] for r in lines) >= 1 and lines[result.best_epoch]["best"]
    trained = len(synth.splits["train"]) - len(synth.splits["train"]) % 8  # full batches of 8
    assert all(r["skipped"] == 0 and r["frames"] in (8 * trained, 8 * len(synth.splits["train"])) for r in lines[1:])
    assert result.best_metric == max(r["val_metric"] for r in lines[1:])
    cfg = load_config(ClipFtConfig, run / "config.yaml")  # loadable again, with the recipe filled in
    assert cfg.optim.name == "adamw" and cfg.epochs == EPOCHS
    info = json.loads((run / CLIP_FT_INFO).read_text())
    assert info["epoch"] == result.best_epoch and info["base_weights"] == "random"
    assert info["train_videos"] == len(synth.splits["train"]) and info["val_videos"] == len(synth.splits["val"])
    assert (run / "last.pt").is_file() and not list(run.glob(".*tmp*"))


def test_checkpoint_loads_in_the_clip_extractor_and_the_manifests_record_it(synth, finetuned):
    ckpt = str((finetuned.run / CLIP_FT).resolve())
    tiny_clip = load_config(ExtractConfig, "tiny", kind="extract").extractors["clip"]
    base = build_extractor("clip", tiny_clip, device="cpu")  # as extraction builds random weights
    tuned = build_extractor("clip", {**tiny_clip, "pretrained": ckpt}, device="cpu")
    assert tuned.weights == ckpt and tuned.describe()["weights"] == ckpt
    frames = base.preprocess(np.random.default_rng(0).integers(0, 255, (4, 48, 64, 3), dtype=np.uint8))
    assert not np.allclose(base.embed(frames), tuned.embed(frames), atol=1e-3)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in tuned.model.state_dict().items())
    video, text = read_manifest(str(finetuned.after / "clip")), read_manifest(str(finetuned.after / "text" / "clip"))
    assert video.weights == ckpt and text.weights == ckpt and video.model == "vidfuse-tiny"
    check_clip_pairing({"clip": video}, {"text/clip": text})  # extract and extract-text agree
    assert read_manifest(str(finetuned.before / "clip")).weights == "random"
    f_before = load_feature_set(str(finetuned.before / "clip"))
    f_after = load_feature_set(str(finetuned.after / "clip"))
    vid = synth.splits["val"][0]
    assert not np.allclose(f_before.get(vid), f_after.get(vid), atol=1e-3)
    assert np.array_equal(f_before.frame_indices(vid), f_after.frame_indices(vid))  # same frames, new weights


# --- resume ----------------------------------------------------------------------------------------


def small_splits(synth, root: Path) -> Path:
    train = synth.splits["train"][:14]
    return write_splits(root, train=train, val=synth.splits["val"][:6])


def comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_s"} for r in history]


def test_a_run_killed_after_an_epoch_resumes_to_the_straight_runs_result(synth, tmp_path):
    splits = small_splits(synth, tmp_path / "splits")
    args = (str(synth.ds.videos_dir), str(synth.ds.captions_txt))
    cfg = tiny_cfg("epochs=3", "batch_size=4", "optim.schedule=warmup_cosine")  # the lr depends on the step
    straight = run_finetune_clip(cfg, *args, str(tmp_path / "straight"), str(splits), progress=False)
    killed = run_finetune_clip(cfg, *args, str(tmp_path / "resumed"), str(splits), progress=False, stop_after=1)
    assert killed.epochs_run == 1 and [r["epoch"] for r in killed.history] == [0, 1]
    # resumed with 2 DataLoader workers: random frames depend on (seed, epoch, video), not on workers
    resumed = run_finetune_clip(tiny_cfg("epochs=3", "batch_size=4", "optim.schedule=warmup_cosine", "num_workers=2"),
                                *args, str(tmp_path / "resumed"), str(splits), progress=False)
    assert resumed.epochs_run == straight.epochs_run == 3
    assert comparable(resumed.history) == comparable(straight.history)
    assert resumed.best_epoch == straight.best_epoch and resumed.best_val == straight.best_val
    a = torch.load(tmp_path / "straight" / CLIP_FT, weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / CLIP_FT, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a finished run is not retrained; a changed recipe is refused, naming the key
    again = run_finetune_clip(cfg, *args, str(tmp_path / "straight"), str(splits), progress=False)
    assert comparable(again.history) == comparable(straight.history)
    with pytest.raises(CheckpointError, match="optim.lr"):
        run_finetune_clip(tiny_cfg("epochs=3", "batch_size=4", "optim.schedule=warmup_cosine", "optim.lr=0.01"), *args,
                          str(tmp_path / "straight"), str(splits), progress=False)


def test_gradient_accumulation_steps_the_optimiser_once_per_accum_batches(synth, tmp_path):
    splits = small_splits(synth, tmp_path / "splits")  # 14 train videos: batches of 4, 4, 4, 2
    cfg = tiny_cfg("epochs=1", "batch_size=4", "accum_steps=3", "validate_before=false")
    result = run_finetune_clip(cfg, str(synth.ds.videos_dir), str(synth.ds.captions_txt), str(tmp_path / "run"),
                               str(splits), progress=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert last["lr"]["steps"] == 2  # batches 1-3, then the epoch's remaining batch
    assert [r["epoch"] for r in result.history] == [1] and result.history[0]["frames"] == 14 * 8


# --- bad input -------------------------------------------------------------------------------------


def test_missing_video_folder_is_a_one_line_cli_error(synth, tmp_path, capsys):
    rc = main(["finetune-clip", "--videos", str(tmp_path / "nope"), "--captions", str(synth.ds.captions_txt),
               "--splits", str(synth.splits_dir), "--config", "tiny_clip_ft", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "finetune-clip: error: video folder not found" in err and str(tmp_path / "nope") in err
    with pytest.raises(NoVideosError):
        load_clip_ft_data(str(tmp_path / "nope"), str(synth.ds.captions_txt), str(synth.splits_dir))


def test_captions_whose_videos_are_absent(synth, tmp_path, caplog):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(synth.ds.video_path("video0"), other / "unrelated.mp4")
    with pytest.raises(ClipFtDataError, match=r"none of the \d+ train videos with captions .* is under .*other"):
        load_clip_ft_data(str(other), str(synth.ds.captions_txt), str(synth.splits_dir))
    # some present: a warning with the count, training goes on without them
    present = synth.splits["train"][:10] + synth.splits["val"][:3]
    some = link_videos(synth.ds.videos_dir, tmp_path / "some", present)
    with caplog.at_level(logging.WARNING, logger="fusion.clip_ft"):
        data = load_clip_ft_data(str(some), str(synth.ds.captions_txt), str(synth.splits_dir))
    assert data.train.ids == synth.splits["train"][:10] and data.val.ids == synth.splits["val"][:3]
    assert len(data.train.missing) == len(synth.splits["train"]) - 10
    text = caplog.text
    assert f"{len(synth.splits['train']) - 10} of {len(synth.splits['train'])} train videos" in text
    assert f"{len(synth.splits['val']) - 3} of {len(synth.splits['val'])} val videos" in text


def test_unknown_or_wrong_config_keys_are_refused_naming_the_key(synth, tmp_path, capsys):
    with pytest.raises(ConfigError, match="loss.tpye"):
        tiny_cfg("loss.tpye=infonce")
    with pytest.raises(ConfigError, match="batch_size"):
        tiny_cfg("batch_size=many")
    common = ["finetune-clip", "--videos", str(synth.ds.videos_dir), "--captions", str(synth.ds.captions_txt),
              "--out", str(tmp_path / "run")]
    assert main(common + ["--config", "tiny_clip_ft", "--set", "clip_lr=0.1"]) == 2
    assert "clip_lr" in capsys.readouterr().err
    assert main(common + ["--config", "laff"]) == 2  # a fusion-head config is not a clip-ft config
    assert "head" in capsys.readouterr().err
    for bad, key in (("loss.type=contrastive", "loss.type"), ("clip.sampling.kind=fps", "clip.sampling.kind"),
                     ("captions_per_video=-1", "captions_per_video"), ("val_metric=t2v/R@3", "val_metric")):
        assert main(common + ["--config", "tiny_clip_ft", "--set", bad]) == 2, bad
        assert key in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_an_undecodable_video_is_skipped_listed_and_counted(synth, tmp_path, caplog, capsys):
    """Through the CLI: a broken file among the train videos costs a warning, not the run."""
    ids = synth.splits["train"][:8]
    videos = link_videos(synth.ds.videos_dir, tmp_path / "videos", ids + synth.splits["val"][:4])
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x17" * 300)
    captions = tmp_path / "captions.txt"
    lines = [line for line in synth.ds.captions_txt.read_text().splitlines() if line.split("#")[0] in set(ids)
             | set(synth.splits["val"][:4])]
    captions.write_text("\n".join(lines + ["broken#0 a red circle moves left", "broken#1 a red ball slides"]) + "\n")
    write_splits(tmp_path, train=ids + ["broken"], val=synth.splits["val"][:4])
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="fusion.clip_ft"):
        rc = main(["finetune-clip", "--videos", str(videos), "--captions", str(captions), "--config", "tiny_clip_ft",
                   "--out", str(run), "--set", "epochs=1", "--set", "batch_size=3", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "1 undecodable videos skipped" in out and str(run / CLIP_FT) in out
    assert "epoch 1: skipped 1 of 9 videos that could not be decoded: broken (" in caplog.text
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["epoch"] == 1 and record["skipped"] == 1
    assert record["frames"] == 8 * 8  # the 8 good videos, 8 frames each
    assert (run / CLIP_FT).is_file() and (run / EXTRACT_CONFIG).is_file()


# --- pieces ----------------------------------------------------------------------------------------


def test_bundled_configs():
    from fusion.clip_ft import resolve_clip_ft_config

    laff = resolve_clip_ft_config(load_config(ClipFtConfig, "clip_ft", kind="train"))
    assert (laff.clip.model, laff.clip.pretrained, laff.clip.sampling.num_frames) == ("ViT-B-32", "openai", 8)
    assert laff.loss.type == "triplet" and laff.optim.name == "adamw"
    assert laff.optim.lr * laff.clip_lr_scale == pytest.approx(1e-6)  # LAFF: CLIP at base / 100
    tiny = resolve_clip_ft_config(tiny_cfg())
    tiny_extract = load_config(ExtractConfig, "tiny", kind="extract").extractors["clip"]
    assert (tiny.clip.model, tiny.clip.pretrained) == (tiny_extract["model"], tiny_extract["pretrained"])
    assert tiny.clip.sampling.num_frames == tiny_extract["sampling"]["num_frames"]


def test_training_frames_are_one_random_frame_per_segment():
    rng = np.random.default_rng(0)
    for n in (100, 37, 8, 3, 1):
        draws = np.stack([random_segment_indices(n, 8, rng) for _ in range(200)])
        assert draws.min() >= 0 and draws.max() < n
        assert np.all(np.diff(draws, axis=1) >= 0)  # in order, repeats only when n < 8
        if n >= 8:
            k = np.arange(8)
            assert np.all(draws >= (k * n) // 8) and np.all(draws < ((k + 1) * n + 7) // 8)
            assert len(np.unique(draws[:, 0])) == len(range(0, (n + 7) // 8))  # the whole segment is used
    a = random_segment_indices(50, 8, np.random.default_rng([0, 1, 2]))
    assert np.array_equal(a, random_segment_indices(50, 8, np.random.default_rng([0, 1, 2])))


def test_captions_of_one_video_are_positives_of_it_only(synth):
    data = load_clip_ft_data(str(synth.ds.videos_dir), str(synth.ds.captions_txt), str(synth.splits_dir))
    texts, positives = batch_captions(data.train, np.array([3, 0, 5]), 0, np.random.default_rng(0))
    sizes = [len(data.train.captions[i]) for i in (3, 0, 5)]
    assert len(texts) == sum(sizes) and positives.shape == (sum(sizes), 3)
    assert positives.sum(dim=1).eq(1).all()  # every caption belongs to exactly one video
    assert positives.sum(dim=0).tolist() == sizes  # and every caption of a video is its positive
    texts, positives = batch_captions(data.train, np.array([3, 0]), 2, np.random.default_rng(0))
    assert len(texts) == 4 and positives.sum(dim=0).tolist() == [2, 2]
    assert set(texts[:2]) <= set(data.train.captions[3])


def test_zero_shot_metrics_leave_out_undecodable_videos(synth, tmp_path):
    data = load_clip_ft_data(str(synth.ds.videos_dir), str(synth.ds.captions_txt), str(synth.splits_dir))
    val = data.val
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    val.ids, val.paths, val.captions = val.ids + ["bad"], val.paths + [str(tmp_path / "bad.mp4")], \
        val.captions + [["a caption"]]
    clip = build_start_model("clip", tiny_cfg().clip)
    result = zero_shot_metrics(FinetuneModel(clip, clip), clip.tokenizer, clip.transform, val, tiny_cfg().clip.sampling)
    assert list(result.failed) == ["bad"] and result.videos == len(val) - 1
    assert result.captions == val.num_captions - 1
