"""A synthetic breast-ultrasound scanner: B-mode images of a seeded tissue phantom with BI-RADS lesions.

No patient data is needed. The model (details and the category table in ``docs/phantom.md``):

* **Tissue** (depth from the skin): a bright entry echo and dermis (skin, 1.4-2.2 mm), hypoechoic
  subcutaneous fat with echogenic Cooper's ligaments and septa, hyperechoic fibroglandular tissue mottled
  with fat lobules, a thin retromammary fat layer, a bright fascia and striated pectoral muscle, and the
  dark chest wall below. Layer boundaries are smooth random surfaces of (lateral, elevation) position.
* **Speckle**: a fully developed speckle field: complex (in-phase/quadrature) white scatterer amplitudes
  convolved with a Gaussian point-spread function (axial sigma 0.2 mm, lateral 0.45 mm, so grains are
  wider than tall). The RF carrier (lambda/2 ~ 0.08 mm at 10 MHz) is finer than a display pixel, so the
  field is simulated at baseband; **envelope detection** is the magnitude of the IQ signal. Two
  independent looks are averaged after detection (spatial compounding). The local tissue echogenicity,
  itself blurred by the PSF, multiplies the envelope (the usual multiplicative speckle model).
* **Attenuation and TGC**: every tissue has an attenuation coefficient (dB/mm, round trip); the image is
  attenuated by the cumulative sum along depth and a time-gain compensation curve undoes the nominal
  tissue attenuation plus a small random gain ripple. Posterior features therefore emerge from physics:
  a lesion that attenuates less than tissue gives posterior **enhancement**, one that attenuates more
  casts a **shadow**.
* **Log compression**: ``255 * (20 log10(amplitude) - floor_dB) / dynamic_range_dB``, clipped to 0-255.
* **Lesions** follow the BI-RADS ultrasound lexicon (shape, orientation, margin, echo pattern, posterior
  features, plus calcifications); ``CATEGORY_TABLE`` gives, for each category 3/4A/4B/4C/5, the
  probability of every descriptor value, and ``SIZE_MM`` the range of the longest diameter.

``PhantomScanner(seed).sample()`` gives still images with mask, category and descriptors. Beside the
simulator: ``capture.phantom_sequence.PhantomSequence``, a frame source of a probe sweeping in elevation
over a 3-D phantom holding three lesions, and ``capture.phantom_dataset`` (``write_dataset``, a manifest
dataset in the format of ``docs/data.md``; ``contact_sheet``, one sample per category).
Everything is reproducible from the seed (NumPy ``default_rng`` with ``[seed, index]`` seed sequences).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

DEFAULT_SIZE = (384, 320)  # (width, height) in pixels

DESCRIPTOR_CHOICES: dict[str, tuple[str, ...]] = {
    "shape": ("oval", "round", "irregular"),
    "orientation": ("parallel", "not parallel"),
    "margin": ("circumscribed", "indistinct", "angular", "microlobulated", "spiculated"),
    "echo_pattern": ("anechoic", "hypoechoic", "isoechoic", "heterogeneous", "complex"),
    "posterior_features": ("enhancement", "shadowing", "none"),
    "calcifications": ("none", "in mass"),
}

# Probability of each descriptor value (in the order of DESCRIPTOR_CHOICES) given the category. Chosen to
# follow the lexicon's positive predictive values: circumscribed oval parallel masses are benign-looking
# (3), irregular, not parallel, spiculated or angular, shadowing masses with calcifications are malignant-
# looking (5). Descriptors are drawn independently given the category. Each row sums to 1.
CATEGORY_TABLE: dict[str, dict[str, tuple[float, ...]]] = {
    "3": {
        "shape": (0.80, 0.15, 0.05),
        "orientation": (0.95, 0.05),
        "margin": (0.85, 0.10, 0.00, 0.05, 0.00),
        "echo_pattern": (0.10, 0.50, 0.20, 0.10, 0.10),
        "posterior_features": (0.40, 0.05, 0.55),
        "calcifications": (0.98, 0.02),
    },
    "4A": {
        "shape": (0.55, 0.25, 0.20),
        "orientation": (0.85, 0.15),
        "margin": (0.45, 0.30, 0.10, 0.15, 0.00),
        "echo_pattern": (0.05, 0.60, 0.10, 0.15, 0.10),
        "posterior_features": (0.25, 0.15, 0.60),
        "calcifications": (0.90, 0.10),
    },
    "4B": {
        "shape": (0.30, 0.20, 0.50),
        "orientation": (0.65, 0.35),
        "margin": (0.15, 0.35, 0.20, 0.20, 0.10),
        "echo_pattern": (0.00, 0.65, 0.05, 0.20, 0.10),
        "posterior_features": (0.15, 0.35, 0.50),
        "calcifications": (0.75, 0.25),
    },
    "4C": {
        "shape": (0.10, 0.15, 0.75),
        "orientation": (0.45, 0.55),
        "margin": (0.05, 0.30, 0.25, 0.20, 0.20),
        "echo_pattern": (0.00, 0.70, 0.00, 0.25, 0.05),
        "posterior_features": (0.10, 0.50, 0.40),
        "calcifications": (0.60, 0.40),
    },
    "5": {
        "shape": (0.05, 0.05, 0.90),
        "orientation": (0.25, 0.75),
        "margin": (0.00, 0.20, 0.25, 0.10, 0.45),
        "echo_pattern": (0.00, 0.80, 0.00, 0.20, 0.00),
        "posterior_features": (0.05, 0.65, 0.30),
        "calcifications": (0.50, 0.50),
    },
}

# The categories the phantom draws: the keys of its own table. capture sits below engine and cannot import
# engine.birads, the vocabulary's home; tests/test_phantom.py checks the two agree.
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_TABLE)

# Longest lesion diameter in mm, uniform in this range.
SIZE_MM: dict[str, tuple[float, float]] = {
    "3": (6.0, 14.0),
    "4A": (7.0, 16.0),
    "4B": (8.0, 18.0),
    "4C": (9.0, 20.0),
    "5": (10.0, 22.0),
}

# Relative echo amplitude (linear, before speckle) of the tissues, and attenuation in dB/mm round trip:
# soft tissue attenuates about 0.5-0.9 dB/cm/MHz one way, i.e. 1-1.8 dB/mm round trip at 10 MHz.
ECHO = {
    "skin_line": 2.6,
    "dermis": 0.75,
    "fat": 0.16,
    "lobule": 0.24,
    "ligament": 1.6,
    "gland": 0.95,
    "fascia": 1.6,
    "muscle": 0.30,
    "chest": 0.09,
}
ATTEN_DB_MM = {"skin": 1.3, "fat": 1.2, "gland": 1.5, "muscle": 1.6, "chest": 2.0}
NOMINAL_ATTEN_DB_MM = 1.4
# Lesion attenuation by posterior feature (dB/mm): low -> enhancement, high -> shadow.
LESION_ATTEN_DB_MM = {"enhancement": (0.0, 0.3), "none": (1.3, 1.5), "shadowing": (2.6, 3.8)}
PSF_SIGMA_MM = (0.2, 0.45)  # (axial, lateral)
# Spatial compounding (independent looks averaged after envelope detection), as breast presets do; it
# lowers speckle contrast and fills the deep nulls that plain log-compressed speckle shows.
COMPOUND_LOOKS = 2


class PhantomError(ValueError):
    """Invalid phantom parameters (size, category, count)."""


@dataclass(frozen=True, slots=True)
class PhantomSample:
    """One still B-mode image of the phantom.

    image: (H, W) uint8; mask: (H, W) bool lesion mask; category: one of ``CATEGORIES``;
    descriptors: lexicon choice per key of ``DESCRIPTOR_CHOICES``; pixel_size_mm: square pixel edge;
    size_mm: the lesion's longest diameter (mm) as drawn.
    """

    image: np.ndarray
    mask: np.ndarray
    category: str
    descriptors: dict[str, str]
    pixel_size_mm: float = 0.125
    size_mm: float = 0.0


# --------------------------------------------------------------------------------------------- tissue


class _NoiseVolume:
    """Smooth Gaussian noise (unit std) on a coarse (depth, lateral, elevation) grid, read as image slices."""

    def __init__(
        self,
        rng: np.random.Generator,
        depth_mm: float,
        x_range_mm: tuple[float, float],
        z_range_mm: tuple[float, float],
        cell_mm: float,
        sigma_mm: tuple[float, float, float],
    ):
        self.cell = cell_mm
        self.x0 = x_range_mm[0] - 2 * cell_mm
        self.z0 = z_range_mm[0]
        self.cell_z = 1.0
        shape = (
            math.ceil(depth_mm / cell_mm) + 4,
            math.ceil((x_range_mm[1] - x_range_mm[0]) / cell_mm) + 4,
            max(1, math.ceil((z_range_mm[1] - z_range_mm[0]) / self.cell_z) + 2),
        )
        volume = rng.standard_normal(shape, dtype=np.float32)
        sigma = (
            sigma_mm[0] / cell_mm,
            sigma_mm[1] / cell_mm,
            sigma_mm[2] / self.cell_z if shape[2] > 1 else 0,
        )
        volume = gaussian_filter(volume, sigma, mode="nearest")
        volume /= max(float(volume.std()), 1e-6)
        # Elevation first so that one slice is contiguous.
        self.volume = np.ascontiguousarray(np.moveaxis(volume, 2, 0))

    def slice(
        self, z_mm: float, x_left_mm: float, px_mm: float, height: int, width: int, py_mm: float | None = None
    ) -> np.ndarray:
        """The field on a pixel grid: pixel (i, j) is at depth (i+0.5)py and lateral x_left+(j+0.5)px."""
        py_mm = px_mm if py_mm is None else py_mm
        pos = min(max((z_mm - self.z0) / self.cell_z, 0.0), self.volume.shape[0] - 1.0)
        k = min(int(pos), self.volume.shape[0] - 2) if self.volume.shape[0] > 1 else 0
        if self.volume.shape[0] > 1:
            f = pos - k
            coarse = self.volume[k] * np.float32(1 - f) + self.volume[k + 1] * np.float32(f)
        else:
            coarse = self.volume[0]
        scale = px_mm / self.cell
        # Inverse affine map: destination pixel (j, i) -> source coarse coordinates.
        matrix = np.array(
            [
                [scale, 0.0, (x_left_mm + 0.5 * px_mm - self.x0) / self.cell],
                [0.0, py_mm / self.cell, 0.5 * py_mm / self.cell],
            ],
            dtype=np.float64,
        )
        return cv2.warpAffine(
            coarse,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )


@dataclass(frozen=True)
class _Surface:
    """A smooth random depth surface: base + sum of sinusoids in (lateral x, elevation z), in mm."""

    base: float
    amps: np.ndarray
    fx: np.ndarray
    fz: np.ndarray
    phases: np.ndarray

    @staticmethod
    def random(rng: np.random.Generator, base: float, amp: float) -> _Surface:
        n = 3
        return _Surface(
            base,
            amp * rng.uniform(0.3, 1.0, n) / np.sqrt(n),
            rng.uniform(1 / 70, 1 / 20, n),
            rng.uniform(-1 / 40, 1 / 40, n),
            rng.uniform(0, 2 * np.pi, n),
        )

    def depth(self, x_mm: np.ndarray, z_mm: float) -> np.ndarray:
        arg = 2 * np.pi * (np.outer(x_mm, self.fx) + z_mm * self.fz) + self.phases
        return (self.base + np.sin(arg) @ self.amps).astype(np.float32)


@dataclass
class _Tissue:
    skin: _Surface
    fat: _Surface
    gland: _Surface
    muscle: _Surface
    muscle_thickness: float
    striation_angle: float
    striation_period: float
    lobules: _NoiseVolume
    texture: _NoiseVolume
    septa: _NoiseVolume
    lobule_threshold: float

    @staticmethod
    def random(
        rng: np.random.Generator, depth_mm: float, x_range: tuple[float, float], z_range: tuple[float, float]
    ) -> _Tissue:
        fat_depth = rng.uniform(4.0, 9.0)
        gland_depth = rng.uniform(max(fat_depth + 12, 0.55 * depth_mm), max(fat_depth + 14, 0.78 * depth_mm))
        return _Tissue(
            skin=_Surface.random(rng, rng.uniform(1.4, 2.2), 0.3),
            fat=_Surface.random(rng, fat_depth, 2.0),
            gland=_Surface.random(rng, gland_depth, 3.0),
            muscle=_Surface.random(rng, gland_depth + rng.uniform(1.0, 2.5), 1.8),
            muscle_thickness=rng.uniform(6.0, 10.0),
            striation_angle=rng.uniform(-0.35, 0.35),
            striation_period=rng.uniform(1.0, 1.6),
            lobules=_NoiseVolume(rng, depth_mm, x_range, z_range, 0.6, (1.6, 2.6, 2.0)),
            texture=_NoiseVolume(rng, depth_mm, x_range, z_range, 0.5, (0.45, 1.6, 1.0)),
            septa=_NoiseVolume(rng, depth_mm, x_range, z_range, 0.6, (2.4, 1.2, 2.0)),
            lobule_threshold=rng.uniform(0.9, 1.4),
        )


# The radius profile is evaluated on this grid and interpolated: spikes and corners cost O(grid), not
# O(pixels). 4096 samples resolve the narrowest spike (0.015 rad) with ~10 samples.
_THETA_GRID = np.linspace(-np.pi, np.pi, 4097).astype(np.float32)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles wrapped to [-pi, pi)."""
    return (angle + np.float32(np.pi)) % np.float32(2 * np.pi) - np.float32(np.pi)


