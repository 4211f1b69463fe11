"""Own text encoders: tokenizer, bag-of-words vocabulary/encoder, word2vec loading and mean encoder."""

from __future__ import annotations

import numpy as np
import pytest

from extractors.text_bow import (
    DEFAULT_STOPWORDS,
    BowConfig,
    BowEncoder,
    BowVocabulary,
    VocabularyError,
    build_bow_encoder,
    tokenize,
)
from extractors.text_gru import END, PAD, START, UNK, GruVocabulary
from extractors.text_w2v import W2VConfig, W2VEncoder, W2VFormatError, build_w2v_encoder, load_word2vec

TRAIN = [
    "A man is singing a song on the stage",
    "a man sings, and a woman dances",
    "The woman is dancing on a stage",
    "a dog runs; a man runs",
    "a dog is running in the park",
    "man man dog",
]


def test_tokenize():
    # lower-cased, split on every non-alphanumeric character (as the official text processing)
    assert tokenize("A Man's café, DON'T stop! 'quoted' 3D-video") == [
        "a", "man", "s", "cafe", "don", "t", "stop", "quoted", "3d", "video"]
    assert tokenize("") == [] and tokenize("!!! ...") == []
    assert tokenize("it’s") == tokenize("it's") == ["it", "s"]
    assert tokenize("snake_case\tand\nnaïve—dash 日本x") == ["snake", "case", "and", "naive", "dash", "x"]


def test_official_stopword_list():
    assert len(DEFAULT_STOPWORDS) == 153
    # the contractions' pieces are stopwords ("don't" -> "don", "t"); the joined forms are not words any more
    assert {"don", "t", "s", "ll", "re", "ve", "wouldn", "mightn"} <= DEFAULT_STOPWORDS
    assert not any("'" in w for w in DEFAULT_STOPWORDS)
    assert not {"man", "video", "person", "two"} & DEFAULT_STOPWORDS
    vocab = BowVocabulary.build(["I don't know, it's a man's dog"] * 2, min_count=2)
    assert vocab.words == ["dog", "know", "man"]


def test_vocabulary_min_count_stopwords_and_order():
    vocab = BowVocabulary.build(TRAIN, min_count=2)
    # counts: man 5, dog 3, stage 2, woman 2, runs 2; 'a', 'is', 'on', 'the', 'and', 'in' are stopwords
    assert vocab.words == ["man", "dog", "runs", "stage", "woman"]
    assert vocab.counts == [5, 3, 2, 2, 2]
    assert vocab.index == {w: i for i, w in enumerate(vocab.words)}
    assert len(vocab) == 5 and "man" in vocab and "a" not in vocab
    assert not set(vocab.words) & DEFAULT_STOPWORDS
    # deterministic: the same captions in another order give the same vocabulary
    assert BowVocabulary.build(list(reversed(TRAIN)), min_count=2).words == vocab.words
    # min_count 1 keeps singletons, and stopwords stay when asked
    assert "singing" in BowVocabulary.build(TRAIN, min_count=1)
    with_stop = BowVocabulary.build(TRAIN, min_count=2, stopwords=())
    assert with_stop.words[0] == "a" and "is" in with_stop
    with pytest.raises(VocabularyError, match="empty vocabulary"):
        BowVocabulary.build(TRAIN, min_count=100)


def test_vocabulary_save_load(tmp_path):
    vocab = BowVocabulary.build(TRAIN, min_count=2)
    vocab.save(tmp_path / "vocab.json")
    back = BowVocabulary.load(tmp_path / "vocab.json")
    assert back.words == vocab.words and back.counts == vocab.counts and back.min_count == 2
    assert back.stopwords == DEFAULT_STOPWORDS
    # W2VV++/LAFF count file: "word count" per line
    (tmp_path / "bow_nsw_5.txt").write_text("man 5\ndog 3\n")
    legacy = BowVocabulary.load(tmp_path / "bow_nsw_5.txt")
    assert legacy.words == ["man", "dog"] and legacy.counts == [5, 3]
    (tmp_path / "bad.txt").write_text("man 5\ndog three\n")
    with pytest.raises(VocabularyError, match="line 2"):
        BowVocabulary.load(tmp_path / "bad.txt")


def test_bow_encode_counts():
    vocab = BowVocabulary.build(TRAIN, min_count=2)  # man dog runs stage woman
    enc = BowEncoder(vocab)
    assert enc.dim == 5
    x = enc.encode(["man man dog", "A WOMAN on a stage with a man", "nothing known here", ""])
    assert x.dtype == np.float32 and x.shape == (4, 5)
    np.testing.assert_array_equal(x, [[2, 1, 0, 0, 0], [1, 0, 0, 1, 1], [0] * 5, [0] * 5])


