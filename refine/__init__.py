"""Refinement of the ROI: area filtering, the Chan–Vese level set, contours and segmentation metrics."""
