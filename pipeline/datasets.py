"""Adapters from benchmark annotation releases to the pipeline's form (captions + split id lists).

Each benchmark is described by ``configs/datasets/<name>.yaml`` (schema :class:`DatasetConfig`):
which annotation files it needs (candidate paths relative to the dataset root, first existing
wins), and its split variants (MSR-VTT 1k-A vs. the official 3k test, ...). A variant names a
*reader* below that knows the release's own format:

| reader            | files (roles)                                                    |
|-------------------|------------------------------------------------------------------|
| ``msrvtt_1ka``    | ``annotations`` MSRVTT_data.json, ``train_csv`` MSRVTT_train.9k.csv, ``test_csv`` MSRVTT_JSFUSION_test.csv |
| ``msrvtt_official`` | ``annotations`` MSRVTT_data.json (videos[].split), or ``train_val`` + ``test`` *_videodatainfo.json |
| ``msvd``          | ``descriptions`` AllVideoDescriptions.txt; ``train_list``/``val_list``/``test_list``, or ``mapping`` youtube_mapping.txt + ``ranges`` |
| ``tgif``          | ``annotations`` tgif-v1.0.tsv (url TAB sentence); ``train``/``val``/``test`` url lists |
| ``vatex``         | ``train``/``val``/``test`` vatex_*.json (``videoID``, ``enCap``); optional ``val_ids``/``test_ids`` lists |
| ``lsmdc``         | ``train``/``val``/``test`` LSMDC16 csv (6 tab-separated fields) |
| ``generic``       | ``captions`` (any :mod:`pipeline.captions` format) + split files found beside it |

:func:`write_pipeline_form` then writes ``captions.txt`` (LAFF text) and ``train/val/test.txt``
so every later stage reads a benchmark exactly like ``vidfuse synth`` output.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional
from urllib.parse import urlparse

from omegaconf import MISSING

from pipeline.captions import (
    Caption,
    CaptionCollector,
    CaptionFormatError,
    load_json,
    msrvtt_captions,
    read_captions,
    read_text_file,
    write_captions,
)
from pipeline.splits import SPLITS, find_split_files, read_split
from vidfuse.config import load_config
from vidfuse.errors import VidfuseError

logger = logging.getLogger(__name__)


class DatasetError(VidfuseError):
    """A dataset's files are missing, its config is wrong, or its splits are inconsistent."""


# ----------------------------------------------------------------------------- config schema


@dataclass
class VariantConfig:
    reader: str = MISSING  # one of READERS
    description: str = ""
    # role -> candidate paths relative to the dataset root; the first that exists is used
    files: Dict[str, List[str]] = field(default_factory=dict)
    # "test": validation uses the test videos (protocols without a held-out val, e.g. MSR-VTT 1k-A)
    val_from: Optional[str] = None
    # msvd: split -> [first, last] number N of "vidN" in youtube_mapping.txt (inclusive)
    ranges: Dict[str, List[int]] = field(default_factory=dict)
    # number of videos per split in the complete release; a difference is reported, not refused
    expected: Dict[str, int] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    name: str = MISSING
    description: str = ""
    video_dir: List[str] = field(default_factory=list)  # where the videos usually are, relative to root
    default_variant: str = MISSING
    variants: Dict[str, VariantConfig] = field(default_factory=dict)


