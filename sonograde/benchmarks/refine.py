"""Chan–Vese speed: our Numba kernel against scikit-image, same inputs, measured interleaved in one run.

Both run 50 iterations with tolerance 0, mu1 = mu2 = alpha = 1 (scikit-image: lambda1 = lambda2 = mu = 1),
dt = 0.5 and the same explicit initial level set, on a seeded speckled phantom (a dark elliptical
lesion in Rayleigh speckle, made here; no data needed):

  full  288x288 (the ROI-CNN input size), checkerboard start (the "No ROI-CNN" variant)
  crop  96x96 around the lesion, started from a disc mask (the refine-ROI step)

Timings are medians over --repeats runs taken alternately (ours, scikit-image, ours, ...), in
milliseconds of CPU time of the calling thread by default (--clock cpu): both implementations run
single-threaded in that thread, so this counts their work and not the waits a busy shared machine
adds (on an idle machine the two clocks agree; --clock wall measures elapsed time). Our kernel is
compiled/loaded before timing. IoU compares the two final masks (1.0 means identical).

Examples:
  sonograde bench refine
  sonograde bench refine --json --repeats 11
  sonograde bench refine --check       # exit 1 unless speedup >= 8 and IoU >= 0.999 for both
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ITERATIONS = 50
MIN_SPEEDUP = 8.0
MIN_IOU = 0.999
CLOCKS = {"cpu": time.thread_time, "wall": time.perf_counter}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--repeats", type=int, default=11, metavar="N", help="timed runs of each implementation (default 11)"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="cpu",
        help="cpu: CPU time of this thread (default; both run single-threaded in it, so this measures "
        "their work even on a busy machine); wall: elapsed time, which on a shared machine also "
        "measures the scheduler",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 unless speedup >= {MIN_SPEEDUP:g} and IoU >= {MIN_IOU} in both cases",
    )


def phantom(seed: int, size: int = 288) -> tuple[np.ndarray, tuple[int, int]]:
    """Seeded uint8 (size, size) speckle phantom with a dark elliptical lesion; returns (image, centre yx)."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    ay, ax = rng.uniform(0.09, 0.12) * size, rng.uniform(0.12, 0.16) * size
    angle = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
    # echogenicity: brighter with depth-dependent falloff, dark lesion, then Rayleigh speckle
    tissue = 0.9 - 0.3 * yy / size
    tissue[inside] = 0.25
    speckle = rng.rayleigh(1.0, (size, size))
    img = cv2.GaussianBlur(tissue * speckle, (0, 0), 1.0)
    img = np.clip(img / np.percentile(img, 99.5) * 255.0, 0, 255).astype(np.uint8)
    return img, (round(cy), round(cx))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _measure(
    image: np.ndarray, phi0: np.ndarray, repeats: int, clock: Callable[[], float], bar: Any
) -> dict[str, Any]:
    from skimage.segmentation import chan_vese as sk_chan_vese

    from refine.chan_vese import DEFAULT_DT, chan_vese

    def ours() -> np.ndarray:
        return chan_vese(
            image, phi0, mu1=1.0, mu2=1.0, alpha=1.0, dt=DEFAULT_DT, max_iterations=ITERATIONS, tol=0.0
        ).mask

    def theirs() -> np.ndarray:
        return sk_chan_vese(
            image, mu=1.0, lambda1=1.0, lambda2=1.0, tol=0.0, max_num_iter=ITERATIONS, dt=DEFAULT_DT,
            init_level_set=phi0,
        )

    ours_mask, their_mask = ours(), theirs()  # untimed: first-call costs on both sides
    t_ours, t_theirs = [], []
    for _ in range(repeats):
        t0 = clock()
        ours_mask = ours()
        t1 = clock()
        their_mask = theirs()
        t2 = clock()
        t_ours.append(t1 - t0)
        t_theirs.append(t2 - t1)
        bar.update(1)
    ours_ms = float(np.median(t_ours)) * 1e3
    sk_ms = float(np.median(t_theirs)) * 1e3
    return {
        "shape": [int(image.shape[0]), int(image.shape[1])],
        "ours_ms": round(ours_ms, 3),
        "skimage_ms": round(sk_ms, 3),
        "speedup": round(sk_ms / ours_ms, 2),
        "iou": round(_iou(ours_mask, their_mask), 6),
    }


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    from refine.chan_vese import checkerboard_level_set, mask_to_level_set, warm_up
    from sonograde import RESEARCH_USE_ONLY

    warm_s = warm_up()
    image, (cy, cx) = phantom(args.seed)
    full_phi = checkerboard_level_set(image.shape)

    half = 48
    y0 = min(max(cy - half, 0), image.shape[0] - 2 * half)
    x0 = min(max(cx - half, 0), image.shape[1] - 2 * half)
    crop = np.ascontiguousarray(image[y0 : y0 + 2 * half, x0 : x0 + 2 * half])
    yy, xx = np.mgrid[0 : 2 * half, 0 : 2 * half]
    # a disc a little off the lesion, as a rough CNN outline would be
    disc = (yy - (cy - y0) - 3) ** 2 + (xx - (cx - x0) + 4) ** 2 <= 26**2
    crop_phi = mask_to_level_set(disc)

    with tqdm(total=2 * args.repeats, desc="bench refine", unit="run", file=sys.stderr, disable=None) as bar:
        result = {
            "full": _measure(image, full_phi, args.repeats, CLOCKS[args.clock], bar),
            "crop": _measure(crop, crop_phi, args.repeats, CLOCKS[args.clock], bar),
        }

    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Chan-Vese, {ITERATIONS} iterations, tol 0, mu1=mu2=alpha=1, dt=0.5; median {args.clock} "
            f"time of {args.repeats} interleaved runs (kernel warm-up {warm_s:.2f} s)"
        )
        print(f"{'case':<6}{'shape':>10}{'ours ms':>11}{'skimage ms':>13}{'speedup':>10}{'IoU':>10}")
        for name, r in result.items():
            shape = f"{r['shape'][0]}x{r['shape'][1]}"
            print(
                f"{name:<6}{shape:>10}{r['ours_ms']:>11.2f}{r['skimage_ms']:>13.2f}"
                f"{r['speedup']:>9.1f}x{r['iou']:>10.4f}"
            )
        print(RESEARCH_USE_ONLY)
    if args.check:
        bad = [
            name
            for name, r in result.items()
            if r["speedup"] < MIN_SPEEDUP or r["iou"] < MIN_IOU
        ]
        if bad:
            print(
                f"check failed for {', '.join(bad)}: need speedup >= {MIN_SPEEDUP:g} and IoU >= {MIN_IOU}",
                file=sys.stderr,
            )
            return 1
    return 0
