"""Batch key names shared by the heads and the torch-free query path (see :mod:`fusion.data`).

A module of its own, with no torch import, so that code which only names the keys
(``vidfuse search`` with an exported query encoder) does not pay seconds of torch import.
"""

FRAMES_SUFFIX = "@frames"
MASK_SUFFIX = "@mask"
TOKENS = "tokens"
LENGTHS_SUFFIX = "@lengths"
