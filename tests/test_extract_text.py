"""extract-text: caption features for every caption, resume, bad input, pairing with video CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest

from extract_helpers import IN_PROCESS, make_synth, shard_files, tiny_config
from extractors.text_bow import BowEncoder, BowVocabulary
from pipeline.captions import read_captions
from pipeline.extract_job import run_extraction
from pipeline.features import load_feature_set
from pipeline.manifest import read_manifest
from pipeline.text_job import VOCAB_FILE, run_text_extraction
from extractors.registry import build_extractor
from vidfuse.cli import main


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synth(tmp_path_factory.mktemp("synth"), 6, seed=0)


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


def _args(captions, out, *extra: str) -> list[str]:
    return ["extract-text", str(captions), "--out", str(out), "--config", "tiny", "--no-progress", *extra]


def test_features_for_every_caption_and_rerun_adds_nothing(synth, tmp_path, capsys):
    out = tmp_path / "features"
    captions = read_captions(synth.captions_txt)
    assert main(_args(synth.captions_txt, out)) == 0
    assert f"text/clip: {len(captions)} captions written" in capsys.readouterr().out

    ids = sorted(c.caption_id for c in captions)
    texts = {c.caption_id: c.text for c in captions}
    clip = build_extractor("clip", tiny_config().extractors["clip"], device="cpu")
    vocab = BowVocabulary.load(out / "text" / "bow" / VOCAB_FILE)
    train = set(synth.splits["train"])
    train_words = {w for c in captions if c.video_id in train for w in vocab.tokenize(c.text)}
    assert set(vocab.words) <= train_words  # built on the train split only
    expected = {"clip": clip.encode_text, "bow": BowEncoder(vocab).encode}
    for name, encode in expected.items():
        folder = out / "text" / name
        manifest = read_manifest(str(folder))
        assert manifest.kind == "text" and manifest.dim == (clip.dim if name == "clip" else len(vocab))
        parquet, hdf5 = load_feature_set(str(folder), "parquet"), load_feature_set(str(folder), "hdf5")
        assert sorted(parquet.ids) == ids and sorted(hdf5.ids) == ids  # every caption, once
        assert parquet.features.shape == (len(ids), manifest.dim)
        assert hasattr(parquet.features, "tocsr") == (name == "bow")  # bow counts stay sparse
        got = _dense(parquet.features)
        assert np.array_equal(_dense(hdf5.subset(parquet.ids).features), got)
        want = np.asarray(encode([texts[i] for i in parquet.ids]), dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    files = shard_files(out)
    assert run_text_extraction(str(synth.captions_txt), str(out), tiny_config(), progress=False) == {"clip": 0, "bow": 0}
    assert shard_files(out) == files


def test_text_clip_records_the_config_hash_of_the_video_clip_features(synth, tmp_path):
    out = tmp_path / "features"
    config = tiny_config()
    run_extraction(str(synth.videos_dir), str(out), config, extractors=["clip"], beam_args=IN_PROCESS, progress=False)
    run_text_extraction(str(synth.captions_txt), str(out), config, encoders=["clip"], progress=False)
    video, text = read_manifest(str(out / "clip")), read_manifest(str(out / "text" / "clip"))
    assert text.config_hash == video.config_hash
    assert (text.model, text.weights, text.dim) == (video.model, video.weights, video.dim)

    # another CLIP setting on the text side: another hash, so training can refuse the pair
    other = tiny_config("extractors.clip.normalize=false")
    run_text_extraction(str(synth.captions_txt), str(tmp_path / "other"), other, encoders=["clip"], progress=False)
    assert read_manifest(str(tmp_path / "other" / "text" / "clip")).config_hash != video.config_hash


BAD_FILES = {
    "missing": None,
    "binary": b"\x00\xff\xfe garbage \x00" * 40,
    "msrvtt_without_sentences": json.dumps({"videos": []}).encode(),
    "laff_without_caption_number": b"video0 a red circle moves left\n",
    "empty": b"",
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_caption_file_is_a_clear_error(case, tmp_path, capsys):
    suffix = ".json" if case.startswith("msrvtt") else ".txt"
    path = tmp_path / f"captions{suffix}"
    if BAD_FILES[case] is not None:
        path.write_bytes(BAD_FILES[case])
    out = tmp_path / "features"
    assert main(_args(path, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidfuse extract-text: error:") and str(path) in err
    assert len(err.splitlines()) == 1
    assert not list(out.rglob("part-*"))


def test_unknown_encoder_is_a_clear_error(synth, tmp_path, capsys):
    assert main(_args(synth.captions_txt, tmp_path / "features", "--encoders", "clip,glove")) == 2
    err = capsys.readouterr().err
    assert "glove" in err and "clip" in err and "Traceback" not in err


def test_other_captions_are_refused_and_the_vocabulary_is_kept(synth, tmp_path, capsys):
    out = tmp_path / "features"
    assert main(_args(synth.captions_txt, out, "--encoders", "bow")) == 0
    vocab_file = out / "text" / "bow" / VOCAB_FILE
    vocab_before, files = vocab_file.read_bytes(), shard_files(out)

    other = make_synth(tmp_path / "other", 6, seed=7)  # other captions -> another train vocabulary
    assert main(_args(other.captions_txt, out, "--encoders", "bow")) == 2
    err = capsys.readouterr().err
    assert "text/bow" in err and "vocabulary_sha" in err
    assert vocab_file.read_bytes() == vocab_before  # still the vocabulary the shards were encoded with
    assert shard_files(out) == files


def test_unknown_format_is_refused_before_anything_is_written(synth, tmp_path, capsys):
    out = tmp_path / "features"
    assert main(_args(synth.captions_txt, out, "--encoders", "bow", "--format", "parquet,hdf4")) == 2
    assert "hdf4" in capsys.readouterr().err
    assert not (out / "text" / "bow" / "_manifest.json").exists()
    assert main(_args(synth.captions_txt, out, "--encoders", "bow", "--format", "parquet")) == 0


def test_interrupted_job_resumes_and_its_manifest_lists_every_shard(synth, tmp_path, monkeypatch):
    out = tmp_path / "features"
    config = tiny_config("text.shard_size=8")
    calls = {"n": 0}
    encode = BowEncoder.encode_sparse  # what the job calls: bow is stored sparse

    def interrupted(self, texts):
        calls["n"] += 1
        if calls["n"] == 3:  # Ctrl-C while the third shard is being encoded
            raise KeyboardInterrupt
        return encode(self, texts)

    monkeypatch.setattr(BowEncoder, "encode_sparse", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_text_extraction(str(synth.captions_txt), str(out), config, encoders=["bow"], progress=False)
    monkeypatch.setattr(BowEncoder, "encode_sparse", encode)
    folder = out / "text" / "bow"
    assert len(list(folder.glob("part-*.parquet"))) == 2

    total = len(read_captions(synth.captions_txt))
    assert run_text_extraction(str(synth.captions_txt), str(out), config, encoders=["bow"], progress=False) == {"bow": total - 16}
    stems = {p.stem for p in folder.glob("part-*.parquet")}
    assert set(read_manifest(str(folder)).shards) == stems == {p.stem[1:] for p in folder.glob("_part-*.h5")}
    assert sorted(load_feature_set(str(folder)).ids) == sorted(c.caption_id for c in read_captions(synth.captions_txt))
