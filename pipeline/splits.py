"""Split files (one video id per line) and finding them next to a caption file.

Two layouts are recognised without configuration:

- plain: ``train.txt`` / ``val.txt`` / ``test.txt`` (or ``*_list.txt`` as MSVD releases name
  them) beside the caption file, or in ``--splits DIR``;
- LAFF/W2VV ``VisualSearch`` collections: captions at
  ``ROOT/<coll>/TextData/<coll>.caption.txt`` and video ids at
  ``ROOT/<coll>/VideoSets/<coll>.txt``, where the collections of one benchmark differ only by
  their suffix (``msrvtt10ktrain`` / ``msrvtt10kval`` / ``msrvtt10ktest``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.captions import read_text_file
from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Spellings of each split in file and collection names, preferred first.
SPLIT_ALIASES = {
    "train": ("train",),
    "val": ("val", "valid", "validation", "validate", "dev"),
    "test": ("test",),
}
_FILE_PATTERNS = ("{}.txt", "{}_list.txt", "{}_ids.txt", "{}_videos.txt")


class SplitError(VidfuseError):
    """A split file is malformed, or the split files cannot be found."""


def read_split(path: str | os.PathLike) -> list[str]:
    """Video ids of a split file, in file order. Blank lines are skipped; a repeated id is an error."""
    path = Path(path)
    try:
        text = read_text_file(path)
    except VidfuseError as exc:
        raise SplitError(str(exc)) from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        vid = line.strip()
        if not vid:
            continue
        if len(vid.split()) > 1:
            raise SplitError(f"{path} line {lineno}: {vid!r} is not a single video id (expected one id per line)")
        if vid in first_line:
            raise SplitError(f"{path} line {lineno}: duplicate video id {vid!r} (first at line {first_line[vid]})")
        first_line[vid] = lineno
        ids.append(vid)
    if not ids:
        raise SplitError(f"{path}: no video ids (empty split file); expected one video id per line")
    return ids


def _plain_candidates(directory: Path, split: str) -> list[Path]:
    return [directory / pattern.format(alias) for alias in SPLIT_ALIASES[split] for pattern in _FILE_PATTERNS]


def _laff_candidates(captions_path: Path, split: str) -> list[Path]:
    """``ROOT/<prefix><split>/VideoSets/<prefix><split>.txt`` for a caption file inside a LAFF collection."""
    name = captions_path.name
    collection = name[: -len(".caption.txt")] if name.endswith(".caption.txt") else None
    if captions_path.parent.name != "TextData":
        return []
    coll_dir = captions_path.parent.parent
    collection = collection or coll_dir.name
    root = coll_dir.parent
    prefix = collection
    for aliases in SPLIT_ALIASES.values():
        for alias in aliases:
            if collection.endswith(alias) and len(collection) > len(alias):
                prefix = collection[: -len(alias)]
                break
        if prefix != collection:
            break
    out = []
    if prefix == collection and split == "train":
        # a combined training collection such as tgif-msrvtt10k: its own VideoSets file is train
        out.append(coll_dir / "VideoSets" / f"{collection}.txt")
    for alias in SPLIT_ALIASES[split]:
        coll = prefix + alias
        out.append(root / coll / "VideoSets" / f"{coll}.txt")
        out.append(coll_dir / "VideoSets" / f"{coll}.txt")
    return out


def find_split_files(captions_path: str | os.PathLike, splits_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """Paths of the split files for a caption file: ``{"train": ..., "val": ..., "test": ...}``.

    With ``splits_dir`` only that folder is searched; otherwise the caption file's folder and
    the LAFF collection layout. ``train`` is required; ``val``/``test`` are included when found.
    """
    captions_path = Path(captions_path)
    if splits_dir is not None:
        sdir = Path(splits_dir)
        if not sdir.is_dir():
            raise SplitError(f"splits folder not found: {sdir}")
        candidates = {s: _plain_candidates(sdir, s) for s in SPLITS}
    else:
        candidates = {
            s: _plain_candidates(captions_path.parent, s) + _laff_candidates(captions_path, s) for s in SPLITS
        }
    found: dict[str, str] = {}
    for split in SPLITS:
        hit = next((p for p in candidates[split] if p.is_file()), None)
        if hit is not None:
            found[split] = str(hit)
    if "train" not in found:
        looked = ", ".join(str(p) for p in candidates["train"])
        where = f"in {splits_dir}" if splits_dir is not None else f"beside {captions_path}"
        raise SplitError(f"no train split file found {where}; looked for: {looked}")
    logger.debug("split files for %s: %s", captions_path, found)
    return found
