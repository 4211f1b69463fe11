"""`vidfuse serve` in a child process, driven by a real headless Chromium (Debian's package) via Playwright.

Chromium is not downloaded: the test uses the system's ``chromium`` (``apt-get install -y
chromium``, which ``.ci/run`` does). Without it the test fails in CI (``CI=true``) and is
skipped elsewhere, saying how to install it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import urllib.request

import pytest

from stage_fixtures import built_index, cli_subprocess, stage_data, trained_run  # noqa: F401  (fixture)

QUERY = "a red circle slides left"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
START_TIMEOUT_S = 180


def _chromium() -> str:
    found = os.environ.get("VIDFUSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = None
    if not found:
        missing = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"browser test cannot run: {missing}")
        pytest.skip(missing)
    return found


@pytest.fixture(scope="module")
def server(stage_data, tmp_path_factory):
    """`vidfuse serve` on a LAFF-ml run (on a copy of its index, which a test rebuilds) and a DLLFA run."""
    tmp = tmp_path_factory.mktemp("serve")
    laff, dllfa = trained_run(stage_data, "tiny_laff_ml"), trained_run(stage_data, "tiny_dllfa")
    index = tmp / "laff_index"
    shutil.copytree(built_index(stage_data, laff), index)
    proc = cli_subprocess("serve", "--run", laff, "--index", index, "--run", dllfa, "--index",
                          built_index(stage_data, dllfa), "--port", 0, "--thumbnail-cache", tmp / "thumbs",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reloaded = threading.Event()

    def read_stderr() -> None:
        for text in proc.stderr:
            stderr.append(text)
            if "reloaded" in text and "tiny_laff_ml" in text:
                reloaded.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(START_TIMEOUT_S)  # the address is printed once the socket listens
    try:
        assert line and line[0].startswith("vidfuse serve: http://"), f"no address printed: {line} {''.join(stderr)[-2000:]}"
        url = line[0].split()[2]
        yield {"url": url, "proc": proc, "run": laff, "index": index, "stderr": stderr,
               "reloaded": reloaded}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def test_page_searches_shows_thumbnails_and_attention_and_plays_a_result(server, tmp_path, capsys):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "serve-page.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        try:
            page = browser.new_page()
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            page.goto(server["url"])
            page.wait_for_selector("body[data-ready=true]")
            page.fill("#query", QUERY)
            page.press("#query", "Enter")
            page.wait_for_selector(".column[data-run=tiny_dllfa] .card img.strip")
            page.wait_for_selector(".column[data-run=tiny_laff_ml] .card img.strip")
            page.wait_for_function(
                "[...document.querySelectorAll('img.strip')].every(i => i.complete && i.naturalWidth > 0)")
            columns = page.locator(".column")
            assert columns.count() == 2  # the two runs side by side
            for name in ("tiny_laff_ml", "tiny_dllfa"):
                assert page.locator(f".column[data-run={name}] .card").count() == 12
                assert "ms (server" in page.locator(f".column[data-run={name}] .latency").inner_text()
            laff_card = page.locator(".column[data-run=tiny_laff_ml] .card").first
            labels = laff_card.locator(".bar .label").all_inner_texts()
            assert labels == ["video clip@frames", "video x3d", "text clip", "text bow", "text gru"]  # multi-level LAFF-ml
            widths = laff_card.locator(".bar .fill").evaluate_all("els => els.map(e => e.getBoundingClientRect().width)")
            assert all(w > 0 for w in widths)
            dllfa_card = page.locator(".column[data-run=tiny_dllfa] .card").first
            assert "gist" in dllfa_card.locator(".stages").inner_text()
            assert dllfa_card.locator(".frames div").count() == 8  # one bar per sampled frame
            strip = page.evaluate("document.querySelector('img.strip').naturalWidth")
            assert strip > 64

            laff_card.click()
            page.wait_for_function(
                "(() => { const v = document.querySelector('.card video'); return v && v.currentTime > 0.1; })()",
                timeout=30_000)
            playing = page.evaluate("(() => { const v = document.querySelector('.card video');"
                                    " return {t: v.currentTime, err: v.error && v.error.code}; })()")
            assert playing["t"] > 0.1 and playing["err"] is None
            page.screenshot(path=str(shot))
            assert not failed, failed
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    with capsys.disabled():
        print(f"\nserve page screenshot: {shot}")


def test_sighup_reloads_the_index_folder_rebuilt_by_another_process(server, stage_data):
    from index.run_index import build_index

    before = _get(f"{server['url']}api/runs")[0]
    assert before["split"] == "test"
    build_index(str(server["run"]), str(server["index"]), split="val", device="cpu")
    assert _get(f"{server['url']}api/runs")[0]["split"] == "test"  # serving what it loaded
    server["proc"].send_signal(signal.SIGHUP)
    assert server["reloaded"].wait(120), "".join(server["stderr"])[-2000:]  # the server logs the reload
    after = _get(f"{server['url']}api/runs")[0]
    assert after["split"] == "val" and after["loaded_at"] > before["loaded_at"]
    found = {r["video_id"] for r in _get(f"{server['url']}api/search?q=a+red+circle&k=50")["results"]}
    assert found == set(stage_data.split("val"))