def _step(depth: np.ndarray, boundary: np.ndarray, width_mm: float = 0.25) -> np.ndarray:
    """Soft 0->1 step where depth passes boundary (per column), avoiding aliased layer edges."""
    return np.clip((depth - boundary) * np.float32(1.0 / width_mm) + np.float32(0.5), 0.0, 1.0)


# --------------------------------------------------------------------------------------------- lesion


@dataclass
class _Lesion:
    """A 3-D lesion: an ellipsoid-like body with a lexicon-driven radial profile in each cross-section."""

    category: str
    descriptors: dict[str, str]
    center: tuple[float, float, float]  # (x lateral, depth, z elevation) in mm
    a: float  # lateral semi-axis (mm), before tilt
    b: float  # axial semi-axis
    c: float  # elevational semi-axis
    tilt: float  # radians
    harmonics: np.ndarray  # rows (k, amplitude, phase, drift per mm of elevation)
    lobulation: tuple[float, float, float]  # (count, amplitude, phase)
    corners: np.ndarray  # rows (angle, amplitude, half width)
    spikes: np.ndarray  # rows (angle, length, width)
    transition_mm: float
    echo: float
    blobs: np.ndarray  # rows (u, v, sigma, log amplitude) in normalized lesion coordinates
    calcs: np.ndarray  # rows (u, v) in normalized coordinates
    halo_mm: float
    atten_db_mm: float
    size_mm: float = 0.0

    @staticmethod
    def random(
        rng: np.random.Generator, category: str, center: tuple[float, float, float], max_diameter_mm: float
    ) -> _Lesion:
        d = {
            key: str(rng.choice(values, p=CATEGORY_TABLE[category][key]))
            for key, values in DESCRIPTOR_CHOICES.items()
        }
        lo, hi = SIZE_MM[category]
        diameter = min(rng.uniform(lo, hi), max_diameter_mm)
        ratio = {
            "oval": rng.uniform(1.35, 2.0),
            "round": rng.uniform(1.0, 1.12),
            "irregular": rng.uniform(1.1, 1.6),
        }[d["shape"]]
        long_r, short_r = diameter / 2, diameter / 2 / ratio
        a, b = (long_r, short_r) if d["orientation"] == "parallel" else (short_r, long_r)
        if d["shape"] == "round" and d["orientation"] == "not parallel":
            a, b = short_r, long_r
        tilt = rng.uniform(-0.25, 0.25)
        c = rng.uniform(0.8, 1.2) * max(a, b)
        if d["shape"] == "irregular":
            ks = np.arange(2, 7)
            amps = rng.uniform(0.05, 0.16, ks.size) / np.sqrt(ks - 1)
        else:
            ks = np.arange(2, 4)
            amps = rng.uniform(0.0, 0.025, ks.size)
        if d["margin"] == "indistinct":
            # An ill-defined margin: fine ripples of the outline on top of the wide transition.
            fine = np.arange(7, 15)
            ks = np.concatenate([ks, fine])
            amps = np.concatenate([amps, rng.uniform(0.01, 0.035, fine.size)])
        harmonics = np.stack(
            [ks, amps, rng.uniform(0, 2 * np.pi, ks.size), rng.uniform(-0.15, 0.15, ks.size)], 1
        )
        margin = d["margin"]
        lobulation = (
            (float(rng.integers(12, 20)), rng.uniform(0.07, 0.11), rng.uniform(0, 2 * np.pi))
            if margin == "microlobulated"
            else (0.0, 0.0, 0.0)
        )
        corners = np.zeros((0, 3))
        if margin == "angular":
            n = int(rng.integers(3, 6))
            corners = np.stack(
                [rng.uniform(0, 2 * np.pi, n), rng.uniform(0.12, 0.25, n), rng.uniform(0.35, 0.6, n)], 1
            )
        spikes = np.zeros((0, 3))
        if margin == "spiculated":
            n = int(rng.integers(9, 17))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            spikes = np.stack([angles, rng.uniform(0.15, 0.4, n), rng.uniform(0.015, 0.03, n)], 1)
        transition = {"circumscribed": 0.2, "indistinct": rng.uniform(2.0, 3.2)}.get(margin, 0.45)
        echo_pattern = d["echo_pattern"]
        echo = {
            "anechoic": 0.012,
            "hypoechoic": rng.uniform(0.07, 0.13),
            "isoechoic": rng.uniform(0.17, 0.26),
            "heterogeneous": rng.uniform(0.05, 0.08),
            "complex": 0.012,
        }[echo_pattern]
        blobs = np.zeros((0, 4))
        if echo_pattern == "heterogeneous":
            n = int(rng.integers(4, 9))
            blobs = np.stack(
                [
                    rng.uniform(-0.6, 0.6, n),
                    rng.uniform(-0.6, 0.6, n),
                    rng.uniform(0.15, 0.35, n),
                    rng.uniform(-1.0, 1.8, n),
                ],
                1,
            )
        elif echo_pattern == "complex":
            # An eccentric solid component on the cyst wall (mural nodule).
            angle = rng.uniform(0, 2 * np.pi)
            blobs = np.array([[0.55 * np.cos(angle), 0.55 * np.sin(angle), rng.uniform(0.3, 0.45), 3.8]])
        calcs = np.zeros((0, 2))
        if d["calcifications"] == "in mass":
            n = int(rng.integers(3, 12))
            radius = np.sqrt(rng.uniform(0, 0.5, n))
            theta = rng.uniform(0, 2 * np.pi, n)
            calcs = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
        halo = (
            rng.uniform(0.8, 1.8)
            if margin in ("spiculated", "angular", "indistinct") and rng.random() < 0.5
            else 0
        )
        atten = rng.uniform(*LESION_ATTEN_DB_MM[d["posterior_features"]])
        return _Lesion(
            category,
            d,
            center,
            a,
            b,
            c,
            tilt,
            harmonics,
            lobulation,
            corners,
            spikes,
            transition,
            echo,
            blobs,
            calcs,
            halo,
            atten,
            diameter,
        )

    def radius_factor(self, theta: np.ndarray, dz: float) -> np.ndarray:
        """Multiplier of the base ellipse radius at polar angle theta (radians)."""
        f = np.ones_like(theta)
        for k, amp, phase, drift in self.harmonics:
            f += np.float32(amp) * np.cos(np.float32(k) * theta + np.float32(phase + drift * dz))
        count, amp, phase = self.lobulation
        if count:
            f += amp * (np.abs(np.sin(0.5 * count * theta + phase)) - 0.64)
        for angle, amp, half_width in self.corners:
            delta = np.abs(_wrap(theta - np.float32(angle)))
            f *= 1 + np.float32(amp) * np.clip(1 - delta / np.float32(half_width), 0, None)
        for angle, length, width in self.spikes:
            delta = _wrap(theta - np.float32(angle)) * np.float32(1 / width)
            near = np.abs(delta) < 3  # the spike is negligible beyond three widths
            f[near] += np.float32(length) * np.exp(-np.square(delta[near]))
        return f

    def extent_mm(self) -> float:
        """Radius of a circle that surely holds the lesion and its halo/transition."""
        grow = 1 + float(np.sum(np.abs(self.harmonics[:, 1]))) + self.lobulation[1]
        grow *= float(np.prod(1 + self.corners[:, 1])) if len(self.corners) else 1
        grow += float(self.spikes[:, 1].max()) if len(self.spikes) else 0
        return max(self.a, self.b) * grow + 2 * self.transition_mm + self.halo_mm + 1.0

    def render(
        self,
        echo: np.ndarray,
        atten: np.ndarray,
        mask: np.ndarray,
        z_mm: float,
        x_left_mm: float,
        px_mm: float,
    ) -> bool:
        """Draw the cross-section at elevation z into echo/atten/mask (in place); True if any mask pixel."""
        dz = z_mm - self.center[2]
        if abs(dz) >= self.c:
            return False
        s = math.sqrt(1 - (dz / self.c) ** 2)
        if s < 0.12:
            return False
        height, width = echo.shape
        cx = (self.center[0] - x_left_mm) / px_mm - 0.5
        cy = self.center[1] / px_mm - 0.5
        r_px = self.extent_mm() * s / px_mm + 2
        x0, x1 = max(int(cx - r_px), 0), min(int(cx + r_px) + 2, width)
        y0, y1 = max(int(cy - r_px), 0), min(int(cy + r_px) + 2, height)
        if x0 >= x1 or y0 >= y1:
            return False
        xs = (np.arange(x0, x1, dtype=np.float32) - cx) * px_mm
        ys = (np.arange(y0, y1, dtype=np.float32) - cy) * px_mm
        X, Y = np.meshgrid(xs, ys)
        ct, st = math.cos(self.tilt), math.sin(self.tilt)
        u = (X * ct + Y * st) / (self.a * s)
        v = (-X * st + Y * ct) / (self.b * s)
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        r_eff = math.sqrt(self.a * self.b) * s
        radius = np.interp(theta, _THETA_GRID, self.radius_factor(_THETA_GRID, dz)).astype(np.float32)
        signed_mm = (radius - rho) * r_eff  # approximate signed distance to the margin, > 0 inside
        w = np.clip(signed_mm / self.transition_mm + 0.5, 0, 1).astype(np.float32)
        inside = w >= 0.5
        if not inside.any():
            return False
        # Thin spicule tips can break into isolated pixels; the mask is the one connected body.
        count, labels, stats, _ = cv2.connectedComponentsWithStats(inside.view(np.uint8), connectivity=8)
        if count > 2:
            inside = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        lesion_echo = np.full(w.shape, self.echo, np.float32)
        for bu, bv, sigma, log_amp in self.blobs:
            lesion_echo *= np.exp(log_amp * np.exp(-((u - bu) ** 2 + (v - bv) ** 2) / (2 * sigma**2)))
        for cu, cv in self.calcs:
            dist2 = ((u - cu) * self.a * s) ** 2 + ((v - cv) * self.b * s) ** 2
            lesion_echo += 3.5 * np.exp(-dist2 / (2 * 0.18**2)).astype(np.float32)
        region = echo[y0:y1, x0:x1]
        if self.halo_mm:
            halo = np.clip(1 + signed_mm / self.halo_mm, 0, 1) * (signed_mm < 0)
            region *= (1 + 1.2 * halo).astype(np.float32)
        # Blend in the log domain: the display is logarithmic, so a linear blend would make an
        # indistinct (wide) margin look as sharp as a circumscribed one.
        region[...] = np.exp(np.log(region) * (1 - w) + np.log(lesion_echo) * w)
        atten_region = atten[y0:y1, x0:x1]
        atten_region += w * (np.float32(self.atten_db_mm) - atten_region)
        mask[y0:y1, x0:x1] |= inside
        return True


