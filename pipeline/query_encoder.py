"""Free text -> the text-side inputs of a trained head (for ``vidfuse search``)."""

from __future__ import annotations

from typing import Sequence

from fusion.data import FeatureBank
from pipeline.text_job import encoder_from_manifest, text_feature_dir
from pipeline.training_set import LEARNED_TEXT_FEATURES, gru_vocabulary


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

    def bank(self, texts: Sequence[str]) -> FeatureBank:
        bank = FeatureBank(vectors={name: encode(list(texts)) for name, encode in self.encoders.items()})
        if self.tokenizer is not None:
            bank.tokens = self.tokenizer.token_ids(list(texts))
        return bank
