"""Where model weights come from: explicit local path -> library cache -> download (online only).

Weights are never invented: when a config names weights that cannot be found, the error says
which file to supply and which config key takes its path. ``pretrained: null`` is the only way
to get random weights, and ``describe()`` then records ``"weights": "random"``.

Downloads can be skipped outright (no network timeouts) with ``VIDFUSE_OFFLINE=1`` or
Hugging Face's ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import torch

from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".pyth", ".bin", ".safetensors", ".ckpt", ".tar")
StateDictConverter = Callable[[dict], dict]


class WeightsNotFoundError(VidfuseError):
    """The configured weights are neither a local file, nor cached, nor downloadable now."""


class WeightsLoadError(VidfuseError):
    """A weights file exists but does not fit the configured architecture (or is not a checkpoint)."""


def offline() -> bool:
    """True when the user asked not to touch the network."""
    flags = (os.environ.get("VIDFUSE_OFFLINE", ""), os.environ.get("HF_HUB_OFFLINE", ""))
    return any(f.strip().lower() in {"1", "true", "yes", "on"} for f in flags)


PROBE_TIMEOUT_S = 3.0  # a host that takes no TCP connection in this long is taken as unreachable


def check_reachable(url: str) -> None:
    """ConnectionError at once when ``url``'s host (or the proxy for it) takes no connection.

    Why: offline, the download libraries retry for tens of seconds (Hugging Face's hub about 45 s,
    printing each retry) before the clear weights error; one connection attempt says it in seconds.
    """
    parsed = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parsed.scheme)
    if proxy and not urllib.request.proxy_bypass(parsed.hostname or ""):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConnectionError(f"no connection to {host}:{port} within {PROBE_TIMEOUT_S:.0f} s ({exc}); "
                              "without network, VIDFUSE_OFFLINE=1 skips downloads") from None


def looks_like_path(value: str) -> bool:
    """A ``pretrained`` value meant as a file (rather than a tag such as ``openai``)."""
    return (
        os.sep in value
        or "/" in value
        or value.startswith((".", "~"))
        or value.lower().endswith(CHECKPOINT_SUFFIXES)
    )


def local_checkpoint(value: str, *, extractor: str) -> Optional[Path]:
    """The file ``value`` names, None if it is not path-like; a path-like value that is missing is an error."""
    candidate = Path(value).expanduser()
    if candidate.is_file():
        return candidate
    if looks_like_path(value):
        if candidate.exists():
            raise WeightsNotFoundError(f"{extractor}: pretrained {value!r} is not a file")
        raise WeightsNotFoundError(
            f"{extractor}: weights file not found: {value!r} (key extractors.{extractor}.pretrained; "
            "give an existing checkpoint path, a known tag, or null for random weights)"
        )
    return None


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where pytorchvideo's zoo files live."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_url(url: str, destination: Path) -> None:
    """Fetch ``url`` to ``destination`` (a single point tests replace to simulate a network failure)."""
    check_reachable(url)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    torch.hub.download_url_to_file(url, str(partial), progress=True)
    partial.replace(destination)


def resolve_url_checkpoint(url: str, *, extractor: str, tag: str, model: str) -> Path:
    """A zoo checkpoint: the torch.hub cache, else a download, else a clear error naming the file."""
    filename = os.path.basename(url)
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached
    reason = "downloads disabled (VIDFUSE_OFFLINE/HF_HUB_OFFLINE)"
    if not offline():
        log.info("%s: downloading %s weights %s -> %s", extractor, model, url, cached)
        try:
            download_url(url, cached)
            return cached
        except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError...)
            reason = f"download failed: {type(exc).__name__}: {exc}"
    raise WeightsNotFoundError(
        f"{extractor}: {model} weights {tag!r} not found in the cache ({cached}) and not downloadable "
        f"({reason}). Fetch {url} elsewhere and put {filename} in {cached.parent}, or set "
        f"extractors.{extractor}.pretrained: /path/to/{filename} (null = random weights)"
    )


def read_state_dict(path: Path, *, extractor: str, keys: tuple[str, ...] = ("model_state", "state_dict", "model")) -> dict:
    """The tensors of a checkpoint file: a plain state_dict or one nested under a usual key."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file

            checkpoint: Any = load_file(str(path), device="cpu")
        else:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsLoadError(f"{extractor}: cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from None
    for key in keys:
        if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, Mapping) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise WeightsLoadError(f"{extractor}: {path} holds no state_dict (expected a mapping of tensors, or one under {keys})")
    state = dict(checkpoint)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_state_dict_strict(
    model: torch.nn.Module,
    state_dict: dict,
    *,
    extractor: str,
    source: str,
    convert: Optional[StateDictConverter] = None,
) -> None:
    """Load every tensor or fail naming the keys that do not match (no silent partial loads)."""
    if convert is not None:
        state_dict = convert(state_dict)
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shape)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label} {len(keys)}: {keys[:5]}{more}")
        raise WeightsLoadError(
            f"{extractor}: checkpoint {source} does not fit the configured architecture: " + "; ".join(parts)
        )
    model.load_state_dict(state_dict, strict=True)
