"""Phantom scanner speed on one core: sequence frames per second, beside screen mode and still samples.

The process is pinned to one CPU (sched_setaffinity) and OpenCV to one thread; NumPy's element-wise
operations used here are single-threaded. The sequence must reach 60 fps at the default size to feed a
30 fps live demo with room to spare. The timed frames sweep the whole phantom once (the probe moves
faster than in a live demo, which costs nothing extra), so frames with and without lesions are mixed.

``fps`` is frames per second of the thread's CPU time (what one dedicated core delivers); ``wall_fps``
is frames per wall-clock second, which is lower when other processes share the core (the machine line,
with the load average, is printed so that a reader can tell). On an idle machine the two agree.

Examples:
  sonograde bench phantom
  sonograde bench phantom --json          # {"fps": ..., "shape": [h, w], ...}
  sonograde bench phantom --frames 600 --size 512 448
"""

from __future__ import annotations

import argparse
import json
import os
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--frames", type=int, default=300, help="sequence frames to time (default 300)")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("W", "H"), default=None, help="image size (default 384 320)"
    )
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")


def _pin_one_core() -> str:
    if hasattr(os, "sched_getaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"cpu {cpu}"
    return "not pinned (no sched_setaffinity)"


def _time_frames(sequence: object, frames: int) -> tuple[float, float, list[float]]:
    """(frames per CPU second, frames per wall second, per-frame CPU seconds)."""
    times = []
    start_wall, start_cpu = time.perf_counter(), time.thread_time()
    for i in range(frames):
        t0 = time.thread_time()
        frame = sequence.read()  # type: ignore[attr-defined]
        times.append(time.thread_time() - t0)
        if frame is None:
            raise RuntimeError(f"sequence ended after {i} frames")
    cpu = time.thread_time() - start_cpu
    return frames / cpu, frames / (time.perf_counter() - start_wall), times


def run(args: argparse.Namespace) -> int:
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    pinned = _pin_one_core()
    import cv2
    import numpy as np

    from capture.phantom import DEFAULT_SIZE, PhantomScanner
    from capture.phantom_sequence import PhantomSequence
    from engine.machine import describe_machine

    cv2.setNumThreads(1)
    size = tuple(args.size) if args.size else DEFAULT_SIZE
    frames = max(10, args.frames)

    t0 = time.perf_counter()
    # Sweep fast enough that the timed frames cover the whole phantom (all three lesions in view at times).
    speed = 130.0 * 30.0 / frames
    sequence = PhantomSequence(args.seed, size, realtime=False, speed_mm_s=speed)
    setup_s = time.perf_counter() - t0
    for _ in range(5):  # warm-up: first calls allocate
        sequence.read()
    fps, wall_fps, times = _time_frames(sequence, frames)
    shape = list(sequence.read().image.shape)
    screen = PhantomSequence(args.seed, size, screen=True, realtime=False, speed_mm_s=speed * 3)
    screen.read()
    screen_fps, _, _ = _time_frames(screen, max(10, frames // 3))
    scanner = PhantomScanner(args.seed, size)
    t0 = time.thread_time()
    stills = max(5, frames // 10)
    for _ in range(stills):
        scanner.sample()
    still_rate = stills / (time.thread_time() - t0)

    ms = np.asarray(times) * 1e3
    result = {
        "fps": round(fps, 1),
        "shape": shape,
        "wall_fps": round(wall_fps, 1),
        "machine": describe_machine().as_dict(),
        "ms_p50": round(float(np.percentile(ms, 50)), 2),
        "ms_p99": round(float(np.percentile(ms, 99)), 2),
        "frames": frames,
        "screen_fps": round(screen_fps, 1),
        "still_samples_per_s": round(still_rate, 1),
        "setup_s": round(setup_s, 2),
        "pinned": pinned,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"phantom on one core ({pinned}), {shape[1]}x{shape[0]}; rates per CPU-second of that core")
        print(
            f"  sequence frames      {result['fps']:8.1f} fps"
            f"   p50 {result['ms_p50']} ms  p99 {result['ms_p99']} ms"
        )
        print(f"  sequence (wall)      {result['wall_fps']:8.1f} fps")
        print(f"  sequence + screen    {result['screen_fps']:8.1f} fps")
        print(
            f"  still samples        {result['still_samples_per_s']:8.1f} /s"
            "   (fresh tissue, lesion and speckle each)"
        )
        print(
            f"  target               {60:8.1f} fps   (twice a 30 fps live demo); setup {result['setup_s']} s"
        )
        print(describe_machine().line())
    return 0
