"""The explained part of an assessment: BI-RADS lexicon descriptors, size and a malignancy probability.

Torch-free runtime (numpy, OpenCV, optionally ONNX Runtime for a pretrained image encoder) of the model
``sonograde train descriptors`` fits (``engine.training.descriptors``) and ships as
``models/descriptors.json`` (model card ``models/descriptors.md``).

From one frame, its refined lesion mask (frame pixels) and the G-CNN's five probabilities:

- ``lesion_features`` computes scale-free hand-made mask and intensity features (``FEATURE_NAMES``):
  shape (solidity, convexity, circularity, axis ratio, contour roughness), the lesion's extent as
  fractions of the frame, inside vs. surrounding-ring intensity, the band below the lesion vs. the bands
  beside it (posterior features), bright-spot fractions, boundary sharpness, and the G-CNN's suspicion;
- ``DescriptorModel`` holds standardized L2 logistic-regression heads on them: ``shape`` (oval, round,
  irregular), ``margin`` (circumscribed or not) plus independent probabilities of the not-circumscribed
  subtypes, ``echo_pattern`` (6), ``posterior_features`` (4), ``calcifications`` (2), and a calibrated
  ``malignancy`` head (Platt scaling on out-of-fold predictions, against biopsy);
- ``orientation`` and ``size`` are measured, not learned (``refine.measure``);
- ``drivers`` explain the category: signed contributions, in log-odds, of each descriptor to a logistic
  model of suspicion (malignancy) over the descriptor probabilities, relative to the training lesions'
  average; positive pushed the assessment up, negative down.

``DescriptorModel.assess`` returns the JSON-ready dict the grade command, the message schema and the
DICOM writer use::

    {"descriptors": {"shape": {"value", "probabilities"}, "orientation": {"value", "angle_deg", ...},
                     "margin": {"value", "probabilities", "subtypes"}, "echo_pattern": {...},
                     "posterior_features": {...}, "calcifications": {...}},
     "size": {"unit", "width", "height", "longest", "pixel_size_mm", "pixel_size_source"},
     "malignancy_probability": float, "drivers": [{"descriptor", "value", "contribution", "direction"}]}

Research use only, not for diagnosis.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from engine.birads import MALIGNANCY_LIKELIHOOD
from engine.lexicon import DESCRIPTORS, READER_DESCRIPTORS
from engine.lexicon import MARGIN_SUBTYPES as MARGIN_SUBTYPES  # re-exported: the model's subtype heads
from engine.model_files import DEFAULT_MODELS_DIR
from refine.measure import lesion_orientation, lesion_size

FORMAT = "sonograde.descriptors/1"
DESCRIPTOR_MODEL_FILE = "descriptors.json"
DEFAULT_MODEL_PATH = DEFAULT_MODELS_DIR / DESCRIPTOR_MODEL_FILE  # checkout, installed or $SONOGRADE_MODELS

#: Values of each learned descriptor, in the order of its head's classes (``engine.lexicon``).
DESCRIPTOR_VALUES: dict[str, tuple[str, ...]] = {name: DESCRIPTORS[name] for name in READER_DESCRIPTORS}
#: Every descriptor reported, in the lexicon's order (orientation is measured, not learned).
DESCRIPTOR_ORDER: tuple[str, ...] = tuple(DESCRIPTORS)

FEATURE_NAMES = (
    "log_area_fraction",  # log(lesion area / frame area)
    "width_fraction",  # horizontal extent / frame width
    "height_fraction",  # vertical extent / frame height
    "log_height_width",  # log(height / width) of the extents
    "depth_top",  # top of the lesion / frame height
    "solidity",  # contour area / convex hull area
    "convexity",  # hull perimeter / contour perimeter
    "circularity",  # 4 pi area / perimeter^2
    "axis_ratio",  # minor / major axis of the second-moment ellipse
    "tilt",  # |long-axis angle| / 90 degrees
    "roughness",  # std / mean of the centroid-to-contour distance
    "inside_mean",  # mean gray inside / 255
    "inside_std",  # std gray inside / 255
    "ring_mean",  # mean gray of a ring around the lesion / 255
    "contrast",  # (ring - inside) / (ring std + inside std + 1)
    "dark_fraction",  # inside pixels darker than half the ring mean (anechoic content)
    "bright_fraction",  # inside pixels brighter than the ring mean
    "spot_fraction",  # inside pixels > inside mean + 2.5 std (echogenic foci)
    "heterogeneity",  # std of 4x4-block means inside / (inside std + 1)
    "posterior_vs_beside",  # (band below - bands beside at the same depth) / (frame std + 1)
    "posterior_vs_ring",  # (band below - ring) / (frame std + 1)
    "edge_sharpness",  # mean gradient magnitude on the boundary / (ring std + inside std + 1)
    "gcnn_suspicion",  # logit of the G-CNN's expected likelihood of malignancy
)

_WORK_SIDE = 96  # the lesion's longer side in the intensity working crop, px


def gcnn_suspicion(probabilities: np.ndarray | None) -> float:
    """logit of sum_k p_k * likelihood_k (ACR midpoints) of the G-CNN's five probabilities; 0 without."""
    if probabilities is None:
        return 0.0
    p = np.asarray(probabilities, dtype=np.float64).ravel()
    if p.shape != (5,):
        raise ValueError(f"G-CNN probabilities must be 5 numbers (3, 4A, 4B, 4C, 5), got shape {p.shape}")
    m = float(np.clip(np.dot(p, MALIGNANCY_LIKELIHOOD), 1e-4, 1 - 1e-4))
    return math.log(m / (1 - m))


