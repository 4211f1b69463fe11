"""Feature shards + captions + split files -> the arrays a fusion head trains and runs on.

Feature names follow the heads' convention: ``"clip"`` is a video-level (or sentence-level)
vector, ``"clip@frames"`` the per-frame matrix of the same feature set, and text ``"gru"``
the token ids of the GRU's own vocabulary (the GRU is learned inside the head).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fusion.data import FRAMES_SUFFIX, FeatureBank, TrainData
from pipeline.captions import Caption, read_captions
from pipeline.features import FeatureSet, load_feature_set
from pipeline.manifest import Manifest
from pipeline.splits import find_split_files, read_split
from pipeline.text_features import LEARNED_TEXT_FEATURES, gru_vocabulary, text_feature_dir
from pipeline.text_job import warn_overlong
from vidfuse.errors import VidfuseError

log = logging.getLogger(__name__)



class TrainingSetError(VidfuseError):
    """Features, captions and splits that do not fit together."""


@dataclass
class Corpus:
    """Captions and splits of one dataset, read once."""

    captions: list[Caption]
    splits: dict[str, list[str]]
    captions_path: str

    @classmethod
    def read(cls, captions_path: str, splits_dir: str | None = None) -> "Corpus":
        captions = read_captions(captions_path)
        files = find_split_files(captions_path, splits_dir)
        return cls(captions, {name: read_split(path) for name, path in files.items()}, captions_path)

    def split_videos(self, split: str) -> list[str]:
        if split not in self.splits:
            raise TrainingSetError(f"no {split!r} split for {self.captions_path} (found {sorted(self.splits)})")
        return self.splits[split]

    def split_captions(self, split: str) -> list[Caption]:
        videos = set(self.split_videos(split))
        return [c for c in self.captions if c.video_id in videos]


def head_features(head_cfg) -> tuple[list[str], list[str]]:
    """(video feature names, text feature names) a head config reads."""
    section = getattr(head_cfg, head_cfg.type)
    video = list(getattr(section, "video_features", None) or [])
    text = list(getattr(section, "text_features", None) or [])
    for attr, names in (("video_feature", video), ("text_feature", text)):
        if getattr(section, attr, None):
            names.append(getattr(section, attr))
    if getattr(section, "frame_feature", None):
        video.append(section.frame_feature + FRAMES_SUFFIX)
    return list(dict.fromkeys(video)), list(dict.fromkeys(text))


def _base(name: str) -> str:
    return name[: -len(FRAMES_SUFFIX)] if name.endswith(FRAMES_SUFFIX) else name


def _open(folder: str, what: str, name: str, ids: Sequence[str]) -> FeatureSet:
    """The rows ``ids`` of feature set ``name`` (checked: its manifest names it, no NaN/inf in them)."""
    try:
        return load_feature_set(folder, ids=ids, name=name)
    except VidfuseError as exc:
        raise TrainingSetError(f"{what} features: {exc}") from None


def _bank_from_sets(sets: dict[str, FeatureSet], names: Sequence[str]) -> FeatureBank:
    """Sets already holding the wanted rows, in order -> a bank (``name@frames``: their frames)."""
    bank = FeatureBank()
    for name in names:
        base = _base(name)
        part = sets[base]
        if name.endswith(FRAMES_SUFFIX):
            if not part.has_frames:
                raise TrainingSetError(f"{name!r} needs per-frame features, but {sets[base].path} kept none")
            bank.frames[base] = (part.frames_matrix, part.offsets)
        else:
            bank.vectors[base] = part.features
    return bank


def load_video_bank(features_dir: str, names: Sequence[str], video_ids: Sequence[str]) -> tuple[FeatureBank, dict[str, Manifest]]:
    """Video features ``names`` of ``video_ids`` (in that order); missing videos are an error."""
    sets = {b: _open(posixpath.join(features_dir, b), "video", b, video_ids) for b in dict.fromkeys(_base(n) for n in names)}
    return _bank_from_sets(sets, names), {b: s.manifest for b, s in sets.items()}


def load_text_bank(
    features_dir: str, names: Sequence[str], captions: Sequence[Caption]
) -> tuple[FeatureBank, dict[str, Manifest], int | None]:
    """Text features of ``captions``; ``gru`` becomes token ids of the GRU vocabulary.

    Returns (bank, manifests, vocab_size or None).
    """
    stored = [n for n in names if n not in LEARNED_TEXT_FEATURES]
    caption_ids = [c.caption_id for c in captions]
    sets = {n: _open(text_feature_dir(features_dir, n), "text", f"text/{n}", caption_ids) for n in stored}
    bank = _bank_from_sets(sets, stored)
    vocab_size = None
    if any(n in LEARNED_TEXT_FEATURES for n in names):
        vocab = gru_vocabulary(features_dir)
        warn_overlong(captions)
        bank.tokens = vocab.token_ids([c.text for c in captions])
        vocab_size = len(vocab)
    return bank, {f"text/{n}": s.manifest for n, s in sets.items()}, vocab_size


def gru_word_embeddings(features_dir: str, gru_cfg) -> np.ndarray | None:
    """Initial GRU word embeddings from ``gru_cfg.word2vec`` (None when not given), rows by token id."""
    if not getattr(gru_cfg, "word2vec", None):
        return None
    from extractors.text_w2v import W2VEncoder, load_word2vec

    try:
        words, matrix = load_word2vec(gru_cfg.word2vec)
    except VidfuseError as exc:
        raise TrainingSetError(f"head.gru.word2vec: {exc}") from None
    if matrix.shape[1] != gru_cfg.word_dim:
        raise TrainingSetError(f"head.gru.word2vec has {matrix.shape[1]}-d vectors but head.gru.word_dim is "
                               f"{gru_cfg.word_dim}: set head.gru.word_dim={matrix.shape[1]}")
    return W2VEncoder(words, matrix).embedding_matrix_for(gru_vocabulary(features_dir).tokens)


def check_clip_pairing(video: dict[str, Manifest], text: dict[str, Manifest]) -> None:
    """Text and video CLIP features must come from the same model and weights."""
    v, t = video.get("clip"), text.get("text/clip")
    if v is None or t is None:
        return
    if "imported" in (v.weights, t.weights):  # BigFiles (e.g. LAFF's releases) carry no model record
        log.warning("clip features imported from BigFiles: cannot check that text and video CLIP match")
        return
    if (v.model, v.weights, v.config_hash) != (t.model, t.weights, t.config_hash):
        raise TrainingSetError(
            "video and text CLIP features come from different models/weights: "
            f"video clip = {v.model} ({v.weights}, config {v.config_hash}), "
            f"text clip = {t.model} ({t.weights}, config {t.config_hash}); "
            "run extract and extract-text with the same --config"
        )


@dataclass
class SplitBanks:
    """One split's videos and captions, loaded for encoding (index, benchmark, validation)."""

    videos: FeatureBank
    texts: FeatureBank
    video_ids: list[str]
    captions: list[Caption]
    caption_video: np.ndarray
    manifests: dict[str, Manifest]
    vocab_size: int | None