# --------------------------------------------------------------------------------------------- phantom


@dataclass
class _Scene:
    """A seeded 3-D phantom: tissue, lesions and the scanner settings; renders B-mode cross-sections."""

    tissue: _Tissue
    lesions: list[_Lesion]
    depth_mm: float
    width: int
    height: int
    gain_db: float
    dynamic_range_db: float
    tgc_ripple: np.ndarray  # (H,) dB

    @property
    def px_mm(self) -> float:
        return self.depth_mm / self.height

    def echo_and_atten(
        self, z_mm: float, x_left_mm: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, _Lesion | None]:
        """Linear echo amplitude, attenuation (dB/mm) and lesion mask of the cross-section at z.

        Tissue is computed on a grid of half the resolution and upsampled (bilinear): it is blurred by
        the point-spread function anyway, and this quarters the cost. Lesions (sharp margins, masks)
        are drawn at full resolution.
        """
        t, H_full, W_full = self.tissue, self.height, self.width
        H, W = (H_full + 1) // 2, (W_full + 1) // 2
        px = self.px_mm * H_full / H
        px_x = self.px_mm * W_full / W
        x = x_left_mm + (np.arange(W, dtype=np.float32) + 0.5) * np.float32(px_x)
        depth = ((np.arange(H, dtype=np.float32) + 0.5) * px)[:, None]
        skin_b = t.skin.depth(x, z_mm)
        fat_b = t.fat.depth(x, z_mm)
        gland_b = np.maximum(t.gland.depth(x, z_mm), fat_b + 3)
        muscle_b = np.maximum(t.muscle.depth(x, z_mm), gland_b + 0.8)
        chest_b = muscle_b + t.muscle_thickness

        texture = t.texture.slice(z_mm, x_left_mm, px_x, H, W, px)
        lob = t.lobules.slice(z_mm, x_left_mm, px_x, H, W, px)
        septa = t.septa.slice(z_mm, x_left_mm, px_x, H, W, px)
        mottle = np.exp(np.float32(0.22) * texture)
        # Thin echogenic curves at the zero level of a smooth field: Cooper's ligaments and fat septa.
        # The field is stretched in depth, so its zero lines run mostly from the gland up to the skin.
        lines = np.exp(-np.square(septa * np.float32(6.0))) * np.clip(
            lob * np.float32(0.7) + np.float32(0.6), 0, 1
        )

        in_fat = _step(depth, skin_b)
        in_gland = _step(depth, fat_b, 0.6)
        in_retro = _step(depth, gland_b, 0.8)
        in_muscle = _step(depth, muscle_b, 0.3)
        in_chest = _step(depth, chest_b, 1.0)

        skin_echo = np.where(depth < 0.35, np.float32(ECHO["skin_line"]), np.float32(ECHO["dermis"]))
        fat_echo = ECHO["fat"] * mottle + ECHO["ligament"] * lines
        lobule = np.clip((lob - t.lobule_threshold) * np.float32(2.5), 0, 1)  # fat lobules inside the gland
        gland_echo = ECHO["gland"] * mottle * (1 - lobule) + (ECHO["lobule"] * mottle) * lobule
        phase = (depth * math.cos(t.striation_angle) + x * math.sin(t.striation_angle)) * (
            2 * np.pi / t.striation_period
        )
        stria = np.cos(phase + 0.5 * texture)
        muscle_echo = ECHO["muscle"] * (0.7 + 1.8 * np.clip(stria, 0, 1) ** 6) * mottle
        fascia = np.exp(-np.square((depth - muscle_b) * np.float32(1 / 0.25)))

        echo = skin_echo + in_fat * (fat_echo - skin_echo)
        echo += in_gland * (gland_echo - echo)
        echo += in_retro * (fat_echo - echo)
        echo += in_muscle * (muscle_echo - echo)
        echo += ECHO["fascia"] * fascia
        echo += in_chest * (ECHO["chest"] * mottle - echo)

        atten = ATTEN_DB_MM["skin"] + in_fat * np.float32(ATTEN_DB_MM["fat"] - ATTEN_DB_MM["skin"])
        atten += in_gland * (ATTEN_DB_MM["gland"] - atten) * (1 - lobule)
        atten += in_retro * (ATTEN_DB_MM["fat"] - atten)
        atten += in_muscle * (ATTEN_DB_MM["muscle"] - atten)
        atten += in_chest * (ATTEN_DB_MM["chest"] - atten)
        atten = cv2.resize(np.broadcast_to(atten, (H, W)).astype(np.float32), (W_full, H_full))
        # Structures finer than the point-spread function (ligaments, striations) are blurred by it.
        echo = cv2.GaussianBlur(
            np.broadcast_to(echo, (H, W)).astype(np.float32),
            (0, 0),
            sigmaX=PSF_SIGMA_MM[1] / px_x,
            sigmaY=PSF_SIGMA_MM[0] / px,
        )
        echo = cv2.resize(echo, (W_full, H_full), interpolation=cv2.INTER_LINEAR)
        H, W, px = H_full, W_full, self.px_mm

        mask = np.zeros((H, W), bool)
        visible = None
        for lesion in self.lesions:
            if lesion.render(echo, atten, mask, z_mm, x_left_mm, px):
                visible = lesion
        return echo, atten, mask, visible

    def to_bmode(self, echo: np.ndarray, atten: np.ndarray, speckle: np.ndarray) -> np.ndarray:
        """Attenuate, compensate (TGC), multiply by the speckle envelope, log-compress to uint8."""
        px = np.float32(self.px_mm)
        # Attenuation accumulated from the probe to each depth (dB), minus the TGC curve.
        # Column sums via the integral image (much faster than np.cumsum along axis 0).
        integral = cv2.integral(atten, sdepth=cv2.CV_64F)
        loss_db = (integral[1:, 1:] - integral[1:, :-1]).astype(np.float32) * px
        tgc_db = (np.arange(self.height, dtype=np.float32) + 0.5) * px * np.float32(
            NOMINAL_ATTEN_DB_MM
        ) + self.tgc_ripple
        loss_db -= tgc_db[:, None]
        # 20 log10(echo * envelope) - loss, mapped to 0..255 over the dynamic range.
        amp = echo * speckle
        np.maximum(amp, np.float32(1e-6), out=amp)
        db = np.log10(amp) * np.float32(20.0)
        db -= loss_db
        scale = np.float32(255.0 / self.dynamic_range_db)
        offset = np.float32(self.gain_db - (-self.dynamic_range_db + 36.0))
        out = (db + offset) * scale
        return np.clip(out, 0, 255).astype(np.uint8)


