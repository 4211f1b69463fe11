"""`vidfuse serve`'s HTTP API through FastAPI's test client, on runs trained on the stage data."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

from stage_fixtures import built_index, cli, features_with, stage_data, trained_run  # noqa: F401  (fixture)

from fastapi.testclient import TestClient  # the 'serve' extra is part of the test extra

import vidfuse

QUERY = "a red circle slides left"


def _engine(name, run, index, features=None):
    from vidfuse.serve.engine import Engine

    return Engine(name, str(run), str(index), str(features) if features else None)


def _client(engines, cache) -> TestClient:
    from vidfuse.serve.app import create_app
    from vidfuse.serve.media import Thumbnails

    return TestClient(create_app(engines, Thumbnails(str(cache))), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def runs(stage_data):
    return {"laff_ml": trained_run(stage_data, "tiny_laff_ml"), "dllfa": trained_run(stage_data, "tiny_dllfa")}


@pytest.fixture(scope="module")
def client(stage_data, runs, tmp_path_factory):
    engines = [_engine(name, run, built_index(stage_data, run)) for name, run in runs.items()]
    return _client(engines, tmp_path_factory.mktemp("thumbs"))


def _error(response, status: int) -> str:
    """The JSON message of a refused request (never a traceback)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    return detail


def _search_command(run, index, k: int, capsys) -> list[tuple[int, str, float]]:
    """(rank, video id, score) as `vidfuse search` prints them."""
    capsys.readouterr()
    assert cli("search", "--run", run, "--index", index, "-k", k, QUERY) == 0
    rows = []
    for line in capsys.readouterr().out.splitlines()[1:]:
        rank, score, video_id = line.split()[:3]
        rows.append((int(rank), video_id, float(score)))
    return rows


# --------------------------------------------------------------------------- service
def test_health_runs_and_openapi_schema(client, runs):
    assert client.get("/api/health").json() == {"status": "ok", "version": vidfuse.__version__,
                                                "runs": ["laff_ml", "dllfa"]}
    described = {r["name"]: r for r in client.get("/api/runs").json()}
    assert described["laff_ml"]["head"] == "laff_ml" and described["dllfa"]["head"] == "dllfa"
    assert described["laff_ml"]["run"] == str(runs["laff_ml"].resolve())
    assert described["dllfa"]["two_stage"] and not described["laff_ml"]["two_stage"]
    assert {r["split"] for r in described.values()} == {"test"} and described["laff_ml"]["count"] == 12
    schema = client.get("/openapi.json").json()
    for path in ("/api/search", "/api/videos/{video_id}", "/api/thumbnails/{video_id}", "/api/media/{video_id}",
                 "/api/health", "/api/runs", "/api/reload"):
        assert path in schema["paths"], path
    params = {p["name"]: p["schema"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
    assert params["k"]["maximum"] == 1000 and params["q"]["maxLength"] == 1000
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):  # no CDN: the page works with no network
        static = client.get(f"/static/{name}")
        assert static.status_code == 200 and "http://" not in static.text and "https://" not in static.text
    assert "http://" not in page.text and "https://" not in page.text


# --------------------------------------------------------------------------- search
@pytest.mark.parametrize("name", ["laff_ml", "dllfa"])
def test_search_lists_what_vidfuse_search_prints(client, stage_data, runs, name, capsys):
    body = client.get("/api/search", params={"q": QUERY, "k": 7, "run": name}).json()
    expected = _search_command(runs[name], built_index(stage_data, runs[name]), 7, capsys)
    got = [(r["rank"], r["video_id"], round(r["score"], 4)) for r in body["results"]]
    assert got == [(rank, v, pytest.approx(score, abs=1e-4)) for rank, v, score in expected]
    assert len(got) == 7 and body["took_ms"] > 0 and body["run"] == name
    assert all(r["video_available"] and r["media_url"] and r["thumbnails_url"] for r in body["results"])


def test_laff_results_carry_the_fusion_weights_of_each_feature(client, stage_data, runs):
    from fusion.encode import encode_bank
    from index.run_index import Run
    from pipeline.training_set import load_video_bank

    from pipeline.training_set import head_features

    results = client.get("/api/search", params={"q": QUERY, "k": 3, "run": "laff_ml"}).json()["results"]
    run = Run.load(str(runs["laff_ml"]))
    video_names, text_names = head_features(run.config.head)  # multi-level LAFF-ml: clip@frames, x3d
    bank, _ = load_video_bank(str(stage_data.features), video_names, [r["video_id"] for r in results])
    expected = run.head.attention(encode_bank(run.head, bank, "video"), "video")
    for i, r in enumerate(results):
        att = r["attention"]
        assert set(att["video"]) == set(video_names) and set(att["text"]) == set(text_names)
        for side in ("video", "text"):  # per head, the softmax over the features
            weights = np.array(list(att[side].values()))
            assert weights.shape[1] == run.head.heads and np.allclose(weights.sum(0), 1, atol=1e-5)
        for feature in video_names:
            assert np.allclose(att["video"][feature], expected[feature][i].numpy(), atol=1e-5)
        assert r["two_stage"] is None
    assert results[0]["attention"]["text"] == results[1]["attention"]["text"]  # one query, one text side


def test_dllfa_results_carry_gist_and_full_scores_and_attended_frames(client, stage_data, runs):
    from fusion.encode import encode_texts
    from index.faiss_index import VideoIndex
    from index.search import Searcher

    index_dir = built_index(stage_data, runs["dllfa"])
    results = client.get("/api/search", params={"q": QUERY, "k": 5, "run": "dllfa"}).json()["results"]
    searcher = Searcher(str(runs["dllfa"]), str(index_dir))
    query = encode_texts(searcher.run.head, searcher.queries.bank([QUERY]))
    index = VideoIndex.load(str(index_dir))
    for r in results:
        two = r["two_stage"]
        assert two["full_score"] == r["score"] and two["frame_feature"] == "clip"
        gist = float(query[0] @ index.reconstruct_all()[index.position(r["video_id"])])
        assert two["gist_score"] == pytest.approx(gist, abs=1e-5)  # stage 1: the index's score
        frames = client.get(f"/api/videos/{r['video_id']}").json()["features"]["clip"]["frame_indices"]
        assert len(two["frame_attention"]) == len(frames) and sum(two["frame_attention"]) == pytest.approx(1, abs=1e-5)
        assert r["attention"] is None
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)


