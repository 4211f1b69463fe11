"""Suite-wide settings: headless plotting, quiet ffmpeg, deterministic torch on 2 cores."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny test models: one thread is faster than two on a shared 2-core CI machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
