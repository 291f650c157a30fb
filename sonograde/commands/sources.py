"""List the capture devices found, or try any source string and report what it delivers.

Capture devices are the /dev/video* nodes (Linux, V4L2 backend through OpenCV); each is opened briefly
to report its current resolution, frame rate and pixel format. Capture cards often expose two nodes
(video + metadata); the metadata node cannot be opened and says so.

Source strings accepted by --try and by every command that takes a source:
  phantom                      synthetic scanner sweep (phantom:seed=3,screen=1,layout=2,frames=300)
  0, /dev/video0               capture device (request --width/--height/--fps/--fourcc)
  clip.mp4                     video file
  frames/  or  'frames/*.png'  image folder or glob
  dicom:cine.dcm               DICOM file (single or multi-frame) or folder; .dcm is detected anyway

Examples:
  sonograde sources
  sonograde sources --json
  sonograde sources --try /dev/video0 --width 1920 --height 1080 --fps 30 --fourcc MJPG
  sonograde sources --try 'phantom:screen=1' --frames 30
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the device list as JSON")
    parser.add_argument(
        "--try",
        dest="try_source",
        metavar="SOURCE",
        help="open SOURCE, read a few frames and report shape, pixel size and rate",
    )
    parser.add_argument("--frames", type=int, default=10, help="frames to read with --try (default 10)")
    parser.add_argument("--width", type=int, help="requested capture width (devices)")
    parser.add_argument("--height", type=int, help="requested capture height (devices)")
    parser.add_argument("--fps", type=float, help="requested frame rate (devices) or pacing rate (files)")
    parser.add_argument("--fourcc", help="requested pixel format, e.g. MJPG or YUYV (devices)")


def _try(args: argparse.Namespace) -> int:
    from capture.sources import SourceError, open_source

    try:
        source = open_source(
            args.try_source,
            fps=args.fps,
            realtime=False,
            width=args.width,
            height=args.height,
            fourcc=args.fourcc,
        )
    except SourceError as error:
        print(f"sonograde sources: {error}", file=sys.stderr)
        return 2
    with source:
        print(f"source: {source.description}")
        count, start, first = 0, time.monotonic(), None
        try:
            for frame in source:
                first = first or frame
                count += 1
                if count >= args.frames:
                    break
        except Exception as error:  # report device failures plainly
            print(f"sonograde sources: reading failed after {count} frames: {error}", file=sys.stderr)
            return 2
        elapsed = time.monotonic() - start
    if first is None:
        print("no frames delivered")
        return 2
    pixel = f"{first.pixel_size_mm:.4f} mm" if first.pixel_size_mm else "unknown"
    print(
        f"frames read: {count} in {elapsed:.2f} s ({count / max(elapsed, 1e-9):.1f} fps); "
        f"shape {first.image.shape[1]}x{first.image.shape[0]}; pixel size {pixel}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    if args.try_source:
        return _try(args)
    from capture.sources import list_capture_devices

    devices = list_capture_devices()
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    if not devices:
        print(
            "No capture devices found (no /dev/video* nodes). Connect a capture card or webcam, check that "
            "its driver is loaded (v4l2-ctl --list-devices), or use a file, DICOM or 'phantom' as the source."
        )
        return 0
    for device in devices:
        if "error" in device:
            print(f"{device['path']}: {device['error']}")
        else:
            print(
                f"{device['path']}: {device['width']}x{device['height']} @ {device['fps']:g} fps "
                f"{device['fourcc']} ({device['backend']})"
            )
    return 0
