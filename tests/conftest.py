"""Shared fixtures. Real data is read from ../shared/data (or $SONOGRADE_DATA) and skipped where absent.

Every test runs seeded: numpy's, torch's and Python's global generators and the `rng` fixture start
from a seed derived from the test's id, so a run is repeatable and a failure reproduces. The seed is
printed with a failing test's report; ``SONOGRADE_TEST_SEED=N`` shifts every test's seed (to explore
other inputs deliberately, never in CI).
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SONOGRADE_DATA", REPO_ROOT.parent / "shared" / "data"))
_SEED_KEY = pytest.StashKey[int]()


def _test_seed(nodeid: str) -> int:
    """A stable 31-bit seed for one test id, shifted by $SONOGRADE_TEST_SEED."""
    return (zlib.crc32(nodeid.encode()) + int(os.environ.get("SONOGRADE_TEST_SEED", "0"))) % (1 << 31)


@pytest.fixture(autouse=True)
def _seed_everything(request: pytest.FixtureRequest) -> Iterator[int]:
    seed = _test_seed(request.node.nodeid)
    request.node.stash[_SEED_KEY] = seed
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch
    except ImportError:
        pass
    else:
        torch.manual_seed(seed)
    yield seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and _SEED_KEY in item.stash:
        report.sections.append(("test seed", f"seed {item.stash[_SEED_KEY]} (derived from the test id)"))
    return report


@pytest.fixture
def rng(_seed_everything: int) -> np.random.Generator:
    """The test's own generator, seeded like everything else in it."""
    return np.random.default_rng(_seed_everything)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "busbra" / "manifest.csv").exists():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SONOGRADE_DATA)")
    return SHARED_DATA