@dataclass
class DatasetSpec:
    name: str
    variant: str
    root: str
    captions: list[Caption]
    splits: dict[str, list[str]]
    video_dir: Optional[str] = None  # first existing video folder candidate, if any
    notes: list[str] = field(default_factory=list)  # what was dropped or differs from the release

    def summary(self) -> dict:
        return {
            "name": self.name,
            "variant": self.variant,
            "root": self.root,
            "video_dir": self.video_dir,
            "videos": len({c.video_id for c in self.captions}),
            "captions": len(self.captions),
            "splits": {k: len(v) for k, v in self.splits.items()},
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- reading helpers


class _Context:
    """What a reader sees: the root, its variant config, and file resolution by role."""

    def __init__(self, name: str, variant: str, root: Path, cfg: VariantConfig):
        self.name, self.variant, self.root, self.cfg = name, variant, root, cfg
        self.notes: list[str] = []

    def file(self, role: str, required: bool = True) -> Optional[Path]:
        candidates = self.cfg.files.get(role, [])
        for rel in candidates:
            p = self.root / rel
            if p.is_file():
                return p
        if required:
            if not candidates:
                raise DatasetError(f"dataset {self.name} ({self.variant}): config names no file for role {role!r}")
            raise DatasetError(
                f"dataset {self.name} ({self.variant}): {role} file not found under {self.root}; "
                f"looked for {candidates}"
            )
        return None

    def note(self, message: str) -> None:
        logger.warning("%s (%s): %s", self.name, self.variant, message)
        self.notes.append(message)


def _rows(path: Path, delimiter: str = ",", header: bool = True, fields: int | None = None,
          required: tuple[str, ...] = ()) -> list[tuple[int, dict | list]]:
    """Rows of a CSV/TSV file with their line numbers; missing columns / wrong field counts name the line."""
    text = read_text_file(path)
    if not text.strip():
        raise CaptionFormatError(f"{path}: empty file")
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE  # TSV sentences hold bare quotes
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    out: list[tuple[int, dict | list]] = []
    names: list[str] = []
    try:
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if header and not names:
                names = [c.strip() for c in row]
                missing = [c for c in required if c not in names]
                if missing:
                    raise CaptionFormatError(f"{path} line {reader.line_num}: missing column(s) {missing} in header {names}")
                continue
            if header:
                if len(row) != len(names):
                    raise CaptionFormatError(
                        f"{path} line {reader.line_num}: {len(row)} fields, header {names} has {len(names)}"
                    )
                out.append((reader.line_num, dict(zip(names, row))))
            else:
                if fields is not None and len(row) != fields:
                    raise CaptionFormatError(
                        f"{path} line {reader.line_num}: {len(row)} tab-separated fields, expected {fields}"
                    )
                out.append((reader.line_num, row))
    except csv.Error as exc:
        raise CaptionFormatError(f"{path} line {reader.line_num}: malformed CSV ({exc})") from None
    return out


def _unique_ids(path: Path, pairs: list[tuple[int, str]]) -> list[str]:
    """Video ids from (line, id) pairs, refusing empty and repeated ids."""
    seen: dict[str, int] = {}
    for line, vid in pairs:
        if not vid:
            raise CaptionFormatError(f"{path} line {line}: empty video id")
        if vid in seen:
            raise CaptionFormatError(f"{path} line {line}: duplicate video id {vid!r} (first at line {seen[vid]})")
        seen[vid] = line
    return list(seen)


# ----------------------------------------------------------------------------- readers

Reader = Callable[[_Context], "tuple[list[Caption], dict[str, list[str]]]"]


def _read_msrvtt_1ka(ctx: _Context):
    """JSFusion 1k-A: 9k (or 7k) train videos with all their MSRVTT_data.json captions; 1k test videos
    with the single sentence each that MSRVTT_JSFUSION_test.csv pairs them with."""
    ann, train_csv, test_csv = ctx.file("annotations"), ctx.file("train_csv"), ctx.file("test_csv")
    train_ids = _unique_ids(train_csv, [(ln, r["video_id"].strip()) for ln, r in _rows(train_csv, required=("video_id",))])
    train_set = set(train_ids)
    all_caps = msrvtt_captions(ann, load_json(ann, "MSRVTT_data.json"))
    captions = [c for c in all_caps if c.video_id in train_set]
    test_rows = _rows(test_csv, required=("video_id", "sentence"))
    collect = CaptionCollector(test_csv)
    for ln, r in test_rows:
        collect.add(r["video_id"].strip(), r["sentence"], f"line {ln}")
    test_ids = list(dict.fromkeys(c.video_id for c in collect.captions))
    return captions + collect.captions, {"train": train_ids, "test": test_ids}


_MSRVTT_SPLIT = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def _msrvtt_video_splits(path: Path, data) -> dict[str, list[str]]:
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list):
        raise CaptionFormatError(f"{path}: no 'videos' list (expected MSR-VTT videos[].video_id/split)")
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    first: dict[str, int] = {}
    for i, v in enumerate(data["videos"]):
        if not isinstance(v, dict) or "video_id" not in v:
            raise CaptionFormatError(f"{path} videos[{i}]: missing key 'video_id'")
        vid = str(v["video_id"]).strip()
        if vid in first:
            raise CaptionFormatError(f"{path} videos[{i}]: duplicate video_id {vid!r} (first at videos[{first[vid]}])")
        first[vid] = i
        if "split" not in v:
            raise CaptionFormatError(
                f"{path} videos[{i}]: missing key 'split' (this file carries no official split; use "
                "train_val_videodatainfo.json + test_videodatainfo.json)"
            )
        split = _MSRVTT_SPLIT.get(str(v["split"]))
        if split is None:
            raise CaptionFormatError(f"{path} videos[{i}].split: {v['split']!r}, expected train/validate/test")
        splits[split].append(vid)
    return splits


