"""``extract-text``: caption-side features in the same shard format as the video side.

Layout: ``OUT/text/<encoder>/`` with a manifest per encoder. ``text/clip`` records the same
config hash as the video ``clip`` folder, so training can refuse text and video CLIP
features that came from different weights. The bow vocabulary is built on the train split
only (test words stay unknown) and saved beside its shards (``vocab.json``).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import asdict
from collections import Counter
from itertools import islice
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from pipeline.captions import Caption, iter_captions
from pipeline.config import TEXT_ENCODERS, ExtractConfig
from pipeline.job_lock import exclusive_folder
from pipeline.manifest import Manifest, check_compatible, library_versions, read_manifest, write_manifest
from pipeline.shards import (
    FeatureRow,
    SparseRows,
    existing_ids,
    list_shards,
    new_shard_name,
    normalize_format,
    remove_incomplete_shards,
    shard_stem,
    write_shard,
)
from pipeline.splits import find_split_files, read_split
from pipeline.text_features import GRU_VOCAB_FILE, VOCAB_FILE, text_feature_dir
from vidfuse.config import config_hash, config_to_dict
from vidfuse.errors import ConfigError, VidfuseError

log = logging.getLogger(__name__)

LEGACY_VOCAB_FILE = "vocab.json"  # folders written before


def vocab_path(bow_dir: str) -> str:
    """The bag-of-words vocabulary of a ``text/bow`` folder (an older folder's name if that is what it has)."""
    from pipeline.fs import FileSystems

    path = posixpath.join(bow_dir, VOCAB_FILE)
    older = posixpath.join(bow_dir, LEGACY_VOCAB_FILE)
    return path if FileSystems.exists(path) or not FileSystems.exists(older) else older


SPARSE = "sparse"  # manifest extra["storage"] of a bow folder whose shards hold CSR counts


def batches(captions: Iterable[Caption], size: int) -> Iterator[list[Caption]]:
    """``captions`` in lists of ``size`` (the last shorter): what is held at a time."""
    it = iter(captions)
    while batch := list(islice(it, size)):
        yield batch


def _read_through(captions_path: str, splits_dir: str | None, bow: bool) -> tuple[int, Counter[str] | None]:
    """The file read through once, every error in it raised: (how many captions, with ``bow``
    the :func:`~extractors.text_bow.word_counts` of the train split's captions, which both bow
    and GRU vocabularies come from); with ``bow``, :func:`warn_overlong` on the way."""
    from extractors.text_bow import capped_tokens

    train: set[str] | None = None
    split_error = None
    if bow:
        try:
            train = set(read_split(find_split_files(captions_path, splits_dir)["train"]))
        except VidfuseError as exc:  # raised after the captions: an error in them comes first, as it always did
            split_error = exc
    count, in_train, counts = 0, 0, Counter()

    def captions() -> Iterator[Caption]:
        nonlocal count, in_train
        for caption in iter_captions(captions_path):
            count += 1
            if train is not None and caption.video_id in train:  # word_counts, a caption at a time
                in_train += 1
                counts.update(capped_tokens(caption.text))
            yield caption

    if bow:
        warn_overlong(captions())
    else:
        for _ in captions():
            pass
    if split_error is not None:
        raise split_error
    if train is not None and not in_train:
        raise VidfuseError(f"no caption of {captions_path} belongs to a video of the train split")
    return count, counts if bow else None


def warn_overlong(captions: Iterable[Caption]) -> None:
    """One warning naming the first caption the GRU and bow cut at MAX_WORDS words (and how many more)."""
    from extractors.text_bow import MAX_WORDS, overlong

    first, cut = None, 0
    for batch in batches(captions, 4096):
        found = overlong([c.text for c in batch])
        if found and first is None:
            first = (batch[found[0][0]].caption_id, found[0][1])
        cut += len(found)
    if first is not None:
        more = f"; {cut - 1} more caption(s) are cut too" if cut > 1 else ""
        log.warning("caption %s has %d words: the GRU and bow read its first %d%s", first[0], first[1], MAX_WORDS, more)


def _encoder(name: str, config: ExtractConfig, train_counts: Mapping[str, int] | None, out_dir, device):
    """(encode function, manifest fields, writer of its side files) of one text encoder.

    Side files (the bow vocabulary) are written by the caller only once the folder's existing
    manifest accepted the new one: a refused rerun must not replace the vocabulary that the
    folder's shards were encoded with.
    """
    if name == "clip":
        from extractors.registry import build_extractor

        if "clip" not in config.extractors:
            raise ConfigError("text encoder 'clip' needs the video side's extractors.clip settings in the config")
        clip = build_extractor("clip", config.extractors["clip"], device=device)
        described = clip.describe()
        settings = config_to_dict(clip.config)
        fields = dict(model=described["model"], weights=described["weights"], dim=described["dim"],
                      config=settings, config_hash=config_hash(settings), extra={})
        return clip.encode_text, fields, lambda: None
    if name == "bow":
        from extractors.text_bow import BowEncoder, BowVocabulary

        vocab = BowVocabulary.from_config_counts(config.text.bow, train_counts)
        settings = asdict(config.text.bow)
        settings["vocabulary_sha"] = hashlib.sha256("\n".join(vocab.words).encode()).hexdigest()[:16]
        fields = dict(model="bow", weights="none", dim=len(vocab), config=settings, config_hash=config_hash(settings),
                      extra={"vocabulary": VOCAB_FILE, "gru_vocabulary": GRU_VOCAB_FILE, "storage": SPARSE})
        return BowEncoder(vocab).encode_sparse, fields, lambda: _save_vocabularies(
            vocab, config.text.bow.min_count, train_counts, out_dir)
    if name == "w2v":
        from extractors.text_w2v import W2VEncoder

        encoder = W2VEncoder.from_config(config.text.w2v)
        settings = asdict(config.text.w2v)
        fields = dict(model="word2vec", weights=str(config.text.w2v.path), dim=encoder.dim,
                      config=settings, config_hash=config_hash(settings), extra={})
        return encoder.encode, fields, lambda: None
    raise ConfigError(f"unknown text encoder {name!r}; choose from {list(TEXT_ENCODERS)}")


def _refuse_dense_bow(folder: str, existing: Manifest) -> None:
    """A bow folder of an earlier vidfuse holds dense rows: sparse shards must not join them."""
    if existing.name == "text/bow" and existing.extra.get("storage") != SPARSE:
        raise VidfuseError(
            f"{folder}: holds bow vectors stored dense by an earlier vidfuse (captions x vocabulary float32); "
            "training still reads it, but to add captions delete that folder and rerun "
            "`vidfuse extract-text --encoders bow` (it now stores them sparse)"
        )


def _save_vocabularies(vocab, min_count: int, train_counts: Mapping[str, int], out_dir: str) -> None:
    """The bow vocabulary, and the GRU's own (same train captions and min count, stopwords kept)."""
    from extractors.text_gru import GruVocabulary

    vocab.save(posixpath.join(out_dir, VOCAB_FILE))
    GruVocabulary.from_counts(train_counts, min_count).save(posixpath.join(out_dir, GRU_VOCAB_FILE))


def _encode_missing(
    name: str,
    encode: Callable[[Sequence[str]], np.ndarray],
    manifest: Manifest,
    captions_path: str,
    count: int,
    out_dir: str,
    batch_size: int,
    shard_size: int,
    progress: bool,
) -> int:
    """Encode the captions not yet in ``out_dir``, read from the file a shard (``shard_size``) at a time."""
    remove_incomplete_shards(out_dir, manifest.formats)  # what a killed run left
    present = existing_ids(out_dir, manifest.formats)
    todo = (c for c in iter_captions(captions_path) if c.caption_id not in present)
    written = 0
    with tqdm(total=max(count - len(present), 0), desc=f"text/{name}", unit="caption", disable=not progress) as bar:
        for chunk in batches(todo, shard_size):  # memory: one shard of captions and vectors at a time
            vectors = []
            for b in range(0, len(chunk), batch_size):
                vectors.append(encode([c.text for c in chunk[b : b + batch_size]]))
                bar.update(min(batch_size, len(chunk) - b))
            ids = [c.caption_id for c in chunk]
            if hasattr(vectors[0], "tocsr"):  # sparse counts (bow) stay sparse on disk
                import scipy.sparse

                rows = SparseRows(ids, scipy.sparse.vstack(vectors, format="csr", dtype=np.float32))
            else:
                matrix = np.concatenate([np.asarray(v, dtype=np.float32) for v in vectors])
                rows = [FeatureRow(video_id=i, feature=v) for i, v in zip(ids, matrix)]
            del vectors, chunk
            write_shard(out_dir, new_shard_name(), rows, manifest.formats, manifest.hash())
            written += len(ids)
    return written


def run_text_extraction(
    captions_path: str,
    out_dir: str,
    config: ExtractConfig,
    encoders: Sequence[str] | None = None,
    splits_dir: str | None = None,
    formats: Sequence[str] | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, int]:
    """Write ``OUT/text/<encoder>/`` for each encoder; returns captions written per encoder."""
    names = list(encoders or config.text.encoders)
    unknown = [n for n in names if n not in TEXT_ENCODERS]
    if unknown:
        raise ConfigError(f"unknown text encoder(s) {unknown}; choose from {list(TEXT_ENCODERS)}")
    # the whole file is read through once before anything is written: a bad caption on its last
    # line refuses the run as it always did; after that it is read again as each step needs it
    count, train_counts = _read_through(captions_path, splits_dir, bow="bow" in names)
    # checked before anything is written: a manifest naming an unknown format would refuse every rerun
    formats = list(dict.fromkeys(normalize_format(f) for f in (formats or config.output.formats)))
    written = {}
    with exclusive_folder(posixpath.join(out_dir, "text"), "extract-text job"):
        for name in names:
            folder = text_feature_dir(out_dir, name)
            encode, fields, write_side_files = _encoder(name, config, train_counts, folder, device)
            manifest = Manifest(name=f"text/{name}", kind="text", level="sentence", sampling={},
                                versions=library_versions(), formats=formats, **fields)
            existing = read_manifest(folder)
            if existing is not None:
                _refuse_dense_bow(folder, existing)
                check_compatible(existing, manifest)
                manifest.formats, manifest.shards = list(existing.formats), list(existing.shards)
            write_side_files()
            write_manifest(folder, manifest)
            written[name] = _encode_missing(
                name, encode, manifest, captions_path, count, folder, config.text.batch_size, config.text.shard_size,
                progress,
            )
            # from the disk: shards of an interrupted run were never added to the manifest
            manifest.shards = sorted(
                shard_stem(p) for p in list_shards(folder, manifest.formats[0])
            )
            write_manifest(folder, manifest)
            log.info("text/%s: %d captions encoded, %d already present", name, written[name], count - written[name])
    return written
