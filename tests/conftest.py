"""Shared fixtures. Real data is read from ../shared/data (or $SONOGRADE_DATA) and skipped where absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SONOGRADE_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A fresh generator per test; seed printed on failure via the test id is not needed (fresh inputs)."""
    return np.random.default_rng()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "busbra" / "manifest.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SONOGRADE_DATA)")
    return SHARED_DATA