def _read_msrvtt_official(ctx: _Context):
    """The official MSR-VTT split (6513 train / 497 val / 2990 test) from videos[].split."""
    ann = ctx.file("annotations", required=False)
    paths = [ann] if ann is not None else [ctx.file("train_val"), ctx.file("test")]
    captions: list[Caption] = []
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    for path in paths:
        data = load_json(path, "MSR-VTT annotation JSON")
        captions += msrvtt_captions(path, data)
        for split, ids in _msrvtt_video_splits(path, data).items():
            splits[split] += ids
    return captions, {k: v for k, v in splits.items() if v}


_VID_RE = re.compile(r"^vid(\d+)$")


def _read_msvd(ctx: _Context):
    """MSVD: AllVideoDescriptions.txt ('<clip> <sentence>', '#' header lines); splits from
    train/val/test_list.txt, or youtube_mapping.txt 'vidN' numbers and the config's ranges."""
    desc = ctx.file("descriptions")
    collect = CaptionCollector(desc)
    for lineno, line in enumerate(read_text_file(desc).splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split(None, 1)
        if len(parts) < 2:
            raise CaptionFormatError(f"{desc} line {lineno}: expected '<clip name> <description>', got {s!r}")
        collect.add(parts[0], parts[1], f"line {lineno}")
    if not collect.captions:
        raise CaptionFormatError(f"{desc}: no descriptions found")

    mapping_path = ctx.file("mapping", required=False)
    vid_to_clip: dict[str, str] = {}
    if mapping_path is not None:
        for lineno, line in enumerate(read_text_file(mapping_path).splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not _VID_RE.match(parts[1]):
                raise CaptionFormatError(f"{mapping_path} line {lineno}: expected '<clip name> vid<N>', got {line.strip()!r}")
            if parts[1] in vid_to_clip:
                raise CaptionFormatError(f"{mapping_path} line {lineno}: {parts[1]} mapped twice")
            vid_to_clip[parts[1]] = parts[0]

    lists = {s: ctx.file(f"{s}_list", required=False) for s in SPLITS}
    splits: dict[str, list[str]] = {}
    if lists["train"] is not None:
        for split, path in lists.items():
            if path is not None:
                # list files name clips, or "vidN" when they come from the mapping's numbering
                splits[split] = [vid_to_clip.get(v, v) for v in read_split(path)]
    elif vid_to_clip:
        if not ctx.cfg.ranges:
            raise DatasetError(f"dataset {ctx.name} ({ctx.variant}): no split lists and no 'ranges' in the config")
        for split, (first, last) in ctx.cfg.ranges.items():
            splits[split] = [vid_to_clip[f"vid{n}"] for n in range(first, last + 1) if f"vid{n}" in vid_to_clip]
    else:
        raise DatasetError(
            f"dataset {ctx.name} ({ctx.variant}): no split files under {ctx.root}; looked for "
            f"{ctx.cfg.files.get('train_list', [])} and the mapping {ctx.cfg.files.get('mapping', [])}"
        )
    return collect.captions, splits


def _tgif_id(ref: str) -> str:
    """TGIF video id: the GIF's file name without extension (``.../tumblr_x_500.gif`` -> ``tumblr_x_500``)."""
    name = os.path.basename(urlparse(ref).path) if "/" in ref else ref
    return os.path.splitext(name)[0]


def _read_tgif(ctx: _Context):
    """TGIF: tgif-v1.0.tsv (GIF url TAB sentence, no header); splits are url lists (splits/*.txt)."""
    tsv = ctx.file("annotations")
    collect = CaptionCollector(tsv)
    for ln, (url, sentence) in _rows(tsv, delimiter="\t", header=False, fields=2):
        vid = _tgif_id(url.strip())
        if not vid:
            raise CaptionFormatError(f"{tsv} line {ln}: no GIF file name in url {url!r}")
        collect.add(vid, sentence, f"line {ln}")
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        path = ctx.file(split, required=(split == "train"))
        if path is None:
            continue
        ids, dups = [], 0
        seen: set[str] = set()
        for lineno, line in enumerate(read_text_file(path).splitlines(), 1):
            if not line.strip():
                continue
            vid = _tgif_id(line.strip())
            if vid in seen:
                dups += 1
                continue
            seen.add(vid)
            ids.append(vid)
        if dups:
            ctx.note(f"{path}: {dups} repeated GIFs listed once")
        splits[split] = ids
    return collect.captions, splits


def _vatex_file(path: Path, collect: CaptionCollector) -> list[str]:
    data = load_json(path, 'a JSON list of {"videoID": ..., "enCap": [...]}')
    if not isinstance(data, list):
        raise CaptionFormatError(f"{path}: top level is {type(data).__name__}, expected a list of videos")
    ids = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise CaptionFormatError(f"{path} [{i}]: expected an object with 'videoID' and 'enCap'")
        for key in ("videoID", "enCap"):
            if key not in item:
                raise CaptionFormatError(f"{path} [{i}]: missing key {key!r} (expected 'videoID' and 'enCap')")
        if not isinstance(item["videoID"], str):
            raise CaptionFormatError(f"{path} [{i}].videoID: expected a string")
        if not isinstance(item["enCap"], list):
            raise CaptionFormatError(f"{path} [{i}].enCap: expected a list of sentences")
        vid = item["videoID"].strip()
        for k, sentence in enumerate(item["enCap"]):
            if not isinstance(sentence, str):
                raise CaptionFormatError(f"{path} [{i}].enCap[{k}]: expected a string")
            collect.add(vid, sentence, f"[{i}].enCap[{k}]", path=path)
        ids.append(vid)
    return ids


def _read_vatex(ctx: _Context):
    """VATEX: English captions (``enCap``) of the training / validation / public-test JSONs; with
    ``val_ids``/``test_ids`` lists (the 1,500/1,500 split of the validation set), those pick val/test."""
    collect = CaptionCollector()
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        path = ctx.file(split, required=(split != "test") or "test_ids" not in ctx.cfg.files)
        if path is not None:
            splits[split] = _vatex_file(path, collect)
    if "val_ids" in ctx.cfg.files or "test_ids" in ctx.cfg.files:
        pool = splits.pop("val", []) + splits.pop("test", [])
        pool_set = set(pool)
        for split in ("val", "test"):
            ids = read_split(ctx.file(f"{split}_ids"))
            missing = [v for v in ids if v not in pool_set]
            if missing:
                ctx.note(f"{split}: {len(missing)} listed videos have no captions in the annotation files "
                         f"(e.g. {missing[:3]}); dropped")
            splits[split] = [v for v in ids if v in pool_set]
    return collect.captions, splits


def _read_lsmdc(ctx: _Context):
    """LSMDC 2016: ``clip_id TAB start_aligned TAB end_aligned TAB start_extracted TAB end_extracted TAB sentence``."""
    collect = CaptionCollector()
    splits: dict[str, list[str]] = {}
    for split in SPLITS:
        path = ctx.file(split, required=(split != "val"))
        if path is None:
            continue
        ids: dict[str, None] = {}
        for ln, row in _rows(path, delimiter="\t", header=False, fields=6):
            clip = row[0].strip()
            collect.add(clip, row[5], f"line {ln}", path=path)
            ids[clip] = None
        splits[split] = list(ids)
    return collect.captions, splits


def _read_generic(ctx: _Context):
    """Any caption file :func:`pipeline.captions.read_captions` reads, with split files from the
    config's ``train``/``val``/``test`` roles or found beside the captions."""
    cap_path = ctx.file("captions")
    captions = read_captions(cap_path)
    if any(role in ctx.cfg.files for role in SPLITS):
        paths = {s: ctx.file(s, required=(s == "train")) for s in SPLITS}
        found = {s: str(p) for s, p in paths.items() if p is not None}
    else:
        found = find_split_files(cap_path)
    return captions, {s: read_split(p) for s, p in found.items()}


READERS: dict[str, Reader] = {
    "msrvtt_1ka": _read_msrvtt_1ka,
    "msrvtt_official": _read_msrvtt_official,
    "msvd": _read_msvd,
    "tgif": _read_tgif,
    "vatex": _read_vatex,
    "lsmdc": _read_lsmdc,
    "generic": _read_generic,
}


# ----------------------------------------------------------------------------- public API


def load_dataset_config(name: str) -> DatasetConfig:
    """``configs/datasets/<name>.yaml`` (or a path to such a file), validated against :class:`DatasetConfig`."""
    cfg = load_config(DatasetConfig, name, kind="datasets")
    for vname, var in cfg.variants.items():
        if var.reader not in READERS:
            raise DatasetError(f"dataset {cfg.name}: variant {vname!r} has unknown reader {var.reader!r}; known: {sorted(READERS)}")
        if var.val_from not in (None, "test"):
            raise DatasetError(f"dataset {cfg.name}: variant {vname!r}: val_from must be 'test' or null")
    if cfg.default_variant not in cfg.variants:
        raise DatasetError(f"dataset {cfg.name}: default_variant {cfg.default_variant!r} is not among {sorted(cfg.variants)}")
    return cfg


def _finalise(ctx: _Context, captions: list[Caption], splits: dict[str, list[str]]) -> tuple[list[Caption], dict[str, list[str]]]:
    """Keep split videos that have captions and captions of split videos; check sizes and leaks."""
    by_video: dict[str, int] = {}
    for c in captions:
        by_video[c.video_id] = by_video.get(c.video_id, 0) + 1
    if ctx.cfg.val_from == "test":
        if "test" not in splits:
            raise DatasetError(f"dataset {ctx.name} ({ctx.variant}): val_from 'test' but no test split")
        splits["val"] = list(splits["test"])
        ctx.notes.append("val is the test split (this protocol has no held-out validation set)")
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        ids = splits.get(split)
        if ids is None:
            continue
        kept = [v for v in ids if v in by_video]
        if len(kept) < len(ids):
            lost = [v for v in ids if v not in by_video]
            ctx.note(f"{split}: {len(lost)} of {len(ids)} videos have no caption and are left out (e.g. {lost[:3]})")
        if not kept:
            raise DatasetError(f"dataset {ctx.name} ({ctx.variant}): the {split} split has no video with captions")
        out[split] = kept
        want = ctx.cfg.expected.get(split)
        if want is not None and want != len(kept):
            ctx.note(f"{split}: {len(kept)} videos, the complete release has {want}")
    if "train" not in out:
        raise DatasetError(f"dataset {ctx.name} ({ctx.variant}): no train split")
    for other in ("val", "test"):
        if other == "val" and ctx.cfg.val_from == "test":
            continue
        leak = set(out["train"]) & set(out.get(other, ()))
        if leak:
            raise DatasetError(
                f"dataset {ctx.name} ({ctx.variant}): {len(leak)} videos are in both train and {other} "
                f"(e.g. {sorted(leak)[:3]})"
            )
    in_split = set().union(*map(set, out.values()))
    kept_caps = [c for c in captions if c.video_id in in_split]
    if len(kept_caps) < len(captions):
        n_vid = len({c.video_id for c in captions if c.video_id not in in_split})
        ctx.notes.append(f"{len(captions) - len(kept_caps)} captions of {n_vid} videos outside every split left out")
    seen: set[str] = set()
    for c in kept_caps:
        if c.caption_id in seen:
            raise DatasetError(f"dataset {ctx.name} ({ctx.variant}): caption id {c.caption_id!r} occurs twice")
        seen.add(c.caption_id)
    return kept_caps, out


def load_dataset(name: str, root: str | os.PathLike, split_variant: str | None = None) -> DatasetSpec:
    """Read benchmark ``name`` (config name or YAML path) from its annotation files under ``root``."""
    cfg = load_dataset_config(name)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset {cfg.name}: root folder not found: {root}")
    variant = split_variant or cfg.default_variant
    if variant not in cfg.variants:
        raise DatasetError(f"dataset {cfg.name}: unknown split variant {variant!r}; known: {sorted(cfg.variants)}")
    ctx = _Context(cfg.name, variant, root, cfg.variants[variant])
    captions, splits = READERS[ctx.cfg.reader](ctx)
    captions, splits = _finalise(ctx, captions, splits)
    video_dir = next((str(root / d) for d in cfg.video_dir if (root / d).is_dir()), None)
    if video_dir is None and cfg.video_dir:
        ctx.notes.append(f"no video folder found under {root} (looked for {cfg.video_dir})")
    spec = DatasetSpec(cfg.name, variant, str(root), captions, splits, video_dir, ctx.notes)
    logger.info("%s (%s): %d captions; %s", cfg.name, variant, len(captions),
                ", ".join(f"{k} {len(v)} videos" for k, v in splits.items()))
    return spec


def write_pipeline_form(spec: DatasetSpec, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``captions.txt`` (LAFF text), ``<split>.txt`` per split and ``dataset.json``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"captions": str(out / "captions.txt")}
    write_captions(spec.captions, out / "captions.txt")
    for split, ids in spec.splits.items():
        p = out / f"{split}.txt"
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text("".join(f"{v}\n" for v in ids), encoding="utf-8")
        os.replace(tmp, p)
        paths[split] = str(p)
    (out / "dataset.json").write_text(json.dumps(spec.summary(), indent=2) + "\n", encoding="utf-8")
    paths["meta"] = str(out / "dataset.json")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.datasets NAME ROOT OUT [--variant V]``: a benchmark in pipeline form."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m pipeline.datasets", description=main.__doc__)
    parser.add_argument("name", help="dataset config name (configs/datasets/<name>.yaml) or a YAML path")
    parser.add_argument("root", help="folder holding the dataset's annotation files")
    parser.add_argument("out", help="output folder for captions.txt, train/val/test.txt, dataset.json")
    parser.add_argument("--variant", default=None, help="split variant (default: the config's default_variant)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = load_dataset(args.name, args.root, args.variant)
        paths = write_pipeline_form(spec, args.out)
    except VidfuseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"written": paths, **spec.summary()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
