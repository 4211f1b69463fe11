"""Bag-of-words sentence encoder (LAFF/W2VV++ ``bow_nsw``) and the tokenizer all own text encoders share.

- :func:`tokenize`: NFKD-fold accents, lowercase, split on every non-alphanumeric character
  (as LAFF's text processing: "don't" -> "don", "t"). The GRU's token ids, the bag of words and
  the word2vec mean all use it.
- :class:`BowVocabulary`: words of the *training* captions seen at least ``min_count`` times,
  stopwords removed, ordered by count (descending) then alphabetically, so the same captions
  always give the same vocabulary and the same vector layout.
- :class:`BowEncoder`: per-caption raw word counts over the vocabulary (no normalisation, as
  LAFF feeds them), over the first :data:`MAX_WORDS` (77) words of a caption. The GRU has its own
  vocabulary (stopwords kept, the same word cap): :mod:`extractors.text_gru`.

Vocabulary file: JSON ``{"format": "vidfuse-bow-vocab", "version": 1, "min_count": 5,
"stopwords": [...], "words": [...], "counts": [...]}``. :meth:`BowVocabulary.load` also reads
W2VV++/LAFF count files (plain text, one ``word count`` per line, in vocabulary order).
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

VOCAB_FORMAT = "vidfuse-bow-vocab"
_TOKEN_RE = re.compile(r"[a-z0-9]+")

# The official LAFF English stopword list (153 words, its text processing's), as data.
DEFAULT_STOPWORDS: frozenset[str] = frozenset(
    """
    i me my myself we our ours ourselves you your yours yourself yourselves he him his
    himself she her hers herself it its itself they them their theirs themselves what which
    who whom this that these those am is are was were be been being have has had having do
    does did doing a an the and but if or because as until while of at by for with about
    against between into through during before after above below to from up down in out on
    off over under again further then once here there when where why how all any both each
    few more most other some such no nor not only own same so than too very s t can will
    just don should now d ll m o re ve y ain aren couldn didn doesn hadn hasn haven isn ma
    mightn mustn needn shan shouldn wasn weren won wouldn
    """.split()
)


# The GRU and the bag of words read at most this many words of a caption: the length CLIP's
# text tower (and with it the LAFF code's CLIP tokenizer) cuts captions at. MSR-VTT captions
# have about 9 words; one 10 MB caption would otherwise be a GRU sequence of 2M steps.
MAX_WORDS = 77


def capped_tokens(text: str) -> list[str]:
    """The first :data:`MAX_WORDS` tokens of ``text``: what the GRU and the bag of words read."""
    return tokenize(text)[:MAX_WORDS]


def overlong(texts: Sequence[str]) -> list[tuple[int, int]]:
    """(position, word count) of the texts longer than :data:`MAX_WORDS` words."""
    # a text of at most MAX_WORDS characters cannot hold more words: most are never tokenized here
    counts = ((i, len(tokenize(t))) for i, t in enumerate(texts) if len(t) > MAX_WORDS)
    return [(i, n) for i, n in counts if n > MAX_WORDS]


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word the GRU and the bag of words read (:func:`capped_tokens`) occurs in ``texts``."""
    counter: Counter[str] = Counter()
    for text in texts:
        counter.update(capped_tokens(text))
    return counter


class VocabularyError(VidfuseError):
    """A vocabulary file is malformed, or a vocabulary would be empty."""


def fold(text: str) -> str:
    """Lowercase ASCII form of ``text``: accents folded (café -> cafe), any other non-ASCII
    character a space (so "it’s" splits as "it's" does)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c if c.isascii() else " " for c in decomposed if not unicodedata.combining(c)).lower()


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens of ``text``: the runs of ``[a-z0-9]`` after :func:`fold`."""
    return _TOKEN_RE.findall(fold(text))


@dataclass
class BowConfig:
    min_count: int = 5  # words seen fewer times in the training captions are dropped
    remove_stopwords: bool = True  # LAFF's bow_nsw; the GRU vocabulary of W2VV++ keeps them (False)


