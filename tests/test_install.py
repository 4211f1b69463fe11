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
