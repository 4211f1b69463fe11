"""Extractors: shapes, determinism, preprocessing, registry validation, weights resolution.

Everything runs on the random-init tiny models of ``configs/extract/tiny.yaml``; the network
is never touched (downloads are replaced by functions that fail like an unreachable host).
"""

from __future__ import annotations

import json
import urllib.error
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import extractors.clip as clip_mod
import extractors.weights as weights_mod
from extractors.base import VideoExtractor, resolve_device
from extractors.ircsn import IrCSNExtractor
from extractors.preprocess import FrameTransform
from extractors.registry import (
    _REGISTRY,
    available_extractors,
    build_extractor,
    register_extractor,
)
from extractors.weights import WeightsLoadError, WeightsNotFoundError
from pipeline.config import ExtractConfig
from pipeline.sampling import SamplingConfig, describe_sampling
from vidfuse.config import CONFIG_ROOT, load_config
from vidfuse.errors import ConfigError, VidfuseError

TINY_PATH = CONFIG_ROOT / "extract" / "tiny.yaml"
DEFAULT_PATH = CONFIG_ROOT / "extract" / "default.yaml"
TINY = load_config(ExtractConfig, TINY_PATH)
NAMES = ["clip", "x3d", "ircsn"]
TINY_DIMS = {"clip": 64, "x3d": 128, "ircsn": 256}


def tiny_cfg(name: str, **changes) -> dict:
    cfg = dict(TINY.extractors[name])
    cfg.update(changes)
    return cfg


