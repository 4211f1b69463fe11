"""CLIP (open_clip) frame features and the matching text tower.

Video side, as LAFF and CLIP4Clip: ``num_frames`` uniformly sampled frames, each through the
image tower; frame embeddings are L2-normalised (CLIP's cosine space, ``normalize: true``) and
the video vector is their plain mean, NOT re-normalised (its norm says how much the frames
agree; cosine-based consumers normalise anyway). The text side uses the same weights.

``load_clip(config)`` is the one place that builds a CLIP from a config (architecture,
weights, tokenizer, frame transform); ``finetune-clip`` uses it and saves its result with
``save_clip_checkpoint`` so ``pretrained: runs/<name>/clip.pt`` loads it back here.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import open_clip
import torch

from extractors.base import VideoExtractor
from extractors.preprocess import RESIZE_MODES, FrameTransform, as_tuple3
from extractors.registry import register_extractor
from extractors.weights import (
    WeightsLoadError,
    WeightsNotFoundError,
    check_reachable,
    local_checkpoint,
    offline,
)
from pipeline.sampling import SamplingConfig
from vidfuse.errors import ConfigError

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(str(files("extractors") / "model_configs"))  # vidfuse-tiny.json, as installed
CHECKPOINT_META_KEY = "vidfuse_clip"


def _register_model_configs() -> None:
    """Make ``vidfuse-tiny`` (a fast random-init CLIP for tests) known to open_clip."""
    known = set(open_clip.list_models())
    if any(p.stem not in known for p in MODEL_CONFIG_DIR.glob("*.json")):
        open_clip.add_model_config(MODEL_CONFIG_DIR)


_register_model_configs()


@dataclass
class ClipConfig:
    model: str = "ViT-B-32"  # open_clip architecture (open_clip.list_models()) or vidfuse-tiny
    pretrained: Optional[str] = "openai"  # open_clip tag | checkpoint path | null (random)
    quick_gelu: Optional[bool] = None  # null: as the weights were trained (openai: true)
    cache_dir: Optional[str] = None  # open_clip download cache (default: HF hub cache, ~/.cache/clip)
    normalize: bool = True  # L2-normalise frame and text embeddings
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(kind="uniform", num_frames=12))
    batch_size: int = 64  # frames per forward pass
    text_batch_size: int = 256  # captions per forward pass


@dataclass
class ClipBundle:
    """What ``load_clip`` returns: everything needed to run (or fine-tune) a CLIP."""

    model: torch.nn.Module  # open_clip CLIP, eval mode, on CPU
    tokenizer: Callable[[Sequence[str]], torch.Tensor]
    transform: FrameTransform  # frames -> image-tower input
    weights: str  # "random", the tag, or the checkpoint path
    quick_gelu: bool
    dim: int


# --- weights ---------------------------------------------------------------------------------


def _download_open_clip(pretrained_cfg: dict, cache_dir: Optional[str]) -> str:
    """open_clip's own downloader (HF hub, else URL), after a quick look whether its host answers;
    tests replace it to simulate no network."""
    hub = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    check_reachable(hub if pretrained_cfg.get("hf_hub") else pretrained_cfg.get("url", hub))
    return open_clip.pretrained.download_pretrained(pretrained_cfg, cache_dir=cache_dir)


def _open_clip_sources(pretrained_cfg: dict, cache_dir: Optional[str]) -> list[tuple[str, list[str], Optional[Path]]]:
    """(where, file names, cached file or None) for each place open_clip would fetch the weights from."""
    sources: list[tuple[str, list[str], Optional[Path]]] = []
    hf = pretrained_cfg.get("hf_hub", "")
    if hf:
        repo, filename = os.path.split(hf)
        names = [filename] if filename else [open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_WEIGHTS_NAME]
        cached = None
        try:
            from huggingface_hub import try_to_load_from_cache

            hits = [try_to_load_from_cache(repo, name, cache_dir=cache_dir) for name in names]
            cached = next((Path(h) for h in hits if isinstance(h, str)), None)
        except ImportError:
            pass
        sources.append((f"https://huggingface.co/{repo}", names, cached))
    url = pretrained_cfg.get("url", "")
    if url:
        name = os.path.basename(url)
        path = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / name
        sources.append((url, [name], path if path.is_file() else None))
    return sources


def resolve_clip_weights(model: str, tag: str, cache_dir: Optional[str] = None) -> tuple[Path, dict]:
    """An open_clip tag -> (checkpoint file, its pretrained cfg): cache first, then download."""
    pretrained_cfg = open_clip.get_pretrained_cfg(model, tag)
    if not pretrained_cfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise WeightsNotFoundError(
            f"clip: {tag!r} is neither a checkpoint file nor a pretrained tag of {model} "
            f"(known tags: {tags or 'none'}); set extractors.clip.pretrained to one, a path, or null"
        )
    sources = _open_clip_sources(pretrained_cfg, cache_dir)
    for _, _, cached in sources:
        if cached is not None:
            return cached, pretrained_cfg
    reason = "downloads disabled by VIDFUSE_OFFLINE/HF_HUB_OFFLINE"
    if not offline():
        log.info("clip: %s weights %r are not cached; downloading from %s", model, tag,
                 " or ".join(where for where, _, _ in sources))
        try:
            target = _download_open_clip(pretrained_cfg, cache_dir)
            if target and Path(target).is_file():
                return Path(target), pretrained_cfg
            reason = "open_clip returned no file"
        except Exception as exc:  # network failures surface as many exception types
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            reason = f"download failed: {type(exc).__name__}: {detail}"
    where = "; or ".join(f"{' or '.join(names)} from {loc}" for loc, names, _ in sources)
    first = sources[0][1][-1] if sources else "weights.pt"
    raise WeightsNotFoundError(
        f"clip: {model} weights {tag!r} are not cached and cannot be downloaded ({reason}). "
        f"Get {where}, and set extractors.clip.pretrained: /path/to/{first} (null = random weights)"
    )


def _is_torchscript(path: Path) -> bool:
    """OpenAI's original .pt files are TorchScript archives, which torch.load(weights_only) refuses."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _peek_meta(path: Path) -> dict:
    """vidfuse's checkpoint metadata (architecture, quick_gelu), read lazily via mmap."""
    if path.suffix == ".safetensors" or not zipfile.is_zipfile(path):
        return {}
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return {}
    meta = checkpoint.get(CHECKPOINT_META_KEY) if isinstance(checkpoint, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def _pretrained_cfg_for_file(model: str, path: Path) -> dict:
    """The pretrained cfg of the tag whose download has this file's name (OpenAI's ViT-B-32.pt
    needs QuickGELU and its own preprocessing), or {} for any other file."""
    for tag in open_clip.list_pretrained_tags_by_model(model):
        cfg = open_clip.get_pretrained_cfg(model, tag)
        if cfg.get("url") and os.path.basename(cfg["url"]) == path.name:
            return dict(cfg)
    return {}


def _load_weights_file(model: torch.nn.Module, path: Path) -> None:
    try:
        if _is_torchscript(path):
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
            model.load_state_dict(state, strict=True)
        else:  # plain/nested state_dict, safetensors, DDP prefixes, third-party layouts
            open_clip.load_checkpoint(model, str(path), strict=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsLoadError(f"clip: cannot load {path} into the configured architecture: {first}") from None


def load_clip(config: ClipConfig) -> ClipBundle:
    """Build the configured CLIP on CPU with its weights (path -> cache -> download, or random)."""
    if open_clip.get_model_config(config.model) is None:
        raise ConfigError(
            f"extractor 'clip': unknown model {config.model!r} (key 'model'); see open_clip.list_models()"
        )
    weights, path, quick_gelu, pretrained_cfg = "random", None, False, {}
    if config.pretrained is not None:
        path = local_checkpoint(config.pretrained, extractor="clip")
        if path is not None:
            weights = str(path)
            meta = _peek_meta(path)
            if meta.get("model") not in (None, config.model):
                raise WeightsLoadError(
                    f"clip: {path} holds a {meta['model']} but the config says model: {config.model}"
                )
            pretrained_cfg = _pretrained_cfg_for_file(config.model, path)
            quick_gelu = bool(meta["quick_gelu"]) if "quick_gelu" in meta else bool(pretrained_cfg.get("quick_gelu"))
        else:
            path, pretrained_cfg = resolve_clip_weights(config.model, config.pretrained, config.cache_dir)
            weights = config.pretrained
            quick_gelu = bool(pretrained_cfg.get("quick_gelu", False))
    if config.quick_gelu is not None:
        quick_gelu = config.quick_gelu
    model = open_clip.create_model(config.model, pretrained=None, force_quick_gelu=quick_gelu, device="cpu")
    if path is not None:
        _load_weights_file(model, path)
    model.eval()
    return ClipBundle(
        model=model,
        tokenizer=open_clip.get_tokenizer(config.model),
        transform=clip_transform(config, pretrained_cfg),
        weights=weights,
        quick_gelu=quick_gelu,
        dim=int(open_clip.get_model_config(config.model)["embed_dim"]),
    )


def _pretrained_cfg_of(config: ClipConfig) -> dict:
    """The pretrained tag's cfg for ``config.pretrained`` (a tag, or a local file named as a tag's
    download), looked up without loading any weights; {} for random init or any other file."""
    if config.pretrained is None:
        return {}
    path = local_checkpoint(config.pretrained, extractor="clip")
    if path is not None:
        return _pretrained_cfg_for_file(config.model, path)
    return dict(open_clip.get_pretrained_cfg(config.model, config.pretrained) or {})


def clip_transform(config: ClipConfig, pretrained_cfg: Optional[dict] = None) -> FrameTransform:
    """The image preprocessing the weights were trained with, from configs alone (no model built):
    open_clip's PreprocessCfg defaults at the vision tower's image size, overlaid with the model
    config's ``preprocess_cfg`` and then the pretrained tag's own (mean/std, interpolation, resize
    mode: SigLIP's tags want 0.5 and squash). ``pretrained_cfg`` defaults to the tag's, looked up."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    model_cfg = open_clip.get_model_config(config.model)
    if model_cfg is None:
        raise ConfigError(f"extractor 'clip': unknown model {config.model!r} (key 'model'); see open_clip.list_models()")
    if pretrained_cfg is None:
        pretrained_cfg = _pretrained_cfg_of(config)
    pp = asdict(PreprocessCfg())
    pp["size"] = model_cfg.get("vision_cfg", {}).get("image_size", pp["size"])
    pp = merge_preprocess_dict(pp, model_cfg.get("preprocess_cfg", {}))
    pp = merge_preprocess_dict(pp, pretrained_cfg)
    size = pp.get("size", 224)
    size = int(size if isinstance(size, int) else min(size))
    mode = pp.get("resize_mode") or "shortest"
    if mode not in RESIZE_MODES:
        raise ConfigError(f"extractor 'clip': the weights ask for resize mode {mode!r}, which vidfuse does not "
                          f"implement (known: {list(RESIZE_MODES)})")
    return FrameTransform(
        resize=size,
        crop=size,
        mean=as_tuple3(pp.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        std=as_tuple3(pp.get("std") or open_clip.OPENAI_DATASET_STD),
        interpolation="bicubic" if pp.get("interpolation", "bicubic") == "bicubic" else "bilinear",
        resize_mode=mode,
    )


def uses_quick_gelu(model: torch.nn.Module) -> bool:
    """Whether a built CLIP runs QuickGELU (OpenAI's weights need it; it is not in the state_dict)."""
    from open_clip.transformer import QuickGELU

    return any(isinstance(m, QuickGELU) for m in model.modules())


def save_clip_checkpoint(model: torch.nn.Module, config: ClipConfig, path: str | Path) -> Path:
    """Write a (fine-tuned) CLIP so that ``pretrained: <path>`` with the same ``model`` loads it.

    The file is ``{"state_dict": ..., "vidfuse_clip": {"model", "quick_gelu"}}``, which open_clip's
    own ``load_checkpoint`` reads as well. Written to a temporary name, then renamed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"model": config.model, "quick_gelu": uses_quick_gelu(model)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"state_dict": state, CHECKPOINT_META_KEY: meta}, tmp)
    tmp.replace(path)
    return path


# --- extractor -------------------------------------------------------------------------------


@register_extractor("clip")
class ClipExtractor(VideoExtractor):
    """Per-frame CLIP image embeddings; ``encode_text`` embeds captions with the same CLIP."""

    level = "frame"
    Config = ClipConfig

    def __init__(self, config: ClipConfig, device: str | torch.device = "auto"):
        super().__init__(config, device)
        bundle = load_clip(config)
        self.model = bundle.model
        self.tokenizer = bundle.tokenizer
        self.transform = bundle.transform
        self.weights = bundle.weights
        self.quick_gelu = bundle.quick_gelu
        self.dim = bundle.dim
        self._finish_model()

    def model_name(self) -> str:
        return type(self).model_name_for(self.config)

    @classmethod
    def model_name_for(cls, config: ClipConfig) -> str:
        return config.model

    @classmethod
    def dim_for(cls, config: ClipConfig) -> int:
        model_cfg = open_clip.get_model_config(config.model)
        if model_cfg is None:
            raise ConfigError(
                f"extractor 'clip': unknown model {config.model!r} (key 'model'); see open_clip.list_models()"
            )
        return int(model_cfg["embed_dim"])

    @classmethod
    def weights_label(cls, config: ClipConfig) -> str:
        if config.pretrained is None:
            return "random"
        path = local_checkpoint(config.pretrained, extractor="clip")
        if path is not None:
            return str(path)
        if not open_clip.get_pretrained_cfg(config.model, config.pretrained):
            tags = open_clip.list_pretrained_tags_by_model(config.model)
            raise WeightsNotFoundError(
                f"clip: {config.pretrained!r} is neither a checkpoint file nor a pretrained tag of {config.model} "
                f"(known tags: {tags or 'none'}); set extractors.clip.pretrained to one, a path, or null"
            )
        return config.pretrained

    @classmethod
    def frame_transform_for(cls, config: ClipConfig) -> FrameTransform:
        """The weights' own preprocessing (see :func:`clip_transform`), without building the model."""
        return clip_transform(config)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch, normalize=self.config.normalize)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> float32 [N, dim] with the same CLIP (L2-normalised when ``normalize``)."""
        if isinstance(texts, str):
            raise TypeError("encode_text expects a sequence of strings, got a single str")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.config.text_batch_size):
                tokens = self.tokenizer(texts[start : start + self.config.text_batch_size]).to(self.device)
                out.append(self.model.encode_text(tokens, normalize=self.config.normalize).float().cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def _describe_extra(self) -> dict:
        return {
            "normalized": bool(self.config.normalize),
            "pooling": "mean of L2-normalised frame embeddings" if self.config.normalize else "mean of frame embeddings",
            "quick_gelu": self.quick_gelu,
            "preprocess": self.transform.describe(),
        }
