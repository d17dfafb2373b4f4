"""Shared test set-up: quiet TensorFlow, the test data in the repository, and ../shared.

The suite runs from the repository alone: reference fixtures are in tests/fixtures/, MoNuSeg
2018 crops, XML files and metadata in tests/data/ (see the PROVENANCE.md / ATTRIBUTION.md files
there). Only the few tests that need a whole 1000x1000 MoNuSeg tile (its license keeps those
out of the repository) use the `shared_dir` fixture: they are skipped when ../shared is not
beside the checkout, and fail instead when NUCSEG_REQUIRE_SHARED=1 (as on CI).
"""
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
DATA = TESTS / "data"
SHARED = REPO.parent / "shared"
REQUIRE_SHARED = "NUCSEG_REQUIRE_SHARED"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (whole MoNuSeg tiles): skip without it, or fail if NUCSEG_REQUIRE_SHARED=1."""
    if not SHARED.is_dir():
        reason = f"needs whole MoNuSeg 2018 tiles from ../shared, not found at {SHARED}"
        if os.environ.get(REQUIRE_SHARED, "").strip() not in ("", "0"):
            pytest.fail(f"{reason} ({REQUIRE_SHARED} is set)", pytrace=False)
        pytest.skip(reason)
    return SHARED


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures: reference outputs (metrics, Matterport golden and weight-file fixtures)."""
    return FIXTURES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """tests/data/monuseg2018: MoNuSeg 2018 crops, 3 XML files, metadata (CC BY-NC-SA 4.0)."""
    return DATA / "monuseg2018"


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def golden() -> dict:
    """Matterport golden fixture, case A (arrays by name); fresh per test module."""
    return _load_npz(FIXTURES / "matterport_golden/golden.npz")


@pytest.fixture(scope="module")
def golden_b() -> dict:
    """Matterport golden fixture, case B (arrays by name); fresh per test module."""
    return _load_npz(FIXTURES / "matterport_golden/golden_b.npz")
