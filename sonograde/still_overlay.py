"""The overlay drawn into a still image: what `sonograde grade --out` and the DICOM node's Secondary
Capture show (ROI-CNN contour in blue, refined contour in red, the category, a research-use banner).
The live display is `sonograde.overlay`."""

from __future__ import annotations

from sonograde import RESEARCH_USE_ONLY

MIN_OVERLAY_SIDE = 360  # smaller images are enlarged (by a whole factor) so the text stays legible


def render_overlay(image, result, research_text: str = RESEARCH_USE_ONLY, note: str | None = None):
    """The image (as BGR) with the ROI-CNN contour in blue, the refined contour in red, the category and
    its probability next to the lesion, and a research-use banner along the top.

    Images whose shorter side is under ``MIN_OVERLAY_SIDE`` pixels are enlarged by the smallest whole
    factor that reaches it (nearest neighbour), so the overlay is the input's size times that factor.
    ``result`` None: no contours, and ``note`` (why the image is not gradeable) as the label.
    """
    import cv2
    import numpy as np

    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    factor = max(1, -(-MIN_OVERLAY_SIDE // min(canvas.shape[:2])))
    if factor > 1:
        canvas = cv2.resize(canvas, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    height, width = canvas.shape[:2]
    scale = max(min(height, width) / 600.0, 0.5)  # text and lines grow with the image
    thickness = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    banner_h = int(22 * scale) + 6
    if result is not None and result.lesion_found:
        for contour, colour in ((result.raw_contour, (255, 0, 0)), (result.refined_contour, (0, 0, 255))):
            if len(contour) >= 2:
                points = contour.astype(np.int32) * factor + (factor - 1) // 2  # pixel centres
                cv2.polylines(canvas, [points.reshape(-1, 1, 2)], True, colour, thickness, cv2.LINE_AA)
        probability = result.probabilities[result.category]
        label = f"BI-RADS {result.category}  p={probability:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, font, 0.8 * scale, thickness + 2)
        x, y, _, h = (v * factor for v in result.bbox)
        gap = int(8 * scale)
        if y - gap - text_h > banner_h + 2:  # above the lesion, clear of the banner
            text_y = y - gap
        elif y + h + gap + text_h + baseline < height:  # else below it
            text_y = y + h + gap + text_h
        else:  # a lesion filling the height: inside its top
            text_y = max(y, banner_h) + text_h + gap
        anchor = (int(np.clip(x, 2, max(2, width - text_w - 2))), int(text_y))
    else:
        label = note or "no lesion found"
        anchor = (int(8 * scale), int(height - 12 * scale))
    cv2.putText(canvas, label, anchor, font, 0.8 * scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.putText(canvas, label, anchor, font, 0.8 * scale, (0, 255, 255), thickness, cv2.LINE_AA)
    canvas[:banner_h] = (canvas[:banner_h] * 0.35).astype(np.uint8)
    cv2.putText(canvas, research_text, (int(6 * scale), banner_h - int(6 * scale) - 2), font, 0.55 * scale,
                (255, 255, 255), max(1, thickness - 1), cv2.LINE_AA)
    return canvas