def test_split_picks_the_index_and_an_unknown_one_is_a_404(client):
    assert client.get("/api/search", params={"q": QUERY, "split": "test", "run": "dllfa"}).json()["run"] == "dllfa"
    assert "split='train'" in _error(client.get("/api/search", params={"q": QUERY, "split": "train"}), 404)
    assert "laff_ml (split test)" in _error(client.get("/api/search", params={"q": QUERY, "run": "nope"}), 404)


@pytest.mark.parametrize("params, field", [
    ({"q": ""}, "q"), ({"q": "   "}, "blank"), ({"q": "a" * 10_000}, "q"), ({"q": QUERY, "k": 0}, "k"),
    ({"q": QUERY, "k": 10**6}, "k"), ({"q": QUERY, "k": "ten"}, "k"), ({}, "q"),
])
def test_bad_search_requests_are_4xx_json(client, params, field):
    response = client.get("/api/search", params=params)
    detail = _error(response, 422)
    assert field in detail and len(detail) < 200  # the 10k query is not echoed back


# --------------------------------------------------------------------------- videos
def test_video_details_and_thumbnail_strip_from_the_sampled_frames(client, stage_data, tmp_path):
    from PIL import Image

    from pipeline.features import load_feature_set

    video_id = stage_data.split("test")[0]
    details = client.get(f"/api/videos/{video_id}").json()
    clip = load_feature_set(str(stage_data.features / "clip"))
    assert details["available"] and details["reason"] is None
    assert details["features"]["clip"]["frame_indices"] == clip.frame_indices(video_id).tolist()
    assert details["features"]["clip"]["model"] == clip.manifest.model
    assert details["strip_frames"] == clip.frame_indices(video_id).tolist()
    assert set(details["features"]) == {"clip", "x3d"}

    first = client.get(details["thumbnails_url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    strip = Image.open(io.BytesIO(first.content))
    tile = round(64 * 64 / 48)  # the stage videos are 64x48
    assert strip.size == (tile * len(details["strip_frames"]), 64)
    assert client.get(details["thumbnails_url"]).content == first.content  # from the cache now


@pytest.mark.parametrize("path", ["/api/videos/nope", "/api/thumbnails/nope", "/api/media/nope",
                                  "/api/media/..%2F..%2F..%2Fetc%2Fpasswd", "/api/videos/%2E%2E/features/clip",
                                  "/api/thumbnails/../data/videos/video0", "/api/media/video0%00"])
def test_unknown_ids_and_traversal_paths_are_404(client, path):
    response = client.get(path)
    assert response.status_code == 404 and "root:" not in response.text
    assert response.headers["content-type"].startswith("application/json")


def test_media_is_the_file_with_range_requests(client, stage_data):
    video_id = stage_data.split("test")[1]
    data = (stage_data.dataset.videos_dir / f"{video_id}.mp4").read_bytes()
    url = f"/api/media/{video_id}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data and whole.headers["content-type"] == "video/mp4"
    assert whole.headers["accept-ranges"] == "bytes"
    part = client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == data[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-50"})
    assert tail.status_code == 206 and tail.content == data[-50:]
    assert client.get(url, headers={"Range": f"bytes={len(data) + 10}-"}).status_code == 416


def test_only_files_under_the_recorded_video_folders_are_served(stage_data, runs, tmp_path):
    """A features folder whose video folder holds a symlink out of it, a link within it, a real
    file, and nothing for one video (features brought from elsewhere)."""
    from pipeline.extract_job import SOURCES_FILE

    ids = stage_data.split("test")
    source = stage_data.dataset.videos_dir
    videos = tmp_path / "videos"
    (videos / "inner").mkdir(parents=True)
    shutil.copy(source / f"{ids[0]}.mp4", videos / f"{ids[0]}.mp4")
    (videos / f"{ids[1]}.mp4").symlink_to(source / f"{ids[1]}.mp4")  # out of the folder
    shutil.copy(source / f"{ids[2]}.mp4", videos / "inner" / "real.mp4")
    (videos / f"{ids[2]}.mp4").symlink_to(videos / "inner" / "real.mp4")  # stays inside
    features = features_with(stage_data, tmp_path / "features", {})
    (features / SOURCES_FILE).write_text(json.dumps({"video_dirs": [str(videos)]}))
    run = runs["laff_ml"]
    client = _client([_engine("laff_ml", run, built_index(stage_data, run), features)], tmp_path / "thumbs")

    for allowed in (ids[0], ids[2]):
        assert client.get(f"/api/media/{allowed}").content == (source / f"{allowed}.mp4").read_bytes()
    for refused in (ids[1], ids[3]):
        details = client.get(f"/api/videos/{refused}").json()
        assert not details["available"] and details["reason"].startswith("video not available")
        assert details["media_url"] is None and details["thumbnails_url"] is None
        for kind in ("media", "thumbnails"):
            assert _error(client.get(f"/api/{kind}/{refused}"), 404).startswith("video not available")
    assert "outside the recorded video folders" in client.get(f"/api/videos/{ids[1]}").json()["reason"]
    hits = {r["video_id"]: r for r in client.get("/api/search", params={"q": QUERY, "k": 12}).json()["results"]}
    assert hits[ids[0]]["video_available"] and not hits[ids[1]]["video_available"]
    assert not hits[ids[3]]["video_available"] and hits[ids[3]]["media_url"] is None


# --------------------------------------------------------------------------- reload
def test_reload_picks_up_a_rebuilt_index_folder_and_a_failed_one_keeps_serving(stage_data, runs, tmp_path):
    from index.run_index import build_index

    run = runs["laff_ml"]
    index = tmp_path / "index"
    shutil.copytree(built_index(stage_data, run), index)
    client = _client([_engine("laff_ml", run, index)], tmp_path / "thumbs")
    test_ids, val_ids = set(stage_data.split("test")), set(stage_data.split("val"))

    def found() -> set[str]:
        return {r["video_id"] for r in client.get("/api/search", params={"q": QUERY, "k": 50}).json()["results"]}

    assert found() == test_ids
    build_index(str(run), str(index), split="val", device="cpu")  # another process's atomic rebuild
    assert found() == test_ids  # still the index it loaded
    described = client.post("/api/reload").json()
    assert described[0]["split"] == "val" and found() == val_ids

    os.remove(index / "index.faiss")
    assert "still serving the previous index" in _error(client.post("/api/reload"), 409)
    assert found() == val_ids


# --------------------------------------------------------------------------- command line
@pytest.mark.parametrize("args, message", [
    (["--run", "r", "--index", "a", "--index", "b"], "one --index per --run"),
    (["--run", "r", "--index", "a"] * 3, "at most 2"),
    (["--run", "r", "--index", "a", "--port", "70000"], "--port"),
    (["--run", "r", "--index", "a", "--features", "f", "--features", "g"], "one --features per --run"),
])
def test_serve_refuses_bad_arguments_in_one_line(args, message, capsys):
    assert cli("serve", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidfuse serve: error: ") and message in err and "\n" not in err


def test_serve_refuses_a_taken_port_and_a_missing_run(tmp_path, capsys):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert cli("serve", "--run", tmp_path, "--index", tmp_path, "--port", port) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli("serve", "--run", tmp_path / "none", "--index", tmp_path, "--port", 0) == 2
    assert "is not a trained run" in capsys.readouterr().err
