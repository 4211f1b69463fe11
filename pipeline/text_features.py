"""The read side of ``vidfuse extract-text``'s output: where each text feature lives, and the
encoder that wrote a folder, rebuilt to encode new text (queries) exactly as the captions were.

Apart from :mod:`pipeline.text_job` so that reading needs neither the job's config machinery
nor torch (a torch-free ``vidfuse search`` imports this).
"""

from __future__ import annotations

import posixpath
from typing import Callable, Sequence

import numpy as np

from pipeline.manifest import MANIFEST_NAME, read_manifest
from vidfuse.errors import VidfuseError

VOCAB_FILE = "_vocab.json"  # "_": Arrow's dataset reader skips it beside the shards
GRU_VOCAB_FILE = "_gru_vocab.json"  # extractors.text_gru's: written beside the bow vocabulary
LEARNED_TEXT_FEATURES = ("gru",)  # text features a head computes itself (from token ids), not read from shards


def text_feature_dir(features_dir: str, encoder: str) -> str:
    return posixpath.join(features_dir, "text", encoder)


def encoder_from_manifest(folder: str, device: str = "cpu") -> Callable[[Sequence[str]], np.ndarray]:
    """The encode function that wrote ``folder`` (a ``text/<encoder>`` feature set), for new text.

    Queries typed at search time must be encoded exactly as the training captions were:
    the same CLIP config, the same bow vocabulary, the same word vectors.
    """
    manifest = read_manifest(folder)
    if manifest is None:
        raise VidfuseError(f"no {MANIFEST_NAME} in {folder}: run `vidfuse extract-text` first")
    name = manifest.name.split("/", 1)[-1]
    if name == "clip":
        from extractors.registry import build_extractor

        return build_extractor("clip", manifest.config, device=device).encode_text
    if name == "bow":
        from extractors.text_bow import BowEncoder, BowVocabulary

        return BowEncoder(BowVocabulary.load(posixpath.join(folder, manifest.extra.get("vocabulary", VOCAB_FILE)))).encode
    if name == "w2v":
        from extractors.text_w2v import W2VConfig, W2VEncoder

        known = W2VConfig.__dataclass_fields__
        return W2VEncoder.from_config(W2VConfig(**{k: v for k, v in manifest.config.items() if k in known})).encode
    raise VidfuseError(f"{folder}: unknown text encoder {name!r}")


def gru_vocabulary(features_dir: str):
    """The GRU vocabulary extract-text wrote beside the bow features (:mod:`extractors.text_gru`)."""
    from extractors.text_gru import GruVocabulary

    path = posixpath.join(text_feature_dir(features_dir, "bow"), GRU_VOCAB_FILE)
    try:
        return GruVocabulary.load(path)
    except VidfuseError as exc:
        raise VidfuseError(
            f"the 'gru' text feature needs the GRU vocabulary that `vidfuse extract-text --encoders bow` writes "
            f"({exc}); features extracted by an earlier vidfuse lack it: extract the text features again"
        ) from None
