"""Which manifest BI-RADS labels are graded, and how.

The grader predicts five categories, ``3, 4A, 4B, 4C, 5`` (the paper's). Manifest labels map onto them:

- ``3``, ``4A``, ``4B``, ``4C``, ``5``: graded as they are ("fine" labels).
- ``4`` (BUS-BRA gives no 4A/4B/4C): graded as the coarse category "4" against the summed probability
  P(4A) + P(4B) + P(4C); the case counts as correct when that sum is larger than both P(3) and P(5).
- ``2`` (benign finding, outside the paper's five): graded as ``3`` by default (``birads2="as3"``),
  because the shipped G-CNN was trained with 2 merged into 3 (``engine.data.datasets``); with
  ``birads2="exclude"`` it is left out of grading (the paper's five categories only). Its segmentation
  is evaluated either way where it has a mask.
- ``0``, ``1`` (normal), ``6`` and no label: not graded. Normal images have no mask, so they are left out
  of segmentation too; the evaluation reports how often the pipeline found a lesion on them.
"""

from __future__ import annotations

from typing import Literal

from engine.birads import CATEGORIES, COARSE_CATEGORIES, coarse

__all__ = ["CATEGORIES", "COARSE_CATEGORIES", "Birads2Policy", "coarse", "grading_label"]

Birads2Policy = Literal["exclude", "as3"]


def grading_label(birads: str | None, birads2: Birads2Policy = "as3") -> str | None:
    """The label a case is graded against (one of CATEGORIES or ``"4"``), or ``None`` if not graded."""
    if birads is None:
        return None
    value = birads.strip().upper()
    if value in CATEGORIES or value == "4":
        return value
    if value == "2" and birads2 == "as3":
        return "3"
    return None