def unreadable_videos(features_dir: str, names: Sequence[str], video_ids: Sequence[str]) -> dict[str, str]:
    """Those of ``video_ids`` that the extraction job recorded as unreadable for a feature set
    ``names`` (its ``errors.jsonl``) and that have no rows there: video id -> reason.

    Presence is checked because a record may name a video holding rows anyway (a second
    file with the same id).
    """
    from pipeline.fs import FileSystems

    from pipeline.extract_job import ERRORS_FILE, read_dead_letters
    from pipeline.shards import existing_ids

    path = posixpath.join(features_dir, ERRORS_FILE)
    if not FileSystems.exists(path):
        return {}
    bases = {_base(n) for n in names}
    wanted = set(video_ids)
    failed: dict[str, str] = {}
    try:
        for record in read_dead_letters(path):
            if record["extractor"] in bases and record["video_id"] in wanted:
                failed.setdefault(record["video_id"], f"{record['extractor']}: {record['reason']}")
    except VidfuseError as exc:
        raise TrainingSetError(str(exc)) from None
    if failed:
        present = set.intersection(*(existing_ids(posixpath.join(features_dir, b)) for b in bases))
        failed = {v: reason for v, reason in failed.items() if v not in present}
    return failed


def leave_out_unreadable(video_ids: Sequence[str], unreadable: dict[str, str], split: str,
                         features_dir: str) -> list[str]:
    """``video_ids`` less the ``unreadable`` ones, with a warning naming them and why.

    Why: a collection always holds a few unreadable files (corrupt downloads); they are
    dead letters of the extraction, and stopping every later stage for them would leave
    the user editing split files. Videos missing for no recorded reason stay an error.
    """
    from pipeline.extract_job import ERRORS_FILE

    dropped = [v for v in video_ids if v in unreadable]
    if dropped:
        shown = "; ".join(f"{v} ({unreadable[v]})" for v in dropped[:3])
        more = f" and {len(dropped) - 3} more" if len(dropped) > 3 else ""
        log.warning("%d of %d %s videos left out: their extraction failed (see %s): %s%s", len(dropped),
                    len(video_ids), split, posixpath.join(features_dir, ERRORS_FILE), shown, more)
    return [v for v in video_ids if v not in unreadable]


def without_failed_videos(video_ids: Sequence[str], features_dir: str, names: Sequence[str], split: str) -> list[str]:
    """One split's ``video_ids`` less those whose extraction failed (see :func:`leave_out_unreadable`)."""
    return leave_out_unreadable(video_ids, unreadable_videos(features_dir, names, video_ids), split, features_dir)


