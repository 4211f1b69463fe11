"""Checks that features fit the dims a trained run recorded; torch-free, for the same reason
as :mod:`fusion.keys` (the exported query path runs them without a head)."""

from __future__ import annotations

from typing import Optional

from fusion.keys import FRAMES_SUFFIX
from vidfuse.errors import VidfuseError


class CheckpointError(VidfuseError):
    """A run directory or checkpoint that is missing, unreadable or does not fit the data."""


def check_dims(expected: dict[str, int], actual: dict[str, int], side: str, source: str) -> None:
    """Raise naming the feature and both dims when the data disagrees with a checkpoint."""
    for name, dim in expected.items():
        if name not in actual:
            raise CheckpointError(f"{source} needs {side} feature {name!r} (dim {dim}); the data has {sorted(actual)}")
        if int(actual[name]) != int(dim):
            pretty = name.replace(FRAMES_SUFFIX, " (frames)")
            raise CheckpointError(
                f"{source} was trained with {side} feature {pretty!r} of dim {dim}, but the data has dim {actual[name]}"
            )


def check_vocab(expected: Optional[int], actual: Optional[int], source: str) -> None:
    if expected is not None and actual is not None and int(expected) != int(actual):
        raise CheckpointError(f"{source} was trained with a vocabulary of {expected} tokens, but the data has {actual}")
