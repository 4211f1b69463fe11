"""Text-side inputs of a head: precomputed sentence vectors plus the learned ``gru`` feature.

``gru`` (as in W2VV++/LAFF): word embedding -> 1-layer GRU (hidden 1024) -> mean of the
outputs over the caption's real steps. The word embeddings can start from a given matrix
(e.g. word2vec rows of the vocabulary).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fusion.config import GruConfig
from fusion.data import TOKENS
from fusion.keys import LENGTHS_SUFFIX
from vidfuse.errors import ConfigError

GRU_FEATURE = "gru"


class GruEncoder(nn.Module):
    """Token ids ``[B, L]`` + lengths -> mean GRU output ``[B, hidden * directions]``."""

    def __init__(self, vocab_size: int, word_dim: int = 500, hidden: int = 1024, bidirectional: bool = False,
                 word_embeddings: Optional[np.ndarray] = None):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        if word_embeddings is not None:
            self.load_word_embeddings(word_embeddings)
        self.rnn = nn.GRU(word_dim, hidden, num_layers=1, batch_first=True, bidirectional=bidirectional)
        self.out_dim = hidden * (2 if bidirectional else 1)

    def load_word_embeddings(self, matrix: np.ndarray) -> None:
        """Initialise the word embeddings from ``[vocab_size, word_dim]`` (e.g. word2vec)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if tuple(matrix.shape) != tuple(self.embed.weight.shape):
            raise ConfigError(
                f"word embedding matrix has shape {list(matrix.shape)}, the GRU expects "
                f"[vocab_size={self.embed.num_embeddings}, gru.word_dim={self.embed.embedding_dim}]"
            )
        with torch.no_grad():
            self.embed.weight.copy_(torch.from_numpy(matrix))

    def forward(self, tokens: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``lengths`` None: every token is real (one unpadded query, as the ONNX export runs it)."""
        x = self.embed(tokens)
        if lengths is None:
            return self.rnn(x)[0].mean(1)
        lengths = lengths.clamp(min=1)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])  # zeros past length
        return out.sum(1) / lengths[:, None].to(out.dtype)


class TextInputs(nn.Module):
    """Collects the named text features of a batch, running the GRU for ``"gru"``."""

    def __init__(self, names: Sequence[str], text_dims: dict[str, int], vocab_size: Optional[int],
                 gru: GruConfig, word_embeddings: Optional[np.ndarray] = None):
        super().__init__()
        self.names = list(names)
        self.dims: dict[str, int] = {}
        self.gru: Optional[GruEncoder] = None
        for name in self.names:
            if name == GRU_FEATURE:
                if not vocab_size:
                    raise ConfigError("text feature 'gru' needs token ids and a vocabulary size (none given)")
                self.gru = GruEncoder(vocab_size, gru.word_dim, gru.hidden, gru.bidirectional, word_embeddings)
                self.dims[name] = self.gru.out_dim
            elif name in text_dims:
                self.dims[name] = text_dims[name]
            else:
                raise ConfigError(f"text feature {name!r} is not in the data (available: {sorted(text_dims)})")

    @property
    def batch_keys(self) -> tuple[str, ...]:
        return tuple(TOKENS if n == GRU_FEATURE else n for n in self.names)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        feats = {}
        for name in self.names:
            if name == GRU_FEATURE:
                feats[name] = self.gru(batch[TOKENS], batch.get(TOKENS + LENGTHS_SUFFIX))
            else:
                feats[name] = batch[name]
        return feats
