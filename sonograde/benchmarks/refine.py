"""Chan–Vese speed: our Numba kernel against scikit-image, same inputs, measured interleaved in one run.

Both run 50 iterations with tolerance 0, mu1 = mu2 = alpha = 1 (scikit-image: lambda1 = lambda2 = mu = 1),
dt = 0.5 and the same explicit initial level set, on a seeded speckled phantom (a dark elliptical
lesion in Rayleigh speckle, made here; no data needed):

  full  288x288 (the ROI-CNN input size), checkerboard start (the "No ROI-CNN" variant)
  crop  96x96 around the lesion, started from a disc mask (the refine-ROI step)

Then the refine stage itself (`refine.stage.refine_lesion`, what the pipeline's refine thread and
`sonograde grade` run) per frame, every refinement side by side on the same --frames seeded synthetic
frames of --frame-size (default 600x760, about a BrEaST-Lesions_USG frame) with a ROI-CNN-like
probability map: p50 and p99 per frame of the paper's (Chan-Vese on the 288 grid) and the native ones
(on a crop of at most 256 px a side at the frame's own pixels). The CPU model, its ISA features and the
load average are printed with the numbers: under load they compare the refinements, they are not the
product's speed.

Timings are medians over --repeats runs taken alternately (ours, scikit-image, ours, ...), in
milliseconds of CPU time of the calling thread by default (--clock cpu): both implementations run
single-threaded in that thread, so this counts their work and not the waits a busy shared machine
adds (on an idle machine the two clocks agree; --clock wall measures elapsed time). Our kernel is
compiled/loaded before timing. IoU compares the two final masks (1.0 means identical).

Examples:
  sonograde bench refine
  sonograde bench refine --json --repeats 11
  sonograde bench refine --check       # exit 1 unless speedup >= 8 and IoU >= 0.999 for both
  sonograde bench refine --frames 100 --frame-size 1080x1920
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
    parser.add_argument("--frames", type=int, default=40, metavar="N",
                        help="synthetic frames for the refine-stage comparison (default 40)")
    parser.add_argument("--frame-size", default="600x760", metavar="HxW",
                        help="their size in px, height x width (default 600x760)")
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


def stage_frames(count: int, shape: tuple[int, int], seed: int
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Seeded (frame, frame on the 288 grid, probability map, area-filtered ROI) tuples: a dark lesion of
    random size, position and tilt in speckle at ``shape``, and a ROI-CNN-like map (the lesion seen
    through the grid, shifted a little and blurred, as a network's outline is off by a few pixels)."""
    import cv2

    from refine.area_filter import area_filter

    rng = np.random.default_rng(seed)
    grid = 288
    out = []
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    for _ in range(count):
        cy, cx = shape[0] * rng.uniform(0.35, 0.65), shape[1] * rng.uniform(0.35, 0.65)
        ay, ax = shape[0] * rng.uniform(0.06, 0.2), shape[1] * rng.uniform(0.08, 0.25)
        angle = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        inside = (u / ax) ** 2 + (v / ay) ** 2 <= 1.0
        tissue = np.where(inside, 60.0, 150.0) * rng.rayleigh(1.0, shape) / 1.25
        frame = np.clip(cv2.GaussianBlur(tissue, (0, 0), 1.0), 0, 255).astype(np.uint8)
        small = cv2.resize(frame, (grid, grid), interpolation=cv2.INTER_AREA)
        truth = cv2.resize(inside.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
        shift = np.float32([[1, 0, rng.uniform(-4, 4)], [0, 1, rng.uniform(-4, 4)]])
        prob = cv2.GaussianBlur(cv2.warpAffine(truth, shift, (grid, grid)), (0, 0), 2.0)
        out.append((frame, small, prob, area_filter(prob)))
    return out


def measure_stage(frames: list, clock: Callable[[], float], bar: Any) -> dict[str, dict[str, float]]:
    """p50 / p99 / mean ms per frame of every refinement on ``frames``, interleaved frame by frame."""
    from refine.stage import REFINEMENTS, RefineParameters, refine_lesion

    times: dict[str, list[float]] = {name: [] for name in REFINEMENTS}
    for frame, small, prob, roi in frames:
        for name in REFINEMENTS:
            parameters = RefineParameters(refinement=name)
            t0 = clock()
            refine_lesion(frame, small, prob, roi, parameters)
            times[name].append((clock() - t0) * 1e3)
        bar.update(1)
    return {name: {"p50_ms": round(float(np.percentile(t, 50)), 3),
                   "p99_ms": round(float(np.percentile(t, 99)), 3),
                   "mean_ms": round(float(np.mean(t)), 3)} for name, t in times.items()}


def _frame_size(text: str) -> tuple[int, int] | None:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        return None
    return (height, width) if height >= 16 and width >= 16 else None


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print(f"error: --repeats must be >= 1, got {args.repeats}", file=sys.stderr)
        return 2
    if args.frames < 1:
        print(f"error: --frames must be >= 1, got {args.frames}", file=sys.stderr)
        return 2
    frame_size = _frame_size(args.frame_size)
    if frame_size is None:
        print(f"error: --frame-size must be HxW with both >= 16 px (e.g. 600x760), got {args.frame_size!r}",
              file=sys.stderr)
        return 2
    from tqdm import tqdm

    from engine.machine import describe_machine
    from refine.chan_vese import checkerboard_level_set, mask_to_level_set
    from refine.stage import warm_up
    from sonograde import RESEARCH_USE_ONLY

    warm_s = warm_up()  # every refinement's kernels, as the service does at start
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

    frames = stage_frames(args.frames, frame_size, args.seed)
    total = 2 * args.repeats + len(frames)
    with tqdm(total=total, desc="bench refine", unit="run", file=sys.stderr, disable=None) as bar:
        result: dict[str, Any] = {
            "full": _measure(image, full_phi, args.repeats, CLOCKS[args.clock], bar),
            "crop": _measure(crop, crop_phi, args.repeats, CLOCKS[args.clock], bar),
        }
        result["stage"] = {"frame_size": list(frame_size), "frames": len(frames), "clock": args.clock,
                           "refinements": measure_stage(frames, CLOCKS[args.clock], bar)}
    result["machine"] = describe_machine().description()
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"Chan-Vese, {ITERATIONS} iterations, tol 0, mu1=mu2=alpha=1, dt=0.5; median {args.clock} "
            f"time of {args.repeats} interleaved runs (kernel warm-up {warm_s:.2f} s)"
        )
        print(f"{'case':<6}{'shape':>10}{'ours ms':>11}{'skimage ms':>13}{'speedup':>10}{'IoU':>10}")
        for name in ("full", "crop"):
            r = result[name]
            shape = f"{r['shape'][0]}x{r['shape'][1]}"
            print(
                f"{name:<6}{shape:>10}{r['ours_ms']:>11.2f}{r['skimage_ms']:>13.2f}"
                f"{r['speedup']:>9.1f}x{r['iou']:>10.4f}"
            )
        stage = result["stage"]
        paper = stage["refinements"]["paper"]["p50_ms"]
        print(f"\nrefine stage per frame, {stage['frames']} synthetic {frame_size[0]}x{frame_size[1]} "
              f"frames, {args.clock} time (paper: Chan-Vese on the 288 grid; native: the frame's pixels, "
              "crop <= 256 px)")
        print(f"{'refinement':<18}{'p50 ms':>9}{'p99 ms':>9}{'p50 / paper':>13}")
        for name, r in stage["refinements"].items():
            ratio = r["p50_ms"] / paper if paper > 0 else float("nan")
            print(f"{name:<18}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ratio:>12.2f}x")
        print(f"machine: {result['machine']}")
        print(RESEARCH_USE_ONLY)
    if args.check:
        bad = [
            name
            for name, r in ((k, result[k]) for k in ("full", "crop"))
            if r["speedup"] < MIN_SPEEDUP or r["iou"] < MIN_IOU
        ]
        if bad:
            print(
                f"check failed for {', '.join(bad)}: need speedup >= {MIN_SPEEDUP:g} and IoU >= {MIN_IOU}",
                file=sys.stderr,
            )
            return 1
    return 0
