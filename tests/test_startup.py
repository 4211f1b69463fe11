"""Each command imports what its run needs: search with a head that reads no CLIP text feature
loads neither open_clip nor Beam nor torch (seconds of imports per query once: its index carries
the head's text side in ONNX), and gets its answer."""

from __future__ import annotations

import subprocess
import sys

from stage_fixtures import REPO, built_index, stage_data, trained_run  # noqa: F401  (fixture)

NO_CLIP_TEXT = ("epochs=1", "head.laff.text_features=[bow,gru]")


def test_search_without_clip_text_imports_neither_open_clip_nor_beam_nor_torch(stage_data):  # noqa: F811
    run = trained_run(stage_data, "tiny_laff", *NO_CLIP_TEXT)
    index = built_index(stage_data, run)
    code = (
        "import sys\nfrom vidfuse.cli import main\n"
        f"status = main(['search', '--run', {str(run)!r}, '--index', {str(index)!r}, '-k', '3', 'a red circle'])\n"
        "print('loaded', sorted(m for m in ('open_clip', 'apache_beam', 'torch') if m in sys.modules), status)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "loaded [] 0", done.stdout[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "query: a red circle" and [line.split()[0] for line in lines[1:4]] == ["1", "2", "3"]