def random_frames(n: int, h: int = 48, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> dict[str, VideoExtractor]:
    torch.manual_seed(0)
    return {name: build_extractor(name, TINY.extractors[name], device="cpu") for name in NAMES}


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Empty caches, downloads that fail like an unreachable host, and a record of the attempts."""
    attempts = []

    def unreachable(*args, **kwargs):
        attempts.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("VIDFUSE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setattr(weights_mod, "download_url", unreachable)
    monkeypatch.setattr(clip_mod, "_download_open_clip", unreachable)
    return attempts


# --- tiny.yaml: shapes, dtypes, describe ------------------------------------------------------


def test_tiny_yaml_builds_every_extractor_random(tiny):
    assert sorted(TINY.extractors) == available_extractors() == sorted(NAMES)
    for name, ex in tiny.items():
        assert ex.name == name
        assert ex.dim == TINY_DIMS[name]
        assert ex.weights == "random"
        assert ex.device == torch.device("cpu")
        assert not ex.model.training
        assert all(not p.requires_grad for p in ex.model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_units_embed_pool_describe(tiny, name):
    ex = tiny[name]
    idx = ex.sample_indices(50)
    s = ex.config.sampling
    frames = random_frames(idx.size)
    units = ex.preprocess(frames)
    assert units.dtype == torch.float32 and units.device.type == "cpu"
    if ex.level == "frame":
        assert idx.shape == (s.num_frames,)
        assert units.shape == (s.num_frames, 3, 64, 64)
    else:
        assert idx.shape == (s.clips, s.clip_len)
        assert units.shape == (s.clips, 3, s.clip_len, 64, 64)

    feats = ex.embed(units)
    assert feats.dtype == np.float32 and feats.shape == (units.shape[0], ex.dim)
    assert np.isfinite(feats).all() and feats.std() > 0
    video = ex.pool(feats)
    assert video.dtype == np.float32 and video.shape == (ex.dim,)
    np.testing.assert_allclose(video, feats.mean(axis=0), rtol=1e-6)

    desc = ex.describe()
    assert {k: desc[k] for k in ("extractor", "weights", "dim", "level")} == {
        "extractor": name, "weights": "random", "dim": TINY_DIMS[name], "level": ex.level
    }
    assert desc["sampling"] == describe_sampling(s)
    assert desc["model"] == {"clip": "vidfuse-tiny", "x3d": "x3d_tiny", "ircsn": "ircsn_50_w8"}[name]
    json.dumps(desc)  # goes into manifest.json as is


def test_clip_frames_are_unit_norm_and_pool_is_their_plain_mean(tiny):
    ex = tiny["clip"]
    feats = ex.embed(ex.preprocess(random_frames(8)))
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(ex.pool(feats)) < 1.0  # mean of distinct unit vectors, not re-normalised


@pytest.mark.parametrize("name", NAMES)
def test_same_frames_same_features_and_batching_does_not_matter(tiny, name):
    ex = tiny[name]
    n = ex.sample_indices(40).size
    frames = random_frames(n, seed=1)
    a = ex.embed(ex.preprocess(frames))
    b = ex.embed(ex.preprocess(frames.copy()))
    np.testing.assert_array_equal(a, b)
    other = ex.embed(ex.preprocess(random_frames(n, seed=2)))
    assert not np.allclose(a, other)  # features do depend on the frames

    units = ex.preprocess(frames)
    old = ex.config.batch_size
    try:
        ex.config.batch_size = 1
        one_by_one = ex.embed(units)
    finally:
        ex.config.batch_size = old
    np.testing.assert_allclose(one_by_one, a, rtol=1e-4, atol=1e-5)


def test_embed_of_no_units_is_empty(tiny):
    out = tiny["clip"].embed(torch.zeros((0, 3, 64, 64)))
    assert out.shape == (0, 64) and out.dtype == np.float32
    with pytest.raises(ValueError):
        tiny["clip"].pool(out)


# --- preprocessing ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("h,w", [(37, 91), (91, 37), (20, 30), (64, 64), (480, 270)])
def test_preprocess_odd_sizes(tiny, name, h, w):
    ex = tiny[name]
    n = ex.sample_indices(30).size
    units = ex.preprocess(random_frames(n, h, w))
    expected = (n, 3, 64, 64) if ex.level == "frame" else (n // 4, 3, 4, 64, 64)
    assert tuple(units.shape) == expected
    assert torch.isfinite(units).all()


def test_preprocess_keeps_aspect_and_crops_the_centre():
    # 32x96 (3:1): white middle third, black outer thirds. Shorter side -> 64 gives 64x192,
    # whose centre 64x64 crop is exactly the white third.
    frame = np.zeros((1, 32, 96, 3), dtype=np.uint8)
    frame[:, :, 32:64] = 255
    t = FrameTransform(resize=64, crop=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    out = t(frame)
    assert out.shape == (1, 3, 64, 64)
    assert out[..., 3:-3].min() > 0.97  # away from the antialiased borders: all white
    tall = t(frame.transpose(0, 2, 1, 3).copy())  # 96x32: the same along the other axis
    assert tall[..., 3:-3, :].min() > 0.97


def test_clip_preprocess_matches_open_clips_pil_pipeline(tiny):
    """Same pixels as open_clip's eval transform (PIL bicubic resize, centre crop), to one grey level."""
    import open_clip
    from PIL import Image

    ex = tiny["clip"]
    frames = random_frames(3, 45, 97, seed=5)
    reference = open_clip.image_transform(64, is_train=False, mean=ex.transform.mean, std=ex.transform.std)
    expected = torch.stack([reference(Image.fromarray(f)) for f in frames])
    grey = (ex.preprocess(frames) - expected).abs() * torch.tensor(ex.transform.std).view(1, 3, 1, 1) * 255
    assert grey.max() <= 2.001 and grey.mean() < 0.05  # rounding differences of the two resamplers


def test_preprocess_normalises_with_the_models_statistics(tiny):
    gray = np.full((4, 40, 50, 3), 128, dtype=np.uint8)
    for name, ex in tiny.items():
        mean = torch.tensor(ex.transform.mean).view(3, 1, 1)
        std = torch.tensor(ex.transform.std).view(3, 1, 1)
        expected = (128 / 255 - mean) / std
        units = ex.preprocess(np.concatenate([gray] * (ex.sample_indices(30).size // 4)))
        first = units[0] if ex.level == "frame" else units[0, :, 0]
        torch.testing.assert_close(first, expected.expand_as(first), atol=1e-4, rtol=0)


def test_clip_level_accepts_frames_shaped_like_the_indices(tiny):
    ex = tiny["x3d"]
    frames = random_frames(ex.sample_indices(30).size)
    flat = ex.preprocess(frames)
    nested = ex.preprocess(frames.reshape(2, 4, *frames.shape[1:]))  # VideoReader.get_frames(2-D indices)
    torch.testing.assert_close(flat, nested, rtol=0, atol=0)
    assert torch.equal(flat[1, :, 0], ex.transform(frames[4:5])[0])  # clip 1 starts at frame 4


def test_preprocess_refuses_wrong_frames(tiny):
    ex = tiny["clip"]
    with pytest.raises(ValueError, match="uint8"):
        ex.preprocess(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        ex.preprocess(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="clips of 4"):
        tiny["x3d"].preprocess(random_frames(6))


# --- registry ---------------------------------------------------------------------------------


def test_unknown_extractor_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown extractor 'resnet'.*clip.*ircsn.*x3d"):
        build_extractor("resnet", {})


@pytest.mark.parametrize(
    "name,cfg,key",
    [
        ("clip", {"pretrained": None, "model": "vidfuse-tiny", "num_frame": 8}, "num_frame"),
        ("x3d", {"pretrained": None, "variant": "tiny", "sampling": {"clip_length": 4}}, "sampling.clip_length"),
        ("ircsn", {"pretrained": None, "batch_size": "many"}, "batch_size"),
    ],
)
def test_bad_config_key_is_named(name, cfg, key):
    with pytest.raises(ConfigError) as info:
        build_extractor(name, cfg)
    assert f"extractor '{name}'" in str(info.value) and repr(key) in str(info.value)


def test_semantic_config_errors():
    with pytest.raises(ConfigError, match="sampling.kind: clips"):
        build_extractor("x3d", tiny_cfg("x3d", sampling={"kind": "uniform"}))
    with pytest.raises(ConfigError, match="frame-level"):
        build_extractor("clip", tiny_cfg("clip", sampling={"kind": "clips"}))
    with pytest.raises(ConfigError, match="'variant'"):
        build_extractor("x3d", tiny_cfg("x3d", variant="xxl"))
    with pytest.raises(ConfigError, match="temporal window"):
        build_extractor("x3d", tiny_cfg("x3d", sampling={"kind": "clips", "clip_len": 2}))
    with pytest.raises(ConfigError, match="'model'"):
        build_extractor("clip", tiny_cfg("clip", model="ViT-Nope"))
    with pytest.raises(ConfigError, match="sampling.num_frames"):
        build_extractor("clip", tiny_cfg("clip", sampling={"kind": "uniform", "num_frames": 0}))


def test_a_new_extractor_is_one_class_and_the_decorator():
    @dataclass
    class MeanColourConfig:
        sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(num_frames=3))
        pretrained: str | None = None
        batch_size: int = 2

    try:

        @register_extractor("test_mean_colour")
        class MeanColour(VideoExtractor):
            level = "frame"
            Config = MeanColourConfig

            def __init__(self, config, device="auto"):
                super().__init__(config, device)
                self.model, self.dim, self.weights = torch.nn.Identity(), 3, "random"

            def preprocess(self, frames):
                return torch.from_numpy(frames).float().permute(0, 3, 1, 2)

            def _forward(self, batch):
                return batch.mean(dim=(2, 3))

        assert "test_mean_colour" in available_extractors()
        ex = build_extractor("test_mean_colour", {"sampling": {"num_frames": 5}}, device="cpu")
        assert ex.sample_indices(100).shape == (5,)
        feats = ex.embed(ex.preprocess(np.full((5, 4, 4, 3), 7, dtype=np.uint8)))
        np.testing.assert_array_equal(feats, np.full((5, 3), 7.0, dtype=np.float32))
        with pytest.raises(ConfigError, match="'colour'"):
            build_extractor("test_mean_colour", {"colour": "red"})
    finally:
        _REGISTRY.pop("test_mean_colour", None)


def test_device_auto_and_unavailable_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


# --- weights ----------------------------------------------------------------------------------


def test_clip_tag_offline_names_the_file_and_key(no_network, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        build_extractor("clip", {"pretrained": "openai", "cache_dir": str(tmp_path / "empty")})
    msg = str(info.value)
    assert isinstance(info.value, VidfuseError)
    assert len(no_network) == 1  # tried once, failed like a missing network
    assert "download failed" in msg and "URLError" in msg
    assert "open_clip_pytorch_model.bin" in msg and "ViT-B-32.pt" in msg
    assert "extractors.clip.pretrained: /path/to/" in msg


def test_x3d_zoo_tag_offline_names_the_file_and_key(no_network, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        build_extractor("x3d", {"variant": "s", "pretrained": "kinetics400"})
    msg = str(info.value)
    assert len(no_network) == 1
    assert "X3D_S.pyth" in msg and str(tmp_path / "torch_hub" / "checkpoints") in msg
    assert "extractors.x3d.pretrained: /path/to/X3D_S.pyth" in msg


def test_offline_flag_skips_the_download(no_network, monkeypatch, tmp_path):
    monkeypatch.setenv("VIDFUSE_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="VIDFUSE_OFFLINE"):
        build_extractor("clip", {"pretrained": "openai", "cache_dir": str(tmp_path / "empty")})
    with pytest.raises(WeightsNotFoundError, match="X3D_S.pyth"):
        build_extractor("x3d", {"variant": "s", "pretrained": "kinetics400"})
    assert no_network == []


def test_ircsn_needs_a_local_file(no_network):
    with pytest.raises(WeightsNotFoundError) as info:
        build_extractor("ircsn", tiny_cfg("ircsn", pretrained="ig65m"))
    msg = str(info.value)
    assert "not in pytorchvideo's model zoo" in msg and "extractors.ircsn.pretrained: /path/to/" in msg
    assert no_network == []


@pytest.mark.parametrize("name", NAMES)
def test_missing_checkpoint_path_is_named(name, tmp_path):
    missing = str(tmp_path / "nowhere" / "weights.pth")
    with pytest.raises(WeightsNotFoundError, match=f"extractors.{name}.pretrained") as info:
        build_extractor(name, tiny_cfg(name, pretrained=missing))
    assert missing in str(info.value)


def test_unknown_tags_are_weights_errors(no_network):
    with pytest.raises(WeightsNotFoundError, match="known tags: .*'openai'"):
        build_extractor("clip", {"pretrained": "laion5b"})
    with pytest.raises(WeightsNotFoundError, match="kinetics400"):
        build_extractor("x3d", tiny_cfg("x3d", pretrained="kinetics600"))
    with pytest.raises(WeightsNotFoundError, match="no model-zoo weights"):
        build_extractor("x3d", tiny_cfg("x3d", pretrained="kinetics400"))
    assert no_network == []


def test_x3d_zoo_download_then_cache(no_network, monkeypatch, tmp_path):
    """The zoo path end to end with a stand-in file: download once into the hub cache, then reuse it."""
    torch.manual_seed(3)
    source = build_extractor("x3d", {"variant": "s", "pretrained": None, "sampling": {"kind": "clips", "clip_len": 13, "clips": 1}})
    saved = tmp_path / "X3D_S_standin.pyth"
    torch.save({"model_state": source.model.state_dict(), "epoch": 1}, saved)
    downloads = []

    def fake_download(url, destination):
        downloads.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(saved.read_bytes())

    monkeypatch.setattr(weights_mod, "download_url", fake_download)
    cfg = {"variant": "s", "pretrained": "kinetics400", "sampling": {"kind": "clips", "clip_len": 13, "clips": 1}}
    first = build_extractor("x3d", cfg)
    second = build_extractor("x3d", cfg)
    assert downloads == ["https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/X3D_S.pyth"]
    assert (tmp_path / "torch_hub" / "checkpoints" / "X3D_S.pyth").is_file()
    assert first.weights == second.weights == "kinetics400"
    expected = source.model.state_dict()
    for ex in (first, second):  # (a forward pass of X3D-S is too slow for this file; weights say it all)
        got = ex.model.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)


def test_clip_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(11)
    trained = build_extractor("clip", tiny_cfg("clip", quick_gelu=True))
    path = clip_mod.save_clip_checkpoint(trained.model, trained.config, tmp_path / "run" / "clip.pt")
    loaded = build_extractor("clip", tiny_cfg("clip", pretrained=str(path)))  # quick_gelu read from the file
    torch.manual_seed(12)
    fresh = build_extractor("clip", tiny_cfg("clip"))

    assert loaded.weights == str(path) and loaded.describe()["weights"] == str(path)
    assert loaded.quick_gelu is True
    units = trained.preprocess(random_frames(8))
    np.testing.assert_array_equal(loaded.embed(units), trained.embed(units))
    texts = ["a man is singing", "a dog runs on the beach"]
    np.testing.assert_array_equal(loaded.encode_text(texts), trained.encode_text(texts))
    assert not np.allclose(fresh.embed(units), trained.embed(units))

    plain = tmp_path / "plain_state_dict.pt"  # a bare state_dict (e.g. saved by other code) loads too
    torch.save(trained.model.state_dict(), plain)
    again = build_extractor("clip", tiny_cfg("clip", pretrained=str(plain), quick_gelu=True))
    np.testing.assert_array_equal(again.embed(units), trained.embed(units))


def test_clip_checkpoint_of_another_architecture_is_refused(tiny, tmp_path):
    path = tmp_path / "x3d.pt"
    torch.save(tiny["x3d"].model.state_dict(), path)
    with pytest.raises(WeightsLoadError, match="clip: cannot load"):
        build_extractor("clip", tiny_cfg("clip", pretrained=str(path)))
    vidfuse_ckpt = clip_mod.save_clip_checkpoint(tiny["clip"].model, tiny["clip"].config, tmp_path / "c.pt")
    with pytest.raises(WeightsLoadError, match="holds a vidfuse-tiny"):
        build_extractor("clip", {"pretrained": str(vidfuse_ckpt)})  # model: ViT-B-32


def test_load_clip_is_reusable():
    cfg = load_config(clip_mod.ClipConfig, None, ["model=vidfuse-tiny", "pretrained=null"])
    bundle = clip_mod.load_clip(cfg)
    assert bundle.weights == "random" and bundle.dim == 64 and bundle.transform.crop == 64
    tokens = bundle.tokenizer(["hello world"])
    assert tokens.shape == (1, 77)
    assert bundle.model.encode_text(tokens).shape == (1, 64)


@pytest.mark.parametrize("name", ["x3d", "ircsn"])
def test_clip_level_local_checkpoint_round_trip(tiny, name, tmp_path):
    trained = build_extractor(name, tiny_cfg(name))
    torch.manual_seed(21)
    with torch.no_grad():  # stands in for training: random init is seeded, so perturb the weights
        for param in trained.model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    path = tmp_path / f"{name}.pth"
    torch.save({"model_state": trained.model.state_dict()}, path)
    loaded = build_extractor(name, tiny_cfg(name, pretrained=str(path)))
    assert loaded.describe()["weights"] == str(path)
    units = trained.preprocess(random_frames(8))
    np.testing.assert_array_equal(loaded.embed(units), trained.embed(units))
    assert not np.allclose(tiny[name].embed(units), trained.embed(units))


def test_clip_level_checkpoint_mismatch_names_keys(tiny, tmp_path):
    path = tmp_path / "ircsn.pth"
    torch.save(tiny["ircsn"].model.state_dict(), path)
    with pytest.raises(WeightsLoadError, match=r"x3d: checkpoint .* missing \d+: \['blocks"):
        build_extractor("x3d", tiny_cfg("x3d", pretrained=str(path)))


def test_ircsn_key_mapping_hook(tiny, tmp_path, monkeypatch):
    state = {f"backbone.{k}": v for k, v in tiny["ircsn"].model.state_dict().items()}
    path = tmp_path / "other_layout.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(WeightsLoadError, match="unexpected"):
        build_extractor("ircsn", tiny_cfg("ircsn", pretrained=str(path)))
    monkeypatch.setattr(
        IrCSNExtractor, "state_dict_converter", staticmethod(lambda sd: {k.removeprefix("backbone."): v for k, v in sd.items()})
    )
    loaded = build_extractor("ircsn", tiny_cfg("ircsn", pretrained=str(path)))
    units = loaded.preprocess(random_frames(8))
    np.testing.assert_array_equal(loaded.embed(units), tiny["ircsn"].embed(units))


# --- text side --------------------------------------------------------------------------------


def test_encode_text(tiny):
    ex = tiny["clip"]
    texts = ["a man is singing", "two dogs play", "", "a very long caption " * 30]
    out = ex.encode_text(texts)
    assert out.shape == (4, 64) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out, ex.encode_text(texts))
    assert not np.allclose(out[0], out[1])
    old = ex.config.text_batch_size
    try:
        ex.config.text_batch_size = 3
        np.testing.assert_allclose(ex.encode_text(texts), out, rtol=1e-4, atol=1e-5)
    finally:
        ex.config.text_batch_size = old
    assert ex.encode_text([]).shape == (0, 64)
    with pytest.raises(TypeError):
        ex.encode_text("a single string")


# --- the shipped configs, and a real decoded video ---------------------------------------------


def test_default_yaml_validates_and_its_architectures_build():
    cfg = load_config(ExtractConfig, DEFAULT_PATH)
    assert sorted(cfg.extractors) == sorted(NAMES)
    assert cfg.extractors["clip"]["pretrained"] == "openai"
    expected = {"clip": ("ViT-B-32", 512), "x3d": ("x3d_l", 2048), "ircsn": ("ircsn_152", 2048)}
    sampling = {"clip": ("uniform", 12), "x3d": ("clips", 16), "ircsn": ("clips", 32)}
    for name in NAMES:
        ex = build_extractor(name, {**cfg.extractors[name], "pretrained": None}, device="cpu")
        assert (ex.model_name(), ex.dim, ex.weights) == (*expected[name], "random")
        s = ex.config.sampling
        assert (s.kind, s.num_frames if s.kind == "uniform" else s.clip_len) == sampling[name]


def test_default_yaml_ircsn_without_weights_says_what_to_supply():
    cfg = load_config(ExtractConfig, DEFAULT_PATH)
    with pytest.raises(WeightsNotFoundError, match="extractors.ircsn.pretrained"):
        build_extractor("ircsn", cfg.extractors["ircsn"], device="cpu")


def test_real_video_through_every_tiny_extractor(tiny, tmp_path):
    from pipeline.decode import open_video
    from tests.video_factory import write_video

    path = write_video(tmp_path / "v.mp4", num_frames=40, size=(96, 54), pattern="textured")
    with open_video(str(path)) as reader:
        for name, ex in tiny.items():
            idx = ex.sample_indices(reader.info.num_frames)
            units = ex.preprocess(reader.get_frames(idx))
            video = ex.pool(ex.embed(units))
            assert video.shape == (ex.dim,) and np.isfinite(video).all()
