"""A head's text side (one query's inputs -> its index-space embedding) exported to ONNX.

Why: see :mod:`index.query_onnx`, which writes and reads the exported model; this module is
the only part of that path that needs torch.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from fusion.heads import RetrievalHead
from fusion.keys import MASK_SUFFIX, TOKENS

OPSET = 17


class QueryEmbedding(nn.Module):
    """``head.query_embedding(head.encode_text(batch))`` of a batch of one unpadded query.

    Inputs in ``keys`` order: ``[1, D]`` float32 per stored text feature, ``[1, L]`` int64 token
    ids for ``tokens`` (every id real: no lengths, so the GRU runs unpacked; the mask is all true)."""

    def __init__(self, head: RetrievalHead, keys: Sequence[str]):
        super().__init__()
        self.head = head
        self.keys = list(keys)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = dict(zip(self.keys, inputs))
        if TOKENS in batch:
            ids = batch[TOKENS]
            batch[TOKENS + MASK_SUFFIX] = torch.ones_like(ids, dtype=torch.bool)
        return self.head.query_embedding(self.head.encode_text(batch))


def example_inputs(keys: Sequence[str], text_dims: dict[str, int], tokens: int = 5) -> list[np.ndarray]:
    """Inputs of the right shapes and types for ``keys``, for the exporter to trace."""
    rng = np.random.default_rng(0)
    return [rng.integers(4, 8, size=(1, tokens)).astype(np.int64) if key == TOKENS
            else rng.random((1, int(text_dims[key])), dtype=np.float32) for key in keys]


def export_query_embedding(head: RetrievalHead, text_dims: dict[str, int], path: str) -> list[str]:
    """Write ``head``'s query side to ``path`` (ONNX); returns its input names, in order.

    The TorchScript-based exporter (about 1 s here, against several for ``torch.export``'s),
    with the token axis of any length.
    """
    keys = list(head.text_inputs)
    model = QueryEmbedding(head, keys).eval()
    example = tuple(torch.from_numpy(x) for x in example_inputs(keys, text_dims))
    # torch 2.5+ defaults to (or offers) torch.export's exporter; earlier ones only have this one
    choose = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on GRU batch sizes and its own deprecation
        torch.onnx.export(
            model, example, path, input_names=keys, output_names=["query"], opset_version=OPSET,
            dynamic_axes={TOKENS: {1: "words"}} if TOKENS in keys else None, **choose,
        )
    return keys
