"""Measure a scanner's screen: where the ultrasound image is, and how many mm one pixel spans.

Finds the image rectangle on a captured screen (a screenshot, or a frame from the capture card) and
reads mm per pixel off the depth ruler's tick marks beside it (long ticks = whole centimetres), or
computes it from the imaging depth shown on the scanner (--depth-mm: the image's height in mm). Writes
the geometry profile that capture sources apply (crop + pixel size) and that `sonograde run --geometry`
uses, so the overlay can show lesion sizes in mm. Check the printed rectangle and depth against the
scanner's screen before relying on it. The captured frame itself is not saved.

Examples:
  sonograde screen measure --frame screen.png --out geometry.json
  sonograde screen measure --source 0 --frames 5 --out geometry.json        # capture card 0
  sonograde screen measure --source phantom:screen=1,layout=2,depth=45 --out /tmp/g.json --json
  sonograde screen measure --frame screen.png --depth-mm 40 --out geometry.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sonograde.commands.calibrate_common import fail


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--frame", type=Path, help="a captured scanner screen (image file)")
    where.add_argument("--source",
                       help="a frame source: capture device index, video, DICOM, phantom:screen=1")
    parser.add_argument("--frames", type=int, default=5,
                        help="with --source: per-pixel median of this many frames (steadier UI, default 5)")
    parser.add_argument("--depth-mm", type=float, default=None,
                        help="imaging depth in mm as the scanner shows it (the image's height); "
                             "overrides the ruler")
    parser.add_argument("--tick-mm", type=float, default=None,
                        help="ruler tick interval in mm, if the ruler has ticks of one length only "
                             "(default 10)")
    parser.add_argument("--tolerance", type=int, default=2,
                        help="grey levels within which a pixel counts as background (default 2; more "
                             "for noisy analogue captures)")
    parser.add_argument("--out", type=Path, required=True, help="geometry profile to write (JSON)")
    parser.add_argument("--json", action="store_true", help="print the measurement as one JSON object")


def _screen_from_source(spec: str, count: int):
    import numpy as np

    from capture.sources import open_source

    source = open_source(spec, realtime=False)
    try:
        frames = []
        for frame in source:
            frames.append(frame.image)
            if len(frames) >= max(1, count):
                break
    finally:
        source.close()
    if not frames:
        raise ValueError(f"source {spec!r} delivered no frames")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"source {spec!r} changed frame size while reading ({sorted(shapes)})")
    return np.median(np.stack(frames), axis=0).astype(np.uint8)


def run(args: argparse.Namespace) -> int:
    from capture.geometry import GeometryProfile
    from capture.screen_measure import GeometryMeasurementError, measure_geometry
    from engine.data.manifest import ManifestError, load_gray

    try:
        if args.frame is not None:
            screen = load_gray(args.frame)
            described = f"screen {args.frame.name}"
        else:
            screen = _screen_from_source(args.source, args.frames)
            described = f"source {args.source}"
        result = measure_geometry(screen, depth_mm=args.depth_mm, tick_mm=args.tick_mm,
                                  tolerance=args.tolerance)
    except (ValueError, ManifestError, GeometryMeasurementError) as exc:
        return fail(str(exc))
    how = {"ruler": "depth ruler", "depth": f"given depth {args.depth_mm} mm",
           "none": "no scale"}[result.method]
    profile = GeometryProfile(result.image_rect, result.mm_per_pixel, f"{described}, {how}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    profile.save(args.out)
    summary = {"out": str(args.out), **result.as_dict()}
    if args.json:
        print(json.dumps(summary))
    else:
        x, y, w, h = result.image_rect
        print(f"image rectangle: x={x} y={y} w={w} h={h} (screen {screen.shape[1]}x{screen.shape[0]})")
        if result.mm_per_pixel is not None:
            print(f"mm per pixel:    {result.mm_per_pixel:.5f} ({how}); image depth {result.depth_mm:.1f} mm")
        if result.ruler is not None:
            r = result.ruler
            print(f"ruler:           {len(r.rows)} ticks on the {r.side}, every {r.tick_mm:g} mm = "
                  f"{r.spacing_px:.2f} px (fit residual {r.residual_px:.2f} px)")
        print(f"wrote {args.out}")
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
