"""A user's install, not the developer's: the wheel built from the tree works on its own.

The editable install reads configs from the source tree, so it cannot show what a wheel lacks;
this test builds the wheel, installs it into a fresh virtual environment (the global libraries
are reused, vidfuse itself comes from the wheel) and runs the demo from a folder outside the
source tree, as a user would after ``pip install vidfuse``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _copy_tree(dest: Path) -> Path:
    """The project's files without build leftovers (a build writes into the tree it builds)."""
    ignore = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                    "vidfuse-demo", ".venv")
    shutil.copytree(REPO, dest, ignore=ignore, symlinks=True)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _copy_tree(tmp_path_factory.mktemp("src") / "vidfuse")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True)
    (found,) = out.glob("vidfuse-*.whl")
    return found


def test_the_wheel_carries_the_bundled_configs_and_model_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = {str(p.relative_to(REPO)) for p in [*REPO.glob("configs/*/*.yaml"), *REPO.glob("extractors/model_configs/*.json")]}
    assert bundled and bundled <= names, sorted(bundled - names)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the whole demo (20 videos) plus a venv: about 5 min at load 12, over 10 at load 20
def test_the_demo_runs_from_the_wheel_outside_the_source_tree(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--force-reinstall", str(wheel)], check=True, capture_output=True)
    user = tmp_path / "user"
    user.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    where = subprocess.run([str(python), "-c", "import vidfuse, configs, extractors; print(vidfuse.__file__); "
                            "print(configs.__file__); print(extractors.__file__)"],
                           cwd=user, env=env, check=True, capture_output=True, text=True).stdout.split()
    assert all(path.startswith(str(env_dir)) for path in where), where

    done = subprocess.run([str(env_dir / "bin" / "vidfuse"), "demo", "--videos", "20", "--workdir", "work"],
                          cwd=user, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout.splitlines()
    assert any(line.startswith("| laff |") for line in out), done.stdout[-2000:]
    # the stage counter reaches its last stage
    stages = [m.groups() for m in (re.search(r"\b(\d+)/(\d+) ", line) for line in out if "─" in line) if m]
    assert stages and stages[-1][0] == stages[-1][1], stages
    # the last line is whole (not wrapped at the console width), naming all three report files
    assert out[-1].startswith("report: ") and out[-1].endswith("metrics.json"), out[-3:]
    # what is not progress or our own logging: Beam worker logs, tqdm frames in a redirected log
    both = done.stdout + done.stderr
    assert "\r" not in both
    noise = [line for line in both.splitlines()
             if re.match(r"(INFO|WARNING|DEBUG):", line) or "apitools" in line or "semi_persistent" in line]
    assert not noise, noise[:10]
