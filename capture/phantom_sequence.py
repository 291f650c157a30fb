"""The phantom as a frame source: a probe sweeping in elevation over a 3-D phantom holding three lesions.

Built on the simulator of ``capture.phantom`` (tissue, speckle, lesions); frames come through
``capture.sources.FrameSource`` like any capture card's (``open_source("phantom:...")``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from capture.frame_source import FrameSource
from capture.geometry import GeometryProfile
from capture.phantom import (  # the simulator's parts a sweep is made of
    CATEGORIES,
    COMPOUND_LOOKS,
    DEFAULT_SIZE,
    PhantomError,
    _check_size,
    _Lesion,
    _scanner_settings,
    _Scene,
    _speckle_planes,
    _Tissue,
)


@dataclass(frozen=True)
class SequenceState:
    """Where the probe is at one frame: elevation z (mm) along the phantom and lateral offset (mm)."""

    z_mm: float
    x_offset_mm: float


class PhantomSequence(FrameSource):
    """A probe sweeping in elevation over a 3-D phantom holding three lesions, as a frame source.

    The phantom is ``length_mm`` (default 130 mm) long; lesions sit at 25, 65 and 105 mm with three
    different categories drawn from the seed. The probe moves back and forth at ``speed_mm_s`` (default
    5 mm/s) with a small lateral hand wobble (about 1.5 mm), so consecutive frames are coherent and each
    lesion enters, grows, shrinks and leaves the view. Frame ``i`` depends only on ``(seed, i)`` and the
    frame rate (time is ``i / fps``), not on the wall clock.

    Each frame's ``meta`` holds ``mask`` (bool ground truth in frame pixels, or None when no lesion is in
    view), ``category`` and ``descriptors`` (None when none), ``z_mm``, ``depth_mm`` and, in screen mode,
    ``screen_truth`` (image rectangle and mm per pixel on the screen). ``start_frame`` starts the sweep
    later (at time ``start_frame / fps``); emitted frames are still numbered from 0.

    ``screen=True`` renders the scanner's screen as a capture card sees it (``capture.screen``, layout
    ``layout``); then ``pixel_size_mm`` is None (a capture card does not know it) unless a geometry
    profile is applied. ``realtime`` paces frames at ``fps``; otherwise they come as fast as computed.
    ``max_frames`` ends the stream after that many frames (None: endless). Elevational speckle
    decorrelation is modelled by blending (with constant power) 16 precomputed IQ speckle fields spaced
    1.5 mm apart; each frame costs a few vectorized operations.
    """

    N_SPECKLE = 16
    SPECKLE_STEP_MM = 1.5
    MARGIN_PX = 32

    def __init__(
        self,
        seed: int = 0,
        size: tuple[int, int] = DEFAULT_SIZE,
        fps: float = 30.0,
        screen: bool = False,
        realtime: bool = True,
        *,
        layout: int | str = 0,
        depth_mm: float = 40.0,
        speed_mm_s: float = 5.0,
        length_mm: float = 130.0,
        max_frames: int | None = None,
        start_frame: int = 0,
        geometry: GeometryProfile | None = None,
    ):
        if fps <= 0:
            raise PhantomError(f"fps must be positive; got {fps}")
        width, height = _check_size(size)
        self.seed = int(seed)
        self.screen = bool(screen)
        self.layout = layout
        self.speed_mm_s = float(speed_mm_s)
        self.length_mm = float(length_mm)
        self.max_frames = max_frames
        rng = np.random.default_rng([self.seed, 2**31])
        px = depth_mm / height
        width_mm = width * px
        wobble = self.MARGIN_PX // 2 * px
        x_range = (-width_mm / 2 - wobble - 2, width_mm / 2 + wobble + 2)
        tissue = _Tissue.random(rng, depth_mm, x_range, (-2.0, self.length_mm + 2))
        categories = rng.choice(CATEGORIES, 3, replace=False)
        lesions = []
        for z, category in zip((25.0, 65.0, 105.0), categories, strict=True):
            lesion = _Lesion.random(rng, str(category), (0.0, 0.0, z), 0.7 * min(width_mm - 8, depth_mm - 12))
            half_x = abs(lesion.a * math.cos(lesion.tilt)) + abs(lesion.b * math.sin(lesion.tilt))
            half_y = abs(lesion.a * math.sin(lesion.tilt)) + abs(lesion.b * math.cos(lesion.tilt))
            limit = max(width_mm / 2 - half_x - 6, 0)
            cx = rng.uniform(-limit, limit)
            fat_depth = float(tissue.fat.depth(np.array([cx], np.float32), z)[0])
            gland_depth = float(tissue.gland.depth(np.array([cx], np.float32), z)[0])
            lo = max(fat_depth + 0.5 * half_y, half_y + 4)
            hi = min(gland_depth, depth_mm - half_y - 5)
            cy = rng.uniform(lo, hi) if hi > lo else min(max(lo, half_y + 2), depth_mm - half_y - 2)
            lesion.center = (cx, cy, z)
            lesions.append(lesion)
        gain, dr, ripple = _scanner_settings(rng, height, px)
        self._scene = _Scene(tissue, lesions, depth_mm, width, height, gain, dr, ripple)
        self._speckle = np.empty(
            (self.N_SPECKLE, COMPOUND_LOOKS, 2, height, width + 2 * self.MARGIN_PX), np.float32
        )
        for field in self._speckle.reshape(-1, *self._speckle.shape[2:]):
            _speckle_planes(rng, height, width + 2 * self.MARGIN_PX, px, out=field)
        self._offsets = rng.integers(-self.MARGIN_PX // 2, self.MARGIN_PX // 2 + 1, 4096)
        self._wobble = (rng.uniform(0, 2 * np.pi, 2), rng.uniform(5.0, 9.0), rng.uniform(1.8, 3.0))
        self._index = int(start_frame)  # frame number in the sweep (time = index / fps)
        description = f"phantom sequence seed={self.seed} {width}x{height} @ {fps:g} fps" + (
            f" (scanner screen, layout {layout})" if screen else ""
        )
        super().__init__(
            description=description, is_live=False, fps=fps, realtime=realtime, geometry=geometry,
            stream_name="phantom",
        )

    @property
    def px_mm(self) -> float:
        return self._scene.px_mm

    @property
    def lesions(self) -> list[dict]:
        """Where the lesions are: category, descriptors and centre (x, depth, z in mm) of each."""
        return [
            {
                "category": le.category,
                "descriptors": dict(le.descriptors),
                "center_mm": le.center,
                "size_mm": le.size_mm,
            }
            for le in self._scene.lesions
        ]

    def state_at(self, index: int) -> SequenceState:
        """Probe position at frame ``index``: a triangle wave over the phantom length plus hand wobble."""
        t = index / self.fps
        travel = (t * self.speed_mm_s) % (2 * self.length_mm)
        z = travel if travel <= self.length_mm else 2 * self.length_mm - travel
        phases, p1, p2 = self._wobble
        x = 1.0 * math.sin(2 * np.pi * t / p1 + phases[0]) + 0.4 * math.sin(2 * np.pi * t / p2 + phases[1])
        return SequenceState(z, x)

    def render(self, index: int) -> tuple[np.ndarray, np.ndarray | None, _Lesion | None, SequenceState]:
        """B-mode image, lesion mask (None when no lesion in view) and the visible lesion at frame index."""
        scene, px = self._scene, self._scene.px_mm
        state = self.state_at(index)
        x_left = -scene.width * px / 2 + state.x_offset_mm
        echo, atten, mask, lesion = scene.echo_and_atten(state.z_mm, x_left)
        # Speckle: constant-power blend of the two fields bracketing z; the window moves with the probe.
        pos = state.z_mm / self.SPECKLE_STEP_MM
        k = math.floor(pos)
        f = pos - k
        shift = round(state.x_offset_mm / px)
        fields = []
        for j in (k, k + 1):
            start = self.MARGIN_PX + shift + int(self._offsets[(j // self.N_SPECKLE) % len(self._offsets)])
            start = min(max(start, 0), 2 * self.MARGIN_PX)
            fields.append(self._speckle[j % self.N_SPECKLE][..., start : start + scene.width])
        w0, w1 = math.cos(0.5 * np.pi * f), math.sin(0.5 * np.pi * f)
        # The IQ field is linear in the scatterers, so blending fields (before envelope detection) is a
        # valid field of blended scatterers; cos/sin weights keep its power constant.
        envelope = None
        for look in range(COMPOUND_LOOKS):
            a, b = fields[0][look], fields[1][look]
            i_plane = cv2.addWeighted(a[0], w0, b[0], w1, 0.0)
            q_plane = cv2.addWeighted(a[1], w0, b[1], w1, 0.0)
            magnitude = cv2.magnitude(i_plane, q_plane)
            envelope = magnitude if envelope is None else cv2.add(envelope, magnitude)
        assert envelope is not None
        if COMPOUND_LOOKS > 1:
            envelope *= np.float32(1.0 / COMPOUND_LOOKS)
        image = scene.to_bmode(echo, atten, envelope)
        return image, (mask if lesion is not None else None), lesion, state

    def _next_raw(self) -> tuple[np.ndarray, float | None, dict] | None:
        if self.max_frames is not None and self._emitted >= self.max_frames:
            return None
        image, mask, lesion, state = self.render(self._index)
        self._index += 1
        meta = {
            "mask": mask,
            "category": lesion.category if lesion else None,
            "descriptors": dict(lesion.descriptors) if lesion else None,
            "z_mm": round(state.z_mm, 3),
            "depth_mm": self._scene.depth_mm,
        }
        if not self.screen:
            return image, self.px_mm, meta
        from capture.screen import render_scanner_screen

        screen, truth = render_scanner_screen(image, self._scene.depth_mm, layout=self.layout, seed=self.seed)
        meta["screen_truth"] = truth
        if mask is not None:
            x, y, w, h = truth.image_rect
            full = np.zeros(screen.shape, bool)
            full[y : y + h, x : x + w] = (
                cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            )
            meta["mask"] = full
        return screen, None, meta
