"""Video and caption feature extractors behind a registry (``build_extractor("clip", cfg)``).

The registry is imported on first use, not with the package: the text encoders (bow, w2v)
are imported on their own by a torch-free ``vidfuse search``, which needs none of it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["available_extractors", "build_extractor", "register_extractor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("extractors.registry"), name)
    raise AttributeError(f"module 'extractors' has no attribute {name!r}")
