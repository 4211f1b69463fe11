"""word2vec sentence encoder: mean of the vectors of a caption's in-vocabulary, non-stopword words.

Word vectors load from the three layouts they are distributed in (:func:`load_word2vec`):

- binary word2vec (``.bin``): ASCII header ``"N D\\n"``, then per word ``<word> <D little-endian
  float32>`` (the C tool adds a newline after each vector, gensim does not; both read);
- text word2vec/GloVe: optional ``"N D"`` header, then ``word v1 ... vD`` per line;
- a BigFile folder (how LAFF/W2VV++ ship ``word2vec/flickr/vec500flickr30m``):
  ``feature.bin`` (float32 row-major), ``id.txt`` (words, whitespace separated), ``shape.txt``.

A BigFile is memory-mapped, not read; the binary format interleaves words and vectors, so it
is scanned through a memory map and its vectors copied once into one matrix.

A caption with no usable word (all stopwords / out of vocabulary) encodes to the zero vector;
:attr:`W2VEncoder.stats` counts them and :meth:`W2VEncoder.encode` logs how many there were.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from extractors.text_bow import DEFAULT_STOPWORDS, fold, tokenize
from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

BIGFILE_PARTS = ("feature.bin", "id.txt", "shape.txt")  # see pipeline.bigfile


class W2VFormatError(VidfuseError):
    """A word-vector file is missing, truncated, or not in a known word2vec layout."""


def _parse_header(line: bytes) -> tuple[int, int] | None:
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        n, d = int(parts[0]), int(parts[1])
        return (n, d) if d > 0 else None
    return None


def _load_binary(path: Path, mm: mmap.mmap) -> tuple[list[str], np.ndarray]:
    eol = mm.find(b"\n")
    header = _parse_header(mm[: eol if eol >= 0 else len(mm)])
    if header is None:
        raise W2VFormatError(f"{path}: binary word2vec must start with a header line 'N D'")
    n, d = header
    matrix = np.empty((n, d), dtype=np.float32)
    words: list[str] = []
    pos, size, nbytes = eol + 1, len(mm), 4 * d
    bad_utf8 = 0
    for i in range(n):
        while pos < size and mm[pos] in b" \n\r\t":
            pos += 1
        end = mm.find(b" ", pos)
        if end < 0 or end - pos > 10_000 or pos >= size:
            raise W2VFormatError(
                f"{path}: record {i + 1} of {n} (after header) truncated or malformed at byte {pos}: "
                "expected '<word> <D float32>'"
            )
        raw = mm[pos:end]
        try:
            words.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            words.append(raw.decode("utf-8", errors="replace"))
            bad_utf8 += 1
        start = end + 1
        if start + nbytes > size:
            raise W2VFormatError(
                f"{path}: record {i + 1} of {n} ({words[-1]!r}) truncated: needs {nbytes} bytes of vector, "
                f"{size - start} left (header says N={n}, D={d})"
            )
        matrix[i] = np.frombuffer(mm, dtype="<f4", count=d, offset=start)
        pos = start + nbytes
    if mm[pos:].strip():
        logger.warning("%s: data after the %d records the header announces; ignored", path, n)
    if bad_utf8:
        logger.warning("%s: %d words are not valid UTF-8 (undecodable bytes replaced)", path, bad_utf8)
    return words, matrix


def _load_text(path: Path) -> tuple[list[str], np.ndarray]:
    words: list[str] = []
    rows: list[np.ndarray] = []
    n = d = None
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if lineno == 1:
                    header = _parse_header(line.encode())
                    if header is not None:
                        n, d = header
                        continue
                if d is None:
                    d = len(parts) - 1
                    if d < 1:
                        raise W2VFormatError(f"{path} line {lineno}: expected 'word v1 ... vD', got one field")
                if len(parts) < d + 1:
                    raise W2VFormatError(f"{path} line {lineno}: {len(parts) - 1} values, expected {d}")
                try:
                    vec = np.array(parts[-d:], dtype=np.float32)
                except ValueError:
                    raise W2VFormatError(f"{path} line {lineno}: non-numeric vector value; expected 'word v1 ... v{d}'") from None
                words.append(" ".join(parts[:-d]))  # GloVe has a few words with spaces
                rows.append(vec)
    except UnicodeDecodeError as exc:
        raise W2VFormatError(
            f"{path}: not valid UTF-8 text near byte {exc.start}; is it a binary word2vec file (name it .bin)?"
        ) from None
    if not rows:
        raise W2VFormatError(f"{path}: no word vectors found")
    if n is not None and n != len(rows):
        raise W2VFormatError(f"{path}: header says {n} words, file has {len(rows)}")
    return words, np.stack(rows)


def _load_bigfile(path: Path) -> tuple[list[str], np.ndarray]:
    from pipeline.bigfile import BigFileError, read_bigfile  # lazy: pulls in the shard stack

    try:
        return read_bigfile(str(path))
    except BigFileError as exc:
        raise W2VFormatError(f"word vectors: {exc}") from None


def _looks_binary(path: Path, head: bytes, d: int) -> bool:
    if path.suffix.lower() == ".bin":
        return True
    if path.suffix.lower() in (".txt", ".vec"):
        return False
    lines = head.split(b"\n")
    if len(lines) < 2:
        return True
    try:
        parts = lines[1].decode("utf-8").split()
        [float(x) for x in parts[-d:]]
        return len(parts) < d + 1
    except (UnicodeDecodeError, ValueError):
        return True


def load_word2vec(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """``(words, matrix [N, D] float32)`` from a binary/text word2vec file or a BigFile folder."""
    path = Path(path)
    if path.is_dir():
        words, matrix = _load_bigfile(path)
        kind = "bigfile"
    elif not path.is_file():
        raise W2VFormatError(
            f"word vectors not found: {path} (give a word2vec .bin/.txt file or a BigFile folder with "
            f"{list(BIGFILE_PARTS)}, e.g. LAFF's word2vec/flickr/vec500flickr30m)"
        )
    else:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        if not head.strip():
            raise W2VFormatError(f"{path}: empty file")
        header = _parse_header(head.split(b"\n", 1)[0])
        if header is not None and _looks_binary(path, head, header[1]):
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                words, matrix = _load_binary(path, mm)
            kind = "binary"
        else:
            words, matrix = _load_text(path)
            kind = "text"
    logger.info("loaded %d word vectors of dim %d (%s) from %s", len(words), matrix.shape[1], kind, path)
    return words, matrix


@dataclass
class W2VConfig:
    path: Optional[str] = None  # word2vec .bin / text file, or BigFile folder
    remove_stopwords: bool = True  # LAFF's w2v_nsw
    unique_words: bool = False  # True: each distinct word counted once (as W2VV++/LAFF's BigFile.read does)


@dataclass
class W2VStats:
    texts: int = 0
    empty: int = 0  # texts encoded as the zero vector: no in-vocabulary non-stopword word
    tokens: int = 0  # non-stopword tokens seen
    oov: int = 0  # of those, not in the word vectors
    empty_examples: list = field(default_factory=list)  # a few of the texts that gave zero vectors


class W2VEncoder:
    """Caption -> mean word vector (``dim == D``)."""

    name = "w2v"

    def __init__(self, words: Sequence[str], matrix: np.ndarray, remove_stopwords: bool = True,
                 unique_words: bool = False, stopwords: Iterable[str] = DEFAULT_STOPWORDS):
        if matrix.ndim != 2 or matrix.shape[0] != len(words):
            raise W2VFormatError(f"{len(words)} words for a matrix of shape {tuple(matrix.shape)}")
        self.words = list(words)
        self.matrix = matrix
        self.stopwords = frozenset(stopwords) if remove_stopwords else frozenset()
        self.unique_words = unique_words
        self.stats = W2VStats()
        # Tokens are folded to lowercase ASCII; a word known only as "Obama" or "naïve" is found
        # through its folded form. Exact entries win; otherwise the first (most frequent) spelling.
        self._row: dict[str, int] = {}
        for i, w in enumerate(self.words):
            self._row.setdefault(w, i)
        for i, w in enumerate(self.words):
            self._row.setdefault(fold(w), i)

    @classmethod
    def from_config(cls, config: W2VConfig) -> "W2VEncoder":
        if not config.path:
            raise W2VFormatError("w2v encoder needs 'path': a word2vec .bin/.txt file or a BigFile folder")
        words, matrix = load_word2vec(config.path)
        return cls(words, matrix, config.remove_stopwords, config.unique_words)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def row_of(self, word: str) -> int | None:
        """Row of ``word`` in :attr:`matrix`, or None when it has no vector."""
        return self._row.get(word)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 ``[N, D]``: mean vector of each text's in-vocabulary, non-stopword tokens; zeros if none."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        empty = 0
        for i, text in enumerate(texts):
            tokens = [t for t in tokenize(text) if t not in self.stopwords]
            if self.unique_words:
                tokens = list(dict.fromkeys(tokens))
            rows = [r for r in (self._row.get(t) for t in tokens) if r is not None]
            self.stats.tokens += len(tokens)
            self.stats.oov += len(tokens) - len(rows)
            if rows:
                out[i] = np.asarray(self.matrix[rows], dtype=np.float32).mean(axis=0)
            else:
                empty += 1
                if len(self.stats.empty_examples) < 5:
                    self.stats.empty_examples.append(text)
        self.stats.texts += len(texts)
        self.stats.empty += empty
        if empty:
            logger.warning("w2v: %d of %d texts have no in-vocabulary non-stopword word; encoded as zero vectors",
                           empty, len(texts))
        return out

    def embedding_matrix_for(self, tokens: Sequence[str], seed: int = 0, init_range: float = 1.0) -> np.ndarray:
        """float32 ``[len(tokens), D]`` initial GRU word embeddings: row ``i`` for token id ``i``.

        ``tokens``: every id's token (:attr:`extractors.text_gru.GruVocabulary.tokens`). A token
        with a vector gets it; the others uniform(-init_range, init_range) from ``seed`` (as the
        official LAFF code), except ``<pad>`` (never read), zero.
        """
        rng = np.random.default_rng(seed)
        out = rng.uniform(-init_range, init_range, size=(len(tokens), self.dim)).astype(np.float32)
        found = [(i, r) for i, w in enumerate(tokens) if (r := self._row.get(w)) is not None]
        if found:
            dst, src = zip(*found)
            out[list(dst)] = np.asarray(self.matrix[list(src)], dtype=np.float32)
        if tokens and tokens[0] == "<pad>":
            out[0] = 0.0
        logger.info("embedding matrix: %d of %d vocabulary tokens have a word2vec vector", len(found), len(tokens))
        return out


def build_w2v_encoder(config: W2VConfig) -> W2VEncoder:
    """Factory mirroring :func:`extractors.text_bow.build_bow_encoder`."""
    return W2VEncoder.from_config(config)