class BowVocabulary:
    """Ordered training vocabulary: ``words[i]`` has ``counts[i]`` occurrences and position ``index[w] == i``."""

    def __init__(self, words: Sequence[str], counts: Sequence[int], min_count: int = 1,
                 stopwords: Iterable[str] = ()):
        if len(words) != len(counts):
            raise VocabularyError(f"{len(words)} words but {len(counts)} counts")
        self.words: list[str] = list(words)
        self.counts: list[int] = [int(c) for c in counts]
        self.index: dict[str, int] = {}
        for i, w in enumerate(self.words):
            if w in self.index:
                raise VocabularyError(f"word {w!r} appears twice in the vocabulary")
            self.index[w] = i
        self.min_count = int(min_count)
        self.stopwords: frozenset[str] = frozenset(stopwords)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 5,
              stopwords: Iterable[str] = DEFAULT_STOPWORDS) -> "BowVocabulary":
        """Vocabulary of ``texts`` (training captions only, so test words stay unknown)."""
        return cls.from_counts(word_counts(texts), min_count, stopwords)

    @classmethod
    def from_counts(cls, counts: Mapping[str, int], min_count: int = 5,
                    stopwords: Iterable[str] = DEFAULT_STOPWORDS) -> "BowVocabulary":
        """Vocabulary of the :func:`word_counts` of the training captions (the bow's and the GRU's
        come from one count: a caption file is then tokenized once for both)."""
        stop = frozenset(stopwords)
        counter = {w: c for w, c in counts.items() if w not in stop}
        kept = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
        if not kept:
            raise VocabularyError(
                f"empty vocabulary: no word occurs {min_count} or more times ({len(counter)} distinct words seen)"
            )
        logger.info("bow vocabulary: %d of %d distinct words kept (min count %d)", len(kept), len(counter), min_count)
        return cls([w for w, _ in kept], [c for _, c in kept], min_count=min_count, stopwords=stop)

    @classmethod
    def from_config(cls, config: BowConfig, texts: Iterable[str]) -> "BowVocabulary":
        return cls.from_config_counts(config, word_counts(texts))

    @classmethod
    def from_config_counts(cls, config: BowConfig, counts: Mapping[str, int]) -> "BowVocabulary":
        return cls.from_counts(counts, config.min_count, DEFAULT_STOPWORDS if config.remove_stopwords else ())

    def tokenize(self, text: str) -> list[str]:
        return tokenize(text)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def save(self, path: str | os.PathLike) -> None:
        payload = {
            "format": VOCAB_FORMAT,
            "version": 1,
            "min_count": self.min_count,
            "stopwords": sorted(self.stopwords),
            "words": self.words,
            "counts": self.counts,
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=0), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "BowVocabulary":
        """A vocabulary saved by :meth:`save`, or a W2VV++/LAFF ``word count`` text file."""
        from pipeline.captions import read_text_file  # same UTF-8 error reporting as caption files

        path = Path(path)
        try:
            text = read_text_file(path)
        except VidfuseError as exc:
            raise VocabularyError(str(exc)) from None
        if text.lstrip().startswith("{"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise VocabularyError(f"{path} line {exc.lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
                raise VocabularyError(f"{path}: not a vidfuse vocabulary (expected \"format\": \"{VOCAB_FORMAT}\")")
            for key in ("words", "counts"):
                if not isinstance(data.get(key), list):
                    raise VocabularyError(f"{path}: missing list {key!r}")
            return cls(data["words"], data["counts"], data.get("min_count", 1), data.get("stopwords", ()))
        words, counts = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].isdigit():
                raise VocabularyError(f"{path} line {lineno}: expected 'word count', got {line.strip()!r}")
            words.append(parts[0])
            counts.append(int(parts[1]))
        if not words:
            raise VocabularyError(f"{path}: empty vocabulary file")
        return cls(words, counts, min_count=min(counts))


class BowEncoder:
    """Caption -> word-count vector over a :class:`BowVocabulary` (``dim == len(vocab)``)."""

    name = "bow"

    def __init__(self, vocab: BowVocabulary):
        self.vocab = vocab

    @property
    def dim(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[N, |V|]``: how often each vocabulary word occurs in each text (raw counts).

        Dense from the same columns as :meth:`encode_sparse`, without scipy (a query at search
        time is one row, and scipy's import is a fifth of a torch-free search's start-up)."""
        cols, indptr = self._columns(texts)
        out = np.zeros((len(texts), len(self.vocab)), dtype=np.float32)
        np.add.at(out, (np.repeat(np.arange(len(texts)), np.diff(indptr)), cols), 1.0)
        return out

    def encode_sparse(self, texts: Sequence[str]):
        """The counts of :meth:`encode` as a ``scipy.sparse.csr_matrix`` (what shards store)."""
        import scipy.sparse

        cols, indptr = self._columns(texts)
        data = np.ones(len(cols), dtype=np.float32)
        out = scipy.sparse.csr_matrix((data, cols, indptr), shape=(len(texts), len(self.vocab)))
        out.sum_duplicates()  # a word twice in a caption: one entry holding 2
        return out

    def _columns(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vocabulary column of every in-vocabulary token, CSR row pointers) of ``texts``."""
        index = self.vocab.index
        cols: list[int] = []
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        for row, text in enumerate(texts):
            cols.extend(c for c in (index.get(tok) for tok in capped_tokens(text)) if c is not None)
            indptr[row + 1] = len(cols)
        return np.asarray(cols, dtype=np.int32), indptr


def build_bow_encoder(config: BowConfig, train_texts: Iterable[str]) -> BowEncoder:
    """Factory: vocabulary from the training captions, then the encoder."""
    return BowEncoder(BowVocabulary.from_config(config, train_texts))
