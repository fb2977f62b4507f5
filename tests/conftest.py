"""Shared test helpers: locating ../shared/datasets (skip cleanly when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("GEOMVISION_SHARED_DATASETS", REPO_ROOT.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    """Path of ``../shared/datasets/<name>``; skips the calling test when it is not there."""
    path = SHARED_DATASETS / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name} not available at {path}")
    return path


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(12345)


@pytest.fixture
def torch_one_thread():
    """One torch intra-op thread: bitwise-reproducible reductions, no oversubscription on a busy machine.

    Torch test modules enable it for all their tests with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
