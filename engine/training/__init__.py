"""Training of the ROI-CNN and the G-CNN (needs the ``train`` extra: torch)."""
