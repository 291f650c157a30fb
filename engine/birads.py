"""The BI-RADS vocabulary of Sonograde: the grader's categories and their likelihoods of malignancy.

The one home of these facts. Torch-free (numpy only), so the live pipeline, the messages, calibration
and evaluation import them without pulling in the training stack.

- ``CATEGORIES``: the five categories the G-CNN outputs, in the order of its probability vector
  (the paper's ``3, 4A, 4B, 4C, 5``).
- ``COARSE_CATEGORIES``: the same after summing 4A + 4B + 4C into "4" (BUS-BRA labels 4 without the
  sub-category).
- ``BIRADS_VALUES``: every BI-RADS assessment a manifest may carry (0-6 with 4's sub-categories).
- ``MALIGNANCY_LIKELIHOOD``: the likelihood of malignancy per category, the mid-points of the ACR ranges
  (3: <= 2 %, 4A: 2-10 %, 4B: 10-50 %, 4C: 50-95 %, 5: >= 95 %).
"""

from __future__ import annotations

import numpy as np

CATEGORIES: tuple[str, ...] = ("3", "4A", "4B", "4C", "5")
COARSE_CATEGORIES: tuple[str, ...] = ("3", "4", "5")
FINE_FOUR: tuple[str, ...] = ("4A", "4B", "4C")
BIRADS_VALUES: tuple[str, ...] = ("0", "1", "2", "3", "4", "4A", "4B", "4C", "5", "6")
MALIGNANCY_LIKELIHOOD: tuple[float, ...] = (0.01, 0.06, 0.30, 0.72, 0.97)
MALIGNANCY_BY_CATEGORY: dict[str, float] = dict(zip(CATEGORIES, MALIGNANCY_LIKELIHOOD, strict=True))


def malignancy_score(probs: np.ndarray) -> np.ndarray:
    """The expected likelihood of malignancy of each probability vector.

    Parameters
    ----------
    probs : (..., 5) probabilities over ``CATEGORIES``.

    Returns
    -------
    (...) array: sum over categories of P(c) x ``MALIGNANCY_LIKELIHOOD[c]``, in [0.01, 0.97].
    """
    return np.asarray(probs) @ np.array(MALIGNANCY_LIKELIHOOD)


def coarse(category: str) -> str:
    """``4A``/``4B``/``4C``/``4`` -> ``4``; ``3`` and ``5`` unchanged."""
    return "4" if category.startswith("4") else category
