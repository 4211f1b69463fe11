"""A 10 MB caption: the GRU and the bag of words read its first MAX_WORDS words, warn once, go on.

Why: one garbage line in a caption file (a whole document pasted in) made a GRU sequence of
two million steps and stopped training; the LAFF code cuts captions too (at CLIP's 77).
"""

from __future__ import annotations

import logging
import shutil

import numpy as np

from extractors.text_bow import MAX_WORDS, BowEncoder, BowVocabulary
from extractors.text_gru import GruVocabulary
from stage_fixtures import cli, stage_data  # noqa: F401  (fixture)

HUGE = ("a man plays guitar on stage while people dance " * 230_000)[: 10 * 2**20]  # 10 MB, ~2M words


def test_token_ids_and_bow_of_a_10_mb_caption_are_cut_at_max_words():
    vocab = BowVocabulary.build(["man plays guitar", "people dance on stage", "guitar man"], min_count=1)
    encoder = BowEncoder(vocab)
    gru = GruVocabulary.build(["man plays guitar", "people dance on stage", "guitar man"], min_count=1)
    ids, offsets = gru.token_ids(["man plays", HUGE, "guitar"])
    assert np.diff(offsets).tolist() == [2 + 2, MAX_WORDS + 2, 1 + 2]  # <start> ... <end>
    counts = encoder.encode_sparse(["man plays", HUGE])
    assert counts[1].sum() <= MAX_WORDS and counts[0].sum() == 2
    assert np.array_equal(encoder.encode([HUGE]), counts[1].toarray())


def test_train_with_a_10_mb_caption_finishes_and_warns_once_naming_it(stage_data, tmp_path, caplog):
    folder = tmp_path / "ds"
    folder.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(stage_data.dataset.split_files[split], folder / f"{split}.txt")
    lines = stage_data.captions.read_text(encoding="utf-8").splitlines()
    train = set(stage_data.split("train"))
    at = next(i for i, line in enumerate(lines) if line.split("#", 1)[0] in train)
    caption_id = lines[at].split(" ", 1)[0]
    lines[at] = f"{caption_id} {HUGE}"
    captions = folder / "captions.txt"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        assert cli("train", "--features", stage_data.features, "--captions", captions, "--config", "tiny_laff_ml",
                   "--out", run, "--no-progress", "--set", "epochs=1") == 0
    warned = [r.getMessage() for r in caplog.records if "words: the GRU and bow read its first" in r.getMessage()]
    assert len(warned) == 1 and caption_id in warned[0] and f"first {MAX_WORDS}" in warned[0], warned
    assert (run / "checkpoint.pt").is_file()
