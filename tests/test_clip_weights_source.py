"""CLIP frames are preprocessed as the pretrained tag says (SigLIP: mean/std 0.5, 'squash'), and
a download from a host that takes no connection fails in seconds, not after a library's retries."""

from __future__ import annotations

import socket

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import extractors.clip as clip_mod
import extractors.weights as weights_mod
from extractors.clip import ClipConfig, load_clip
from extractors.preprocess import FrameTransform
from extractors.weights import WeightsNotFoundError

SIGLIP = open_clip.get_pretrained_cfg("ViT-B-16-SigLIP", "webli")  # what a SigLIP tag asks for


def test_siglip_tags_ask_for_their_own_preprocessing():
    assert SIGLIP["mean"] == SIGLIP["std"] == (0.5, 0.5, 0.5) and SIGLIP["resize_mode"] == "squash"


def test_a_tag_s_preprocess_config_overrides_the_model_s(tmp_path, monkeypatch):
    """Built with pretrained=None, the model carries only its architecture's preprocessing."""
    model = open_clip.create_model("vidfuse-tiny", pretrained=None)
    weights = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, weights)
    monkeypatch.setattr(clip_mod, "resolve_clip_weights", lambda model, tag, cache_dir=None: (weights, dict(SIGLIP)))
    bundle = load_clip(ClipConfig(model="vidfuse-tiny", pretrained="webli"))
    size = bundle.transform.crop
    assert bundle.transform == FrameTransform(resize=size, crop=size, mean=(0.5,) * 3, std=(0.5,) * 3,
                                              interpolation="bicubic", resize_mode="squash")
    assert bundle.transform.describe()["resize_mode"] == "squash"
    plain = load_clip(ClipConfig(model="vidfuse-tiny", pretrained=None)).transform
    assert plain.resize_mode == "shortest" and plain.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert "resize_mode" not in plain.describe()  # folders extracted before the option keep their hash


def test_squash_matches_open_clip_s_own_transform():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 48, 96, 3), dtype=np.uint8)  # 2:1, so squash and crop differ a lot
    ours = FrameTransform(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic",
                          resize_mode="squash")(frames)
    theirs = open_clip.image_transform(32, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash",
                                       interpolation="bicubic")
    expected = torch.stack([theirs(Image.fromarray(f)) for f in frames])
    assert ours.shape == expected.shape == (2, 3, 32, 32)
    # tensor vs PIL resampling: within about two grey levels on average (2 / 255 / 0.5 = 0.016)
    assert float((ours - expected).abs().mean()) < 0.016
    cropped = FrameTransform(resize=32, crop=32, mean=(0.5,) * 3, std=(0.5,) * 3, interpolation="bicubic")(frames)
    assert float((cropped - expected).abs().mean()) > 0.1


@pytest.fixture
def no_route(monkeypatch):
    """Every TCP connection fails, as offline; the libraries' downloaders record being called."""
    calls = []

    def refuse(address, timeout=None, *args, **kwargs):
        calls.append(("connect", address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.delenv("VIDFUSE_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", lambda *a, **k: calls.append("open_clip"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: calls.append("torch.hub"))
    return calls


def test_offline_clip_download_fails_at_the_first_connection(no_route, tmp_path):
    with pytest.raises(WeightsNotFoundError) as info:
        clip_mod.resolve_clip_weights("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert no_route == [("connect", ("huggingface.co", 443), weights_mod.PROBE_TIMEOUT_S)]  # once, no library retries
    assert "no connection to huggingface.co:443" in str(info.value) and "VIDFUSE_OFFLINE=1" in str(info.value)


def test_offline_zoo_download_fails_at_the_first_connection(no_route, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    url = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/X3D_S.pyth"
    with pytest.raises(WeightsNotFoundError, match="no connection to dl.fbaipublicfiles.com:443"):
        weights_mod.resolve_url_checkpoint(url, extractor="x3d", tag="kinetics400", model="X3D-S")
    assert no_route == [("connect", ("dl.fbaipublicfiles.com", 443), weights_mod.PROBE_TIMEOUT_S)]
