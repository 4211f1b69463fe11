"""The command line's promises around the stages: every failure is one line (``-v`` adds the
traceback) and leaves no new folder, mistyped flags are refused, ``-v``/``-q`` work anywhere,
help texts hold, and redirected output carries no progress-bar frames."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch

from stage_fixtures import REPO, cli
from vidfuse.cli import build_parser


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture
def videos(tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"not decoded: these tests fail before any video is read")
    return folder


def _extract(videos, out, *extra):
    return cli("extract", videos, "--out", out, "--config", "tiny", "--extractors", "clip", "--no-progress", *extra)


@pytest.mark.parametrize("name", ["cuda", "gpu", "cuda:1"])
def test_extract_on_cuda_without_cuda_is_one_line_before_any_folder(videos, tmp_path, capsys, monkeypatch, name):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "features"
    assert _extract(videos, out, "--device", name) == 2
    assert _error_lines(capsys) == [f"vidfuse extract: error: device {name.replace('gpu', 'cuda')!r} requested "
                                    "but CUDA is not available"]
    assert not out.exists()


@pytest.mark.parametrize("runner, named", [("NoSuchRunner", "Unexpected pipeline runner: NoSuchRunner"),
                                           ("no_such_module.FastRunner", "cannot import it")])
def test_a_runner_beam_cannot_build_is_one_line(videos, tmp_path, capsys, runner, named):
    out = tmp_path / "features"
    assert _extract(videos, out, f"--runner={runner}") == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"vidfuse extract: error: --runner={runner}: ") and named in line
    assert not out.exists()


def test_a_mistyped_flag_is_refused_naming_it(videos, tmp_path, capsys):
    out = tmp_path / "features"
    assert _extract(videos, out, "--extractros", "x3d") == 2
    (line,) = _error_lines(capsys)
    assert line.startswith("vidfuse extract: error: unrecognized arguments: --extractros x3d")
    assert not out.exists()


def test_an_unexpected_failure_is_one_line_and_leaves_no_folder(videos, tmp_path, capsys, monkeypatch):
    """A bug (not a VidfuseError) once gave a raw traceback, exit 1, and a folder with a lock and manifests."""
    import pipeline.extract_job as job

    def broken(*args, **kwargs):
        raise RuntimeError("the graph could not be built")

    monkeypatch.setattr(job, "ExtractFeatures", broken)
    out = tmp_path / "features"
    assert _extract(videos, out, "-q") == 1  # -q: only the error
    assert _error_lines(capsys) == ["vidfuse extract: error: RuntimeError: the graph could not be built "
                                    "(an unexpected failure; -v shows the traceback)"]
    assert not out.exists()

    assert _extract(videos, out, "-v") == 1  # -v after the command, too
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("the graph could not be built")' in err
    assert err.rstrip().splitlines()[-1].startswith("vidfuse extract: error: RuntimeError")
    assert not out.exists()


@pytest.mark.parametrize("argv, level", [
    (["search", "--run", "r", "--index", "i", "q"], 0),
    (["-v", "search", "--run", "r", "--index", "i", "q"], 1),
    (["search", "--run", "r", "-v", "--index", "i", "q"], 1),
    (["search", "--run", "r", "--index", "i", "q", "-q"], -1),
    (["--quiet", "search", "--run", "r", "--index", "i", "q"], -1),
])
def test_verbose_and_quiet_work_before_and_after_the_command(argv, level):
    args, extra = build_parser(argv).parse_known_args(argv)
    assert (args.verbosity, extra, args.queries) == (level, [], ["q"])


def test_redirected_output_has_no_progress_frames(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vidfuse.cli", "synth", str(tmp_path / "d"), "--videos", "2"],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr + done.stdout


def _actions(command: str) -> list[argparse.Action]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]._actions


@pytest.mark.parametrize("command", ["search", "index", "benchmark", "train", "extract", "extract-text", "finetune-clip", "demo", "synth"])
def test_every_option_has_help(command):
    assert [a.dest for a in _actions(command) if not a.help] == []


def test_the_set_examples_are_keys_the_command_takes():
    from fusion.clip_ft import ClipFtConfig
    from fusion.trainer import TrainConfig
    from pipeline.config import ExtractConfig
    from vidfuse.config import load_config

    for command, schema, kind, config in (("train", TrainConfig, "train", "tiny_laff"),
                                          ("finetune-clip", ClipFtConfig, "train", "tiny_clip_ft"),
                                          ("extract", ExtractConfig, "extract", "tiny")):
        (action,) = [a for a in _actions(command) if a.dest == "overrides"]
        example = action.help.split("e.g. --set ")[1].split()[0]
        load_config(schema, config, [example], kind=kind)  # refused keys raise


def test_the_top_description_is_plain_text():
    assert "`" not in build_parser([]).description


@pytest.mark.parametrize("command", ["extract", "extract-text", "train", "finetune-clip", "index", "search"])
def test_gpu_and_cuda_name_the_same_device_everywhere(command):
    (device,) = [a for a in _actions(command) if a.dest == "device"]
    assert device.type("gpu") == device.type("cuda") == "cuda" and device.type("GPU:1") == "cuda:1"
    with pytest.raises(argparse.ArgumentTypeError):
        device.type("tpu")


def test_index_hands_faiss_its_own_device_name():
    from index.faiss_index import normalize_device

    assert [normalize_device(d) for d in ("auto", "cpu", "cuda", "cuda:1")] == ["auto", "cpu", "gpu", "gpu"]


def test_search_refuses_k_0_before_loading_anything():
    code = ("import sys\nfrom vidfuse.cli import main\ntry:\n    main(['search', '--run', 'r', '--index', 'i', '-k', '0', 'q'])\n"
            "except SystemExit as exc:\n    print(exc.code, sorted(m for m in ('torch', 'faiss', 'apache_beam', 'open_clip') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.stdout.split() == ["2", "[]"], done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == "vidfuse search: error: argument -k: must be >= 1, got 0"
