"""Shared test set-up: quiet TensorFlow, and the read-only materials beside the repository."""
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared: MoNuSeg data and reference fixtures (CI has it beside the clone)."""
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: tests need ../shared beside the repository")
    return SHARED


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def golden(shared_dir) -> dict:
    """Matterport golden fixture, case A (arrays by name); fresh per test module."""
    return _load_npz(shared_dir / "fixtures/matterport_golden/golden.npz")


@pytest.fixture(scope="module")
def golden_b(shared_dir) -> dict:
    """Matterport golden fixture, case B (arrays by name); fresh per test module."""
    return _load_npz(shared_dir / "fixtures/matterport_golden/golden_b.npz")
