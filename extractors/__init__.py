"""Video and caption feature extractors behind a registry (``build_extractor("clip", cfg)``)."""

from extractors.registry import available_extractors, build_extractor, register_extractor

__all__ = ["available_extractors", "build_extractor", "register_extractor"]
