"""The ordinal head: reading a G-CNN's five probabilities through one suspicion score and four cut points.

The head itself (what an exported grader carries in ``sonograde.ordinal_head`` and what
``engine.networks.OrdinalReading`` applies): torch-free, so loading and checking a head needs no training
stack. Fitting it to data is ``engine.training.ordinal``'s job, which explains the model:

    s = logit(m),  m = sum_k p_k * MALIGNANCY_LIKELIHOOD_k     (the network's expected likelihood)
    P(Y > k | s) = sigmoid(slope * s - cut_k),  k = 1..4,  cut_1 < cut_2 < cut_3 < cut_4,  slope > 0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import pairwise

import numpy as np
from scipy.special import expit

from engine.birads import CATEGORIES, malignancy_score

SCORE_CLIP = 1e-4  # m is clipped to [1e-4, 1 - 1e-4] before the logit


@dataclass(frozen=True)
class OrdinalHead:
    """slope: a > 0 on the suspicion score; cuts: the four increasing thresholds between 3|4A, 4A|4B,
    4B|4C and 4C|5 on the a*s scale."""

    slope: float
    cuts: tuple[float, float, float, float]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> OrdinalHead:
        cuts = tuple(float(c) for c in values["cuts"])
        if len(cuts) != len(CATEGORIES) - 1 or any(b <= a for a, b in pairwise(cuts)):
            raise ValueError(f"an ordinal head needs four increasing cut points, got {values['cuts']}")
        if not float(values["slope"]) > 0:
            raise ValueError(f"an ordinal head needs a positive slope, got {values['slope']}")
        return cls(slope=float(values["slope"]), cuts=cuts)  # type: ignore[arg-type]


def suspicion_score(probs: np.ndarray) -> np.ndarray:
    """logit of the expected likelihood of malignancy implied by five probabilities (N, 5) -> (N,)."""
    m = np.clip(malignancy_score(np.asarray(probs, dtype=np.float64)), SCORE_CLIP, 1 - SCORE_CLIP)
    return np.log(m) - np.log1p(-m)


def ordinal_probabilities(head: OrdinalHead, scores: np.ndarray) -> np.ndarray:
    """Five probabilities (N, 5) over 3, 4A, 4B, 4C, 5 from suspicion scores (N,)."""
    above = expit(head.slope * np.asarray(scores, dtype=np.float64)[:, None] - np.asarray(head.cuts)[None, :])
    upper = np.concatenate([np.ones((len(above), 1)), above], axis=1)
    lower = np.concatenate([above, np.zeros((len(above), 1))], axis=1)
    return np.clip(upper - lower, 0.0, 1.0)
