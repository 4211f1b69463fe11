"""The GRU's vocabulary (LAFF/W2VV++ ``gru``): its own, not the bag of words'.

Words of the *training* captions seen at least ``min_count`` times, stopwords **kept**
(ordered as :class:`extractors.text_bow.BowVocabulary` orders them), after four special
tokens: ``<pad>`` = 0 (never read: the GRU packs sequences by length), ``<start>`` = 1,
``<end>`` = 2, ``<unk>`` = 3 (any word outside the vocabulary); word ``i`` of the vocabulary
is id ``i + 4``. A caption becomes ``<start> w_1 ... w_n <end>``, tokenised as every own
text encoder tokenises (:func:`extractors.text_bow.tokenize`).

Saved beside the bag-of-words vocabulary as ``gru_vocab.json`` (the same JSON layout).
"""

from __future__ import annotations

import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from extractors.text_bow import BowVocabulary, capped_tokens

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>", "<unk>")
PAD, START, END, UNK = range(len(SPECIAL_TOKENS))



class GruVocabulary:
    """Token ids for the GRU text feature; ``len()`` counts the special tokens too."""

    def __init__(self, words: BowVocabulary):
        self.words = words

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 5) -> "GruVocabulary":
        """From the training captions only (test words stay ``<unk>``), stopwords kept."""
        return cls(BowVocabulary.build(texts, min_count, stopwords=()))

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5) -> "GruVocabulary":
        """From :func:`~extractors.text_bow.word_counts` of the training captions, stopwords kept."""
        return cls(BowVocabulary.from_counts(counts, min_count, stopwords=()))

    @property
    def tokens(self) -> list[str]:
        """The token of every id, in id order."""
        return list(SPECIAL_TOKENS) + self.words.words

    def __len__(self) -> int:
        return len(SPECIAL_TOKENS) + len(self.words)

    def id_of(self, word: str) -> int:
        i = self.words.index.get(word)
        return UNK if i is None else i + len(SPECIAL_TOKENS)

    def token_ids(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, offsets)``: text ``i`` is ``ids[offsets[i]:offsets[i+1]]``, int64, ``<start> ... <end>``."""
        ids: list[int] = []
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        for i, text in enumerate(texts):
            ids.append(START)
            ids.extend(self.id_of(tok) for tok in capped_tokens(text))
            ids.append(END)
            offsets[i + 1] = len(ids)
        return np.asarray(ids, dtype=np.int64), offsets

    def save(self, path: str | os.PathLike) -> None:
        self.words.save(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "GruVocabulary":
        return cls(BowVocabulary.load(path))