def _speckle_planes(
    rng: np.random.Generator, height: int, width: int, px_mm: float, out: np.ndarray | None = None
) -> np.ndarray:
    """Complex baseband (IQ) speckle as two float32 planes (I, Q): white complex scatterers convolved with
    the Gaussian PSF. Normalized so that E(I^2 + Q^2) = 1; the magnitude (envelope) is Rayleigh distributed.
    Planes rather than complex numbers because OpenCV's fast arithmetic takes them.
    """
    planes = rng.standard_normal((2, height, width), dtype=np.float32) if out is None else out
    if out is not None:
        rng.standard_normal(out=out, dtype=np.float32)
    sy, sx = PSF_SIGMA_MM[0] / px_mm, PSF_SIGMA_MM[1] / px_mm
    for plane in planes:
        cv2.GaussianBlur(plane, (0, 0), dst=plane, sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT)
    planes *= np.float32(1.0 / math.sqrt(2.0 * float(np.mean(np.square(planes)))))
    return planes


def _compound(looks: list[np.ndarray]) -> np.ndarray:
    """Spatial compounding: the mean of the envelopes (IQ magnitudes) of independent looks."""
    envelope = cv2.magnitude(looks[0][0], looks[0][1])
    for extra in looks[1:]:
        envelope += cv2.magnitude(extra[0], extra[1])
    if len(looks) > 1:
        envelope *= np.float32(1.0 / len(looks))
    return envelope