def _band_mean(image: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> float | None:
    h, w = image.shape
    y0, y1, x0, x1 = max(0, y0), min(h, y1), max(0, x0), min(w, x1)
    if y1 - y0 < 1 or x1 - x0 < 1:
        return None
    return float(image[y0:y1, x0:x1].mean())


def lesion_features(
    gray: np.ndarray, mask: np.ndarray, grader_probabilities: np.ndarray | None
) -> np.ndarray:
    """The ``FEATURE_NAMES`` vector (float64) of the lesion ``mask`` on the frame ``gray``.

    Parameters
    ----------
    gray : uint8 (H, W) frame.
    mask : bool (H, W) refined lesion mask at the frame's pixels (non-empty).
    grader_probabilities : the G-CNN's five probabilities for this lesion (or None: suspicion 0).

    All features are scale-free (no pixel size needed): the same lesion on a deeper or shallower preset
    gives about the same values, and datasets without a pixel size train the same heads.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"gray must be a uint8 (H, W) frame, got {gray.dtype} {gray.shape}")
    if mask.shape != gray.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the frame's {gray.shape}")
    m8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    x, y, w, h = cv2.boundingRect(m8)
    if w == 0:
        raise ValueError("mask is empty: no lesion to describe")
    H, W = gray.shape
    area = float(cv2.countNonZero(m8[y : y + h, x : x + w]))

    # Shape, at the frame's pixels, on the largest outline.
    crop_mask = np.pad(m8[y : y + h, x : x + w], 1)
    found, _ = cv2.findContours(crop_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(found, key=cv2.contourArea)
    c_area = max(cv2.contourArea(contour), 1.0)
    perimeter = max(cv2.arcLength(contour, True), 1.0)
    hull = cv2.convexHull(contour)
    hull_area = max(cv2.contourArea(hull), c_area)
    hull_perimeter = cv2.arcLength(hull, True)
    orient = lesion_orientation(crop_mask.astype(bool))
    pts = contour.reshape(-1, 2).astype(np.float64)
    radii = np.hypot(pts[:, 0] - pts[:, 0].mean(), pts[:, 1] - pts[:, 1].mean())
    roughness = float(radii.std() / max(radii.mean(), 1e-6))

    # Intensity, on a working crop (lesion box + half its size each side + its height below), scaled so
    # the lesion's longer side is _WORK_SIDE px: constant cost per frame whatever the frame's size.
    x0, x1 = max(0, x - w // 2), min(W, x + w + w // 2)
    y0, y1 = max(0, y - h // 4), min(H, y + 2 * h)
    scale = _WORK_SIDE / max(w, h)
    size = (max(2, round((x1 - x0) * scale)), max(2, round((y1 - y0) * scale)))
    img = cv2.resize(gray[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA).astype(np.float32)
    msk = cv2.resize(m8[y0:y1, x0:x1], size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if not msk.any():  # a lesion thinner than one working pixel
        msk[min(int((y - y0) * scale), size[1] - 1), min(int((x - x0) * scale), size[0] - 1)] = True
    ring_width = max(2, _WORK_SIDE // 12)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * ring_width + 1, 2 * ring_width + 1))
    ring = cv2.dilate(msk.view(np.uint8), kernel).astype(bool) & ~msk
    inside = img[msk]
    outside = img[ring] if ring.any() else img[~msk] if (~msk).any() else inside
    in_mean, in_std = float(inside.mean()), float(inside.std())
    ring_mean, ring_std = float(outside.mean()), float(outside.std())
    frame_std = float(cv2.meanStdDev(gray)[1][0, 0])  # = gray.std(), several times faster on uint8
    blocks = cv2.resize(img, (max(1, size[0] // 4), max(1, size[1] // 4)), interpolation=cv2.INTER_AREA)
    bmask = cv2.resize(
        msk.view(np.uint8), (blocks.shape[1], blocks.shape[0]), interpolation=cv2.INTER_NEAREST
    ).astype(bool)
    hetero = float(blocks[bmask].std()) if bmask.sum() > 1 else 0.0

    # Posterior: the band below the lesion (its width, half its height deep) against the bands beside it.
    ly0, lx0 = (y - y0) * scale, (x - x0) * scale
    lw, lh = w * scale, h * scale
    below_y0, below_y1 = round(ly0 + lh), round(ly0 + 1.5 * lh)
    below = _band_mean(img, below_y0, below_y1, round(lx0), round(lx0 + lw))
    left = _band_mean(img, below_y0, below_y1, round(lx0 - lw / 2), round(lx0))
    right = _band_mean(img, below_y0, below_y1, round(lx0 + lw), round(lx0 + 1.5 * lw))
    beside = [v for v in (left, right) if v is not None]
    norm = frame_std + 1.0
    post_beside = (below - float(np.mean(beside))) / norm if below is not None and beside else 0.0
    post_ring = (below - ring_mean) / norm if below is not None else 0.0

    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    edge = cv2.dilate(msk.view(np.uint8), None).astype(bool) & ~cv2.erode(msk.view(np.uint8), None).astype(
        bool
    )
    sharp = float(np.hypot(gx[edge], gy[edge]).mean()) if edge.any() else 0.0

    features = (
        math.log(max(area, 1.0) / (H * W)),
        w / W,
        h / H,
        math.log(h / w),
        y / H,
        c_area / hull_area,
        min(hull_perimeter / perimeter, 1.0),
        min(4 * math.pi * c_area / perimeter**2, 1.0),
        orient["axis_ratio"],
        abs(orient["angle_deg"]) / 90.0,
        roughness,
        in_mean / 255.0,
        in_std / 255.0,
        ring_mean / 255.0,
        (ring_mean - in_mean) / (ring_std + in_std + 1.0),
        float((inside < 0.5 * ring_mean).mean()),
        float((inside > ring_mean).mean()),
        float((inside > in_mean + 2.5 * in_std).mean()) if in_std > 0 else 0.0,
        hetero / (in_std + 1.0),
        post_beside,
        post_ring,
        sharp / (ring_std + in_std + 1.0),
        gcnn_suspicion(grader_probabilities),
    )
    return np.asarray(features, dtype=np.float64)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class LinearHead:
    """A logistic head: classes (K >= 2), coef (K, F) for softmax or (1, F) for a binary head."""

    classes: tuple[str, ...]
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, z: np.ndarray) -> np.ndarray:
        logits = self.coef @ z + self.intercept
        if len(self.classes) == 2 and logits.shape == (1,):
            p = _sigmoid(float(logits[0]))
            return np.array([1.0 - p, p])
        return _softmax(logits)

    @classmethod
    def from_json(cls, data: dict, n_features: int, name: str) -> LinearHead:
        coef = np.asarray(data["coef"], dtype=np.float64)
        intercept = np.asarray(data["intercept"], dtype=np.float64).ravel()
        classes = tuple(data["classes"])
        rows = 1 if len(classes) == 2 and coef.shape[0] == 1 else len(classes)
        if coef.shape != (rows, n_features) or intercept.shape != (rows,):
            raise ValueError(
                f"descriptor model: head {name!r} has coef {coef.shape} / intercept "
                f"{intercept.shape}, expected ({rows}, {n_features}) / ({rows},)"
            )
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            raise ValueError(f"descriptor model: head {name!r} has non-finite coefficients")
        return cls(classes, coef, intercept)


class DescriptorModel:
    """Descriptor heads, malignancy head and the drivers' suspicion model (``models/descriptors.json``).

    Parameters
    ----------
    data : the parsed JSON (``FORMAT``); ``path`` only names it in messages.
    """

    def __init__(self, data: dict, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else None
        where = f"{self.path}: " if self.path else ""
        if data.get("format") != FORMAT:
            raise ValueError(
                f"{where}not a descriptor model (format {data.get('format')!r}, expected {FORMAT!r})"
            )
        names = tuple(data["feature_names"])
        if names != FEATURE_NAMES:
            raise ValueError(
                f"{where}its features {names} differ from this version's {FEATURE_NAMES}; "
                "retrain it with `sonograde train descriptors`"
            )
        self.model_id = str(data.get("model_id", "unknown"))
        self.metadata = {k: v for k, v in data.items() if k not in ("heads", "malignancy", "suspicion")}
        n = len(names)
        self.mean = np.asarray(data["mean"], dtype=np.float64)
        self.scale = np.asarray(data["scale"], dtype=np.float64)
        if self.mean.shape != (n,) or self.scale.shape != (n,) or not (self.scale > 0).all():
            raise ValueError(f"{where}mean/scale must be {n} numbers, scale positive")
        self.heads = {k: LinearHead.from_json(v, n, k) for k, v in data["heads"].items()}
        for name, values in DESCRIPTOR_VALUES.items():
            if name in self.heads and self.heads[name].classes != values:
                raise ValueError(f"{where}head {name!r} classes {self.heads[name].classes} != {values}")
        self.subtypes = {k: LinearHead.from_json(v, n, k) for k, v in data.get("margin_subtypes", {}).items()}
        mal = data["malignancy"]
        self.malignancy = LinearHead.from_json(mal, n, "malignancy")
        self.platt = tuple(float(v) for v in mal.get("platt", (1.0, 0.0)))
        self.missing_reason = dict(data.get("not_learned", {}))
        sus = data["suspicion"]
        self.suspicion_inputs = tuple(sus["inputs"])
        self.suspicion_coef = np.asarray(sus["coef"], dtype=np.float64)
        self.suspicion_mean = np.asarray(sus["mean"], dtype=np.float64)
        if (
            self.suspicion_coef.shape != (len(self.suspicion_inputs),)
            or self.suspicion_mean.shape != self.suspicion_coef.shape
        ):
            raise ValueError(
                f"{where}suspicion model: coef/mean must match its {len(self.suspicion_inputs)} inputs"
            )

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> DescriptorModel:
        """Read a model JSON (default: the shipped ``models/descriptors.json``); ValueError saying why not."""
        p = Path(path) if path else DEFAULT_MODEL_PATH
        if not p.is_file():
            raise ValueError(
                f"descriptor model {p} not found; the shipped one comes with models/, or make "
                "one with `sonograde train descriptors`"
            )
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"descriptor model {p} is not readable JSON: {error}") from None
        try:
            return cls(data, p)
        except (KeyError, TypeError) as error:
            raise ValueError(f"descriptor model {p} lacks or misshapes {error}") from None

    def sha256(self) -> str | None:
        return hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path else None

    # -- prediction ------------------------------------------------------------------------------------
    def standardize(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=6.0, neginf=-6.0), -6.0, 6.0)

    def predict(self, features: np.ndarray) -> dict[str, Any]:
        """Descriptor probabilities and the calibrated malignancy probability from one feature vector."""
        z = self.standardize(features)
        out: dict[str, Any] = {}
        for name, head in self.heads.items():
            out[name] = dict(zip(head.classes, (float(p) for p in head.probabilities(z)), strict=True))
        # subtype heads are fitted on not-circumscribed lesions: P(subtype) = P(not c.) * P(subtype | not c.)
        not_circumscribed = out.get("margin", {}).get("not circumscribed", 1.0)
        out["margin_subtypes"] = {
            k: not_circumscribed * float(h.probabilities(z)[1]) for k, h in self.subtypes.items()
        }
        raw = float(self.malignancy.probabilities(z)[1])
        raw = min(max(raw, 1e-6), 1 - 1e-6)
        a, b = self.platt
        out["malignancy_probability"] = _sigmoid(a * math.log(raw / (1 - raw)) + b)
        return out

    def suspicion_vector(self, predicted: dict[str, Any], orientation_value: str) -> np.ndarray:
        """The suspicion model's inputs ("descriptor:value" probabilities; orientation is 0/1 measured)."""
        values = []
        for item in self.suspicion_inputs:
            descriptor, value = item.split(":", 1)
            if descriptor == "orientation":
                values.append(1.0 if orientation_value == value else 0.0)
            elif descriptor == "margin_subtype":
                values.append(predicted["margin_subtypes"].get(value, 0.0))
            else:
                values.append(predicted.get(descriptor, {}).get(value, 0.0))
        return np.asarray(values, dtype=np.float64)

    def drivers(self, predicted: dict[str, Any], orientation_value: str, top: int = 4) -> list[dict]:
        """Descriptors that pushed the suspicion up or down, largest first: summed contributions (log-odds)
        of each descriptor's inputs, coef * (value - training mean)."""
        x = self.suspicion_vector(predicted, orientation_value)
        contrib = self.suspicion_coef * (x - self.suspicion_mean)
        per: dict[str, float] = {}
        for item, c in zip(self.suspicion_inputs, contrib, strict=True):
            descriptor = item.split(":", 1)[0]
            descriptor = "margin" if descriptor == "margin_subtype" else descriptor
            per[descriptor] = per.get(descriptor, 0.0) + float(c)
        ranked = sorted(per.items(), key=lambda kv: -abs(kv[1]))[:top]
        return [
            {"descriptor": d, "contribution": round(c, 3), "direction": "up" if c > 0 else "down"}
            for d, c in ranked
            if abs(c) >= 0.01
        ]

    def assess(
        self,
        gray: np.ndarray,
        mask: np.ndarray,
        grader_probabilities: np.ndarray | None,
        *,
        pixel_size_mm: float | tuple[float, float] | None = None,
        pixel_size_source: str | None = None,
    ) -> dict[str, Any]:
        """The explained assessment of one lesion (see the module docstring); the mask must be non-empty."""
        features = lesion_features(gray, mask, grader_probabilities)
        predicted = self.predict(features)
        # measure on the lesion's box: the same numbers, without passes over a frame-sized mask
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=bool).view(np.uint8))
        mask = mask[y:y + h, x:x + w]
        orientation = lesion_orientation(mask, pixel_size_mm)
        descriptors: dict[str, Any] = {}
        for name in DESCRIPTOR_ORDER:
            if name == "orientation":
                descriptors[name] = orientation
                continue
            if name not in predicted:
                descriptors[name] = {
                    "value": None,
                    "reason": self.missing_reason.get(name, "not in this model"),
                }
                continue
            probs = predicted[name]
            entry: dict[str, Any] = {
                "value": max(probs, key=probs.get),
                "probabilities": {k: round(v, 4) for k, v in probs.items()},
            }
            if name == "margin":
                entry["subtypes"] = {k: round(v, 4) for k, v in predicted["margin_subtypes"].items()}
            descriptors[name] = entry
        drivers = self.drivers(predicted, orientation["value"])
        for driver in drivers:
            driver["value"] = descriptors[driver["descriptor"]].get("value")
        return {
            "descriptors": descriptors,
            "size": lesion_size(
                mask, pixel_size_mm, pixel_size_source if pixel_size_mm is not None else None
            ),
            "malignancy_probability": round(predicted["malignancy_probability"], 4),
            "drivers": drivers,
            "descriptor_model": self.model_id,
        }


def absent(reason: str) -> dict[str, Any]:
    """The assessment fields when there is no lesion to describe: all absent, with the reason."""
    return {
        "descriptors": None,
        "size": None,
        "malignancy_probability": None,
        "drivers": [],
        "assessment_absent_reason": reason,
    }
