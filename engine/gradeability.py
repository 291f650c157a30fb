"""Whether a frame can be graded at all, checked before the models run.

The models were trained on B-mode breast ultrasound of a few hundred pixels a side. They give a category
for anything, so a frame they cannot judge must be refused with a reason instead of graded:

- too small: under ``MIN_SIDE`` pixels on a side (a 10 x 10 image would otherwise be graded 4C);
- no tissue: a blank or nearly uniform frame (probe in air, frozen black screen): grey-level standard
  deviation under ``MIN_STD`` or under ``MIN_TISSUE_FRACTION`` of the pixels brighter than
  ``TISSUE_LEVEL``;
- colour overlay: colour Doppler or elastography, i.e. more than ``MAX_COLOUR_FRACTION`` of the pixels
  in strong colour (``capture.frame_source.colour_fraction``, measured before the frame is made gray). The
  training data has none: every BUSI, BUS-BRA and BrEaST-Lesions image measures 0.

The thresholds were set from those data sets (smallest side 240 px, smallest grey-level standard
deviation 16) with a wide margin, so that no image of them is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_SIDE = 100
MIN_STD = 4.0
TISSUE_LEVEL = 16
MIN_TISSUE_FRACTION = 0.05
MAX_COLOUR_FRACTION = 0.02


@dataclass(frozen=True)
class Gradeability:
    """gradeable : whether the frame may be graded. reason : why not (one short line), else None."""

    gradeable: bool
    reason: str | None = None


GRADEABLE = Gradeability(True)


def check_gradeable(image: np.ndarray, colour_fraction: float | None = None) -> Gradeability:
    """Check one frame (uint8 gray, or BGR: its colour is then measured here).

    colour_fraction : the fraction of strongly coloured pixels when the caller measured it before
        converting the frame to gray (the live pipeline's sources do); None = measure ``image``.
    """
    from capture.frame_source import colour_fraction as measure_colour

    height, width = image.shape[:2]
    if min(height, width) < MIN_SIDE:
        return Gradeability(False, f"too small ({width} x {height} px; at least {MIN_SIDE} px a side)")
    colour = measure_colour(image) if colour_fraction is None else colour_fraction
    if colour > MAX_COLOUR_FRACTION:
        return Gradeability(False, f"colour overlay (Doppler or elastography?): {100 * colour:.0f}% of the "
                                   "image in colour; grade B-mode frames")
    gray = image if image.ndim == 2 else image[..., :3].mean(axis=2)
    sample = gray[::2, ::2]
    if float(sample.std()) < MIN_STD:
        return Gradeability(False, "no tissue (blank or uniform frame)")
    if float((sample > TISSUE_LEVEL).mean()) < MIN_TISSUE_FRACTION:
        return Gradeability(False, "no tissue (frame nearly black: probe in air?)")
    return GRADEABLE
