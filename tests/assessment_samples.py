"""A plausible explained assessment (the JSON shape of issue 20), for message and overlay tests."""

from __future__ import annotations

import numpy as np

from engine.lexicon import DESCRIPTORS, MARGIN_SUBTYPES


def _choice(rng: np.random.Generator, values: tuple[str, ...]) -> dict:
    probs = rng.dirichlet(np.ones(len(values)))
    return {"value": values[int(np.argmax(probs))],
            "probabilities": {v: round(float(p), 4) for v, p in zip(values, probs, strict=True)}}


def sample_assessment(rng: np.random.Generator, bbox: tuple[int, int, int, int] = (100, 80, 60, 40),
                      pixel_size_mm: float | None = 0.1) -> dict:
    """Descriptors with probabilities, a size (mm with a pixel size, else px), calipers along the bbox's
    middle row and column, a malignancy probability and three drivers."""
    x, y, w, h = bbox
    descriptors = {name: _choice(rng, values) for name, values in DESCRIPTORS.items()}
    descriptors["orientation"]["angle_deg"] = round(float(rng.uniform(-30, 30)), 1)
    descriptors["margin"]["subtypes"] = {s: round(float(rng.uniform()), 3) for s in MARGIN_SUBTYPES}
    scale = pixel_size_mm or 1.0
    size = {"unit": "mm" if pixel_size_mm else "px", "width": round(w * scale, 2),
            "height": round(h * scale, 2),
            "longest": round(float(np.hypot(w, h)) * scale, 2), "pixel_size_mm": pixel_size_mm,
            "pixel_size_source": "caller" if pixel_size_mm else None}
    calipers = {"width": [[x - 0.5, y + h // 2], [x + w - 0.5, y + h // 2]],
                "height": [[x + w // 2, y - 0.5], [x + w // 2, y + h - 0.5]]}
    drivers = [{"descriptor": "margin", "value": descriptors["margin"]["value"], "direction": "up",
                "contribution": 0.8},
               {"descriptor": "shape", "value": descriptors["shape"]["value"], "direction": "up",
                "contribution": 0.5},
               {"descriptor": "orientation", "value": "parallel", "direction": "down", "contribution": -0.3}]
    return {"descriptors": descriptors, "size": size, "calipers": calipers,
            "malignancy_probability": round(float(rng.uniform()), 3), "drivers": drivers, "absent": {}}


def random_descriptor_model(rng: np.random.Generator, model_id: str = "test-descriptors") -> dict:
    """A descriptor model file's content (``engine.descriptors.FORMAT``) with seeded random coefficients:
    the real runtime on untrained weights, for plumbing tests (its outputs mean nothing)."""
    from engine.descriptors import DESCRIPTOR_VALUES, FEATURE_NAMES, FORMAT

    n = len(FEATURE_NAMES)

    def head(classes: tuple[str, ...]) -> dict:
        rows = 1 if len(classes) == 2 else len(classes)
        return {"classes": list(classes), "coef": rng.normal(0, 0.5, (rows, n)).tolist(),
                "intercept": rng.normal(0, 0.5, rows).tolist()}

    inputs = ["shape:irregular", "orientation:not parallel", "margin:not circumscribed",
              "margin_subtype:spiculated", "posterior_features:shadowing"]
    return {
        "format": FORMAT, "model_id": model_id, "feature_names": list(FEATURE_NAMES),
        "mean": rng.normal(0, 1, n).tolist(), "scale": rng.uniform(0.5, 2.0, n).tolist(),
        "heads": {name: head(values) for name, values in DESCRIPTOR_VALUES.items()},
        "margin_subtypes": {s: head(("no", "yes")) for s in MARGIN_SUBTYPES},
        "malignancy": {**head(("benign", "malignant")), "platt": [1.0, 0.0]},
        "suspicion": {"inputs": inputs, "coef": rng.normal(0, 1, len(inputs)).tolist(),
                      "mean": rng.uniform(0, 1, len(inputs)).tolist()},
    }
