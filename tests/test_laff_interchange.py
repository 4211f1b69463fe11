"""LAFF interchange end to end: BigFile features -> import -> train a head -> export again.

The features released with the LAFF paper are BigFiles; they must train here unchanged and
come back out bit-identical.
"""

import numpy as np
import pytest

from fusion.trainer import TrainConfig
from pipeline.bigfile import export_bigfile, import_bigfile, read_bigfile, write_bigfile
from pipeline.training_set import run_training
from vidfuse.config import load_config

VIDEOS = [f"video{i}" for i in range(24)]
CAPTIONS_PER_VIDEO = 3


@pytest.fixture(scope="module")
def laff_collection(tmp_path_factory):
    """A LAFF-style collection: BigFiles for two video features and one text feature, captions, splits."""
    root = tmp_path_factory.mktemp("laff")
    rng = np.random.default_rng(0)
    topics = rng.normal(size=(len(VIDEOS), 16)).astype(np.float32)  # what each video is about
    bigfiles = {
        "clip": topics @ rng.normal(size=(16, 32)).astype(np.float32),
        "x3d": topics @ rng.normal(size=(16, 48)).astype(np.float32),
    }
    for name, matrix in bigfiles.items():
        write_bigfile(str(root / "bigfile" / name), VIDEOS, matrix)
    caption_ids = [f"{v}#{k}" for v in VIDEOS for k in range(CAPTIONS_PER_VIDEO)]
    text = np.repeat(topics, CAPTIONS_PER_VIDEO, axis=0) @ rng.normal(size=(16, 32)).astype(np.float32)
    text += 0.1 * rng.normal(size=text.shape).astype(np.float32)
    write_bigfile(str(root / "bigfile" / "text_clip"), caption_ids, text)
    (root / "captions.txt").write_text("".join(f"{c} a caption about {c.split('#')[0]}\n" for c in caption_ids))
    for split, ids in {"train": VIDEOS[:16], "val": VIDEOS[16:20], "test": VIDEOS[20:]}.items():
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_bigfile_import_train_export_round_trip(laff_collection, tmp_path):
    root = laff_collection
    features = tmp_path / "features"
    for name in ("clip", "x3d"):
        import_bigfile(str(root / "bigfile" / name), str(features / name), name, formats=("parquet", "hdf5"))
    import_bigfile(str(root / "bigfile" / "text_clip"), str(features / "text" / "clip"), "text/clip", kind="text")

    cfg = load_config(TrainConfig, "tiny_laff", [
        "head.laff.video_features=[clip,x3d]", "head.laff.text_features=[clip]",
        "head.laff.video_passthrough=[]", "head.laff.text_passthrough=[]",
        "epochs=3", "early_stop=0", "device=cpu",
    ], kind="train")
    result = run_training(cfg, str(features), str(root / "captions.txt"), str(tmp_path / "run"), progress=False)
    assert result.epochs_run == 3 and (tmp_path / "run" / "checkpoint.pt").is_file()
    assert result.best_val["t2v"]["num_queries"] == 4 * CAPTIONS_PER_VIDEO

    for name, source in (("clip", "clip"), ("x3d", "x3d"), ("text/clip", "text_clip")):
        export_bigfile(str(features / name), str(tmp_path / "export" / source))
        ids_in, matrix_in = read_bigfile(str(root / "bigfile" / source))
        ids_out, matrix_out = read_bigfile(str(tmp_path / "export" / source))
        assert ids_out == ids_in
        np.testing.assert_array_equal(np.asarray(matrix_out), np.asarray(matrix_in))