def load_split(features_dir: str, corpus: Corpus, split: str, head_cfg, need_texts: bool = True) -> SplitBanks:
    """Banks of one split for a head config; captions of videos outside the split, or whose
    extraction failed, are ignored."""
    video_names, text_names = head_features(head_cfg)
    video_ids = without_failed_videos(list(dict.fromkeys(corpus.split_videos(split))), features_dir, video_names, split)
    captions = corpus.split_captions(split) if need_texts else []
    videos, vman = load_video_bank(features_dir, video_names, video_ids)
    if need_texts:
        if not captions:
            raise TrainingSetError(f"no caption of {corpus.captions_path} belongs to the {split!r} split")
        texts, tman, vocab_size = load_text_bank(features_dir, text_names, captions)
        check_clip_pairing(vman, tman)
    else:
        texts, tman, vocab_size = FeatureBank(), {}, None
    position = {v: i for i, v in enumerate(video_ids)}
    caption_video = np.fromiter((position[c.video_id] for c in captions), dtype=np.int64, count=len(captions))
    return SplitBanks(videos, texts, video_ids, captions, caption_video, {**vman, **tman}, vocab_size)


def build_train_data(features_dir: str, corpus: Corpus, head_cfg, val_split: str = "val") -> tuple[TrainData, dict[str, Manifest]]:
    """TrainData over the train and val videos (one bank; val rows after train rows), less the
    videos whose extraction failed."""
    video_names, text_names = head_features(head_cfg)
    train_ids = list(dict.fromkeys(corpus.split_videos("train")))
    train_set = set(train_ids)
    val_ids = [v for v in dict.fromkeys(corpus.splits.get(val_split, [])) if v not in train_set]
    unreadable = unreadable_videos(features_dir, video_names, train_ids + val_ids)  # errors.jsonl read once
    train_ids = leave_out_unreadable(train_ids, unreadable, "train", features_dir)
    val_ids = leave_out_unreadable(val_ids, unreadable, val_split, features_dir)
    if not val_ids:
        raise TrainingSetError(f"the {val_split!r} split is missing or empty: training validates every epoch on it")
    video_ids = train_ids + val_ids
    position = {v: i for i, v in enumerate(video_ids)}
    captions = [c for c in corpus.captions if c.video_id in position]
    if not captions:
        raise TrainingSetError(f"no caption of {corpus.captions_path} belongs to the train/val videos")
    videos, vman = load_video_bank(features_dir, video_names, video_ids)
    texts, tman, vocab_size = load_text_bank(features_dir, text_names, captions)
    check_clip_pairing(vman, tman)
    caption_video = np.fromiter((position[c.video_id] for c in captions), dtype=np.int64, count=len(captions))
    in_train = caption_video < len(train_ids)
    data = TrainData(
        videos=videos,
        texts=texts,
        caption_video=caption_video,
        train_captions=np.flatnonzero(in_train),
        val_captions=np.flatnonzero(~in_train),
        video_ids=video_ids,
        caption_ids=[c.caption_id for c in captions],
        vocab_size=vocab_size,
        word_embeddings=gru_word_embeddings(features_dir, head_cfg.gru) if vocab_size else None,
    )
    if not len(data.train_captions):
        raise TrainingSetError(f"no caption of {corpus.captions_path} belongs to a train video")
    log.info("train data: %d train / %d val videos, %d / %d captions", len(train_ids), len(val_ids),
             len(data.train_captions), len(data.val_captions))
    return data, {**vman, **tman}


RUN_SOURCES = "run.json"  # where a run's inputs came from (index/benchmark/search default to them)


def write_run_sources(run_dir: str, features_dir: str, captions: str, splits: str | None,
                      manifests: dict[str, Manifest]) -> None:
    """Record a run's inputs and the manifests of the features it trained on."""
    import json
    from pathlib import Path

    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "features": str(Path(features_dir).resolve()),
        "captions": str(Path(captions).resolve()),
        "splits": str(Path(splits).resolve()) if splits else None,
        "manifests": {name: m.to_dict() for name, m in manifests.items()},
    }
    tmp = out / f".{RUN_SOURCES}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out / RUN_SOURCES)


def run_training(cfg, features_dir: str, captions: str, out_dir: str, splits: str | None = None,
                 resume: bool = True, progress: bool = True):
    """Train ``cfg`` (a TrainConfig) on a features folder + captions; returns the TrainResult."""
    from fusion.trainer import train

    from pathlib import Path

    from pipeline.job_lock import exclusive_folder

    corpus = Corpus.read(captions, splits)
    data, manifests = build_train_data(features_dir, corpus, cfg.head)
    with exclusive_folder(out_dir, "training run"):  # two runs into one folder would interleave epochs
        sources = Path(out_dir) / RUN_SOURCES
        previous = sources.read_bytes() if sources.is_file() else None
        write_run_sources(out_dir, features_dir, captions, splits, manifests)
        try:
            return train(cfg, data, out_dir, resume=resume, progress=progress)
        except VidfuseError:
            # a refused run (e.g. resuming with other dims) must leave the run pointing at the
            # inputs its checkpoints were trained on: index/benchmark/search default to them
            if previous is None:
                sources.unlink(missing_ok=True)
            else:
                sources.write_bytes(previous)
            raise