def test_build_bow_encoder_from_config():
    enc = build_bow_encoder(BowConfig(min_count=2, remove_stopwords=False), TRAIN)
    assert "a" in enc.vocab


# ----------------------------------------------------------------------------- word2vec

WORDS = ["man", "dog", "Obama", "the", "park", "naïve"]


def _matrix():
    rng = np.random.default_rng(0)
    return rng.standard_normal((len(WORDS), 4)).astype(np.float32)


def _write_binary(path, words, mat, newline_after_vector=True):
    with open(path, "wb") as f:
        f.write(f"{len(words)} {mat.shape[1]}\n".encode())
        for w, v in zip(words, mat):
            f.write(w.encode("utf-8") + b" " + v.astype("<f4").tobytes())
            if newline_after_vector:
                f.write(b"\n")


def _write_text(path, words, mat, header=True):
    lines = [f"{len(words)} {mat.shape[1]}"] if header else []
    lines += [w + " " + " ".join(repr(float(x)) for x in v) for w, v in zip(words, mat)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_bigfile(folder, words, mat):
    folder.mkdir()
    mat.astype("<f4").tofile(folder / "feature.bin")
    (folder / "id.txt").write_text(" ".join(words))
    (folder / "shape.txt").write_text(f"{len(words)} {mat.shape[1]}")


def test_binary_text_and_bigfile_load_identically(tmp_path):
    mat = _matrix()
    _write_binary(tmp_path / "c.bin", WORDS, mat, newline_after_vector=True)  # C word2vec tool
    _write_binary(tmp_path / "g.bin", WORDS, mat, newline_after_vector=False)  # gensim
    _write_binary(tmp_path / "noext", WORDS, mat)  # detected as binary by content
    _write_text(tmp_path / "v.txt", WORDS, mat)
    _write_text(tmp_path / "noheader.vec", WORDS, mat, header=False)
    _write_text(tmp_path / "text_noext", WORDS, mat)
    _write_bigfile(tmp_path / "vec4", WORDS, mat)
    for name in ("c.bin", "g.bin", "noext", "v.txt", "noheader.vec", "text_noext", "vec4"):
        words, loaded = load_word2vec(tmp_path / name)
        assert words == WORDS, name
        assert loaded.dtype == np.float32 and loaded.shape == (6, 4), name
        np.testing.assert_array_equal(np.asarray(loaded), mat, err_msg=name)
    assert isinstance(load_word2vec(tmp_path / "vec4")[1], np.memmap)


def test_malformed_word_vector_files(tmp_path):
    mat = _matrix()
    _write_binary(tmp_path / "t.bin", WORDS, mat)
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "trunc.bin").write_bytes(data[:-10])
    with pytest.raises(W2VFormatError, match=r"trunc\.bin.*record 6 of 6.*truncated"):
        load_word2vec(tmp_path / "trunc.bin")
    (tmp_path / "hdr.bin").write_bytes(b"not a header\n" + data[4:])
    with pytest.raises(W2VFormatError, match="hdr.bin"):
        load_word2vec(tmp_path / "hdr.bin")
    _write_text(tmp_path / "short.txt", WORDS, mat)
    lines = (tmp_path / "short.txt").read_text().splitlines()
    lines[3] = "park 0.1 0.2"
    (tmp_path / "short.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(W2VFormatError, match=r"short\.txt line 4: 2 values, expected 4"):
        load_word2vec(tmp_path / "short.txt")
    lines[3] = "park 0.1 0.2 abc 0.3"
    (tmp_path / "short.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(W2VFormatError, match="line 4: non-numeric"):
        load_word2vec(tmp_path / "short.txt")
    _write_bigfile(tmp_path / "bf", WORDS, mat)
    (tmp_path / "bf" / "shape.txt").write_text("7 4")
    with pytest.raises(W2VFormatError, match="6 ids, shape.txt says 7"):
        load_word2vec(tmp_path / "bf")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(W2VFormatError, match="missing"):
        load_word2vec(tmp_path / "empty_dir")
    with pytest.raises(W2VFormatError, match="not found"):
        load_word2vec(tmp_path / "nope.bin")


def test_w2v_mean_ignores_oov_and_stopwords():
    mat = _matrix()
    enc = W2VEncoder(WORDS, mat)
    assert enc.dim == 4
    x = enc.encode(["The man and the DOG xyzzy", "the a an", "obama in the park", "man man dog"])
    assert x.dtype == np.float32 and x.shape == (4, 4)
    np.testing.assert_allclose(x[0], (mat[0] + mat[1]) / 2, rtol=1e-6)  # 'the' stopword, 'xyzzy' OOV
    np.testing.assert_array_equal(x[1], 0)  # only stopwords -> zero vector, counted
    np.testing.assert_allclose(x[2], (mat[2] + mat[4]) / 2, rtol=1e-6)  # 'Obama' found lowercased
    np.testing.assert_allclose(x[3], (2 * mat[0] + mat[1]) / 3, rtol=1e-6)  # token-level mean
    assert enc.stats.texts == 4 and enc.stats.empty == 1 and enc.stats.oov == 1
    assert enc.stats.empty_examples == ["the a an"]
    np.testing.assert_allclose(enc.encode(["naive", "naïve"]), mat[[5, 5]], rtol=1e-6)  # accents folded
    uniq = W2VEncoder(WORDS, mat, unique_words=True).encode(["man man dog"])
    np.testing.assert_allclose(uniq[0], (mat[0] + mat[1]) / 2, rtol=1e-6)
    keep_stop = W2VEncoder(WORDS, mat, remove_stopwords=False).encode(["the man"])
    np.testing.assert_allclose(keep_stop[0], (mat[3] + mat[0]) / 2, rtol=1e-6)


def test_embedding_matrix_for_gru_vocabulary():
    mat = _matrix()
    vocab = GruVocabulary(BowVocabulary(["dog", "zebra", "man"], [9, 8, 7]))
    emb = W2VEncoder(WORDS, mat).embedding_matrix_for(vocab.tokens, seed=3)
    assert emb.shape == (7, 4) and emb.dtype == np.float32  # 4 special tokens + 3 words
    np.testing.assert_array_equal(emb[PAD], 0)  # never read
    np.testing.assert_array_equal(emb[4], mat[1])  # dog
    np.testing.assert_array_equal(emb[6], mat[0])  # man
    for row in (START, END, UNK, 5):  # no vector (specials, zebra): uniform(-1, 1) as released
        assert np.all(np.abs(emb[row]) <= 1.0) and np.any(emb[row] != 0)
    again = W2VEncoder(WORDS, mat).embedding_matrix_for(vocab.tokens, seed=3)
    np.testing.assert_array_equal(emb, again)
    # rows line up with the GRU's token ids
    ids, _ = vocab.token_ids(["man dog"])
    np.testing.assert_array_equal(emb[ids[1:-1]], mat[[0, 1]])


def test_gru_vocabulary_ids():
    vocab = GruVocabulary.build(TRAIN, min_count=2)
    # stopwords kept, ordered by count then alphabetically, after <pad> <start> <end> <unk>
    # counts: a 8, man 5, dog 3, is 3, the 3, on 2, runs 2, stage 2, woman 2 (min count 2)
    assert vocab.tokens[:4] == ["<pad>", "<start>", "<end>", "<unk>"] and (PAD, START, END, UNK) == (0, 1, 2, 3)
    assert vocab.tokens[4:] == ["a", "man", "dog", "is", "the", "on", "runs", "stage", "woman"]
    assert len(vocab) == 13
    ids, offsets = vocab.token_ids(["The man is singing", "", "zebra"])
    the, man, is_ = (vocab.tokens.index(w) for w in ("the", "man", "is"))
    assert ids.tolist() == [START, the, man, is_, UNK, END, START, END, START, UNK, END]
    assert offsets.tolist() == [0, 6, 8, 11] and ids.dtype == offsets.dtype == np.int64
    assert PAD not in ids.tolist()  # padding is distinct from every word, <unk> included
    # the bag of words of the same captions drops the stopwords the GRU keeps
    assert "a" not in BowVocabulary.build(TRAIN, min_count=2) and vocab.id_of("a") == 4


def test_gru_vocabulary_save_load(tmp_path):
    vocab = GruVocabulary.build(TRAIN, min_count=2)
    vocab.save(tmp_path / "gru_vocab.json")
    back = GruVocabulary.load(tmp_path / "gru_vocab.json")
    assert back.tokens == vocab.tokens
    assert back.token_ids(TRAIN)[0].tolist() == vocab.token_ids(TRAIN)[0].tolist()


def test_build_w2v_encoder_from_config(tmp_path):
    mat = _matrix()
    _write_bigfile(tmp_path / "vec", WORDS, mat)
    enc = build_w2v_encoder(W2VConfig(path=str(tmp_path / "vec")))
    np.testing.assert_allclose(enc.encode(["dog"])[0], mat[1])
    with pytest.raises(W2VFormatError, match="needs 'path'"):
        build_w2v_encoder(W2VConfig())