def _scanner_settings(rng: np.random.Generator, height: int, px_mm: float) -> tuple[float, float, np.ndarray]:
    gain = rng.uniform(-3.0, 3.0)
    dynamic_range = rng.uniform(58.0, 68.0)
    depth = (np.arange(height) + 0.5) * px_mm
    ripple = sum(
        rng.uniform(-1.2, 1.2) * np.sin(2 * np.pi * depth / rng.uniform(15, 40) + rng.uniform(0, 6.3))
        for _ in range(2)
    )
    return gain, dynamic_range, np.asarray(ripple, np.float32)


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 64 or height < 64 or width > 4096 or height > 4096:
        raise PhantomError(f"phantom size must be between 64 and 4096 pixels per side; got {width}x{height}")
    return width, height


class PhantomScanner:
    """Still images of freshly drawn phantoms, one lesion each.

    ``sample()`` number ``i`` of a scanner is drawn from ``default_rng([seed, i])``, so any sample can be
    regenerated alone (``sample_at``) and runs are reproducible. Depth of field is 30-50 mm, so the pixel
    size is ``depth_mm / height`` (square pixels). ``size`` is (width, height) in pixels.
    """

    def __init__(self, seed: int, size: tuple[int, int] = DEFAULT_SIZE):
        self.seed = int(seed)
        self.size = _check_size(size)
        self._count = 0

    def sample(self, category: str | None = None) -> PhantomSample:
        """The next sample; ``category`` None draws one uniformly from ``CATEGORIES``."""
        result = self.sample_at(self._count, category)
        self._count += 1
        return result

    def sample_at(self, index: int, category: str | None = None) -> PhantomSample:
        """Sample number ``index`` (independent of the others)."""
        if category is not None and category not in CATEGORIES:
            raise PhantomError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
        rng = np.random.default_rng([self.seed, int(index)])
        category = category or str(rng.choice(CATEGORIES))
        width, height = self.size
        depth_mm = rng.uniform(30.0, 50.0)
        px = depth_mm / height
        width_mm = width * px
        x_left = -width_mm / 2
        tissue = _Tissue.random(rng, depth_mm, (x_left - 2, -x_left + 2), (0.0, 0.0))
        max_d = 0.8 * min(width_mm - 6, depth_mm - 8)
        lesion = _Lesion.random(rng, category, (0.0, 0.0, 0.0), max_d)
        half_x = abs(lesion.a * math.cos(lesion.tilt)) + abs(lesion.b * math.sin(lesion.tilt))
        half_y = abs(lesion.a * math.sin(lesion.tilt)) + abs(lesion.b * math.cos(lesion.tilt))
        cx = rng.uniform(-max(width_mm / 2 - half_x - 3, 0), max(width_mm / 2 - half_x - 3, 0))
        fat_depth = float(tissue.fat.depth(np.array([cx], np.float32), 0.0)[0])
        gland_depth = float(tissue.gland.depth(np.array([cx], np.float32), 0.0)[0])
        lo = max(fat_depth + 0.5 * half_y, tissue.skin.base + half_y + 2)
        hi = min(gland_depth + 0.3 * half_y, depth_mm - half_y - 4)
        cy = rng.uniform(lo, hi) if hi > lo else min(max(lo, half_y + 2), depth_mm - half_y - 2)
        lesion.center = (cx, cy, 0.0)
        gain, dr, ripple = _scanner_settings(rng, height, px)
        scene = _Scene(tissue, [lesion], depth_mm, width, height, gain, dr, ripple)
        echo, atten, mask, _ = scene.echo_and_atten(0.0, x_left)
        speckle = _compound([_speckle_planes(rng, height, width, px) for _ in range(COMPOUND_LOOKS)])
        image = scene.to_bmode(echo, atten, speckle)
        return PhantomSample(image, mask, category, dict(lesion.descriptors), px, round(lesion.size_mm, 2))


__all__ = [
    "CATEGORIES",
    "CATEGORY_TABLE",
    "DEFAULT_SIZE",
    "DESCRIPTOR_CHOICES",
    "SIZE_MM",
    "PhantomError",
    "PhantomSample",
    "PhantomScanner",
]
