"""Free text -> the text-side inputs of a trained head (for ``vidfuse search``).

Torch-free: the torch path wraps the arrays in a ``FeatureBank``, the exported (ONNX) path
feeds them to onnxruntime as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from pipeline.text_features import LEARNED_TEXT_FEATURES, encoder_from_manifest, gru_vocabulary, text_feature_dir

if TYPE_CHECKING:
    from fusion.data import FeatureBank


class QueryEncoder:
    """Encoders of every text feature a head reads, loaded once and kept warm."""

    def __init__(self, features_dir: str, text_names: Sequence[str], device: str = "cpu"):
        self.encoders = {
            name: encoder_from_manifest(text_feature_dir(features_dir, name), device)
            for name in text_names
            if name not in LEARNED_TEXT_FEATURES
        }
        self.tokenizer = None
        self.vocab_size = None  # as pipeline.training_set.load_text_bank counts it
        if any(name in LEARNED_TEXT_FEATURES for name in text_names):
            self.tokenizer = gru_vocabulary(features_dir)
            self.vocab_size = len(self.tokenizer)

    def vectors(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """``[N, D]`` of each stored text feature, as its encoder gives it."""
        return {name: np.asarray(encode(list(texts))) for name, encode in self.encoders.items()}

    def tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids, offsets)`` of the GRU vocabulary, or None when the head reads no token ids."""
        return None if self.tokenizer is None else self.tokenizer.token_ids(list(texts))

    def bank(self, texts: Sequence[str]) -> "FeatureBank":
        from fusion.data import FeatureBank

        return FeatureBank(vectors=self.vectors(texts), tokens=self.tokens(texts))
