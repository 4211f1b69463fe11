"""Name -> extractor class. A new extractor is one module with ``@register_extractor("name")``.

``build_extractor`` validates the user's settings against the extractor's own ``Config``
dataclass (an OmegaConf structured schema), so a typo or a wrong type is refused with the
extractor and the key named, instead of silently falling back to a default.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, TypeVar

from omegaconf import DictConfig

from vidfuse.config import merge_config
from vidfuse.errors import ConfigError

_REGISTRY: dict[str, type] = {}
_BUILTIN_MODULES = ("extractors.clip", "extractors.x3d", "extractors.ircsn")
_builtins_loaded = False

C = TypeVar("C", bound=type)


def register_extractor(name: str) -> Callable[[C], C]:
    """Class decorator: makes ``cls`` buildable by ``name`` (sets ``cls.name``)."""

    def decorator(cls: C) -> C:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"extractor name {name!r} already registered by {existing.__module__}.{existing.__qualname__}")
        for attr in ("level", "Config"):
            if not hasattr(cls, attr):
                raise TypeError(f"extractor {cls.__qualname__} must define {attr}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _builtins_loaded = True


def available_extractors() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def extractor_class(name: str) -> type:
    """The registered class (its ``Config`` is the schema of the settings)."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown extractor {name!r}; available: {sorted(_REGISTRY)}") from None


def validate_config(name: str, config: Mapping[str, Any] | DictConfig | Any | None = None) -> Any:
    """The extractor's settings merged over its defaults, as a ``Config`` instance."""
    cls = extractor_class(name)
    layers = [] if config is None else [config]
    return merge_config(cls.Config, *layers, source=f"extractor {name!r}")


MODEL_INIT_SEED = 0


def build_extractor(
    name: str,
    config: Mapping[str, Any] | DictConfig | Any | None = None,
    device: str = "auto",
):
    """A ready extractor (model built, weights loaded, eval mode) from its name and settings.

    The model is built with torch's RNG fixed (the caller's RNG state is left as it was):
    every Beam worker, every rerun, ``extract-text`` and ``finetune-clip`` build their own
    copy, and with random weights (``pretrained: null``) an unseeded initialisation would
    give each a different model under one manifest hash.
    """
    import torch

    cls = extractor_class(name)
    settings = validate_config(name, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_INIT_SEED)
        return cls(settings, device=device)


def describe_extractor(name: str, config: Mapping[str, Any] | DictConfig | Any | None = None) -> tuple[Any, dict]:
    """(validated settings, manifest fields) of an extractor, from its config and weights file
    alone: no model is built (the launcher of a job describes; the workers build)."""
    cls = extractor_class(name)
    settings = validate_config(name, config)
    return settings, cls.describe_config(settings)
