"""Synthetic breast-ultrasound phantom: write a dataset, a sweep video or a contact sheet.

The phantom scanner needs no patient data: tissue layers, speckle, attenuation with TGC and lesions
drawn from the BI-RADS lexicon with category-dependent probabilities (docs/phantom.md).

Examples:
  sonograde phantom --out /tmp/phantom --count 200 --seed 1       # images/, masks/, manifest.csv
  sonograde phantom --out /tmp/phantom --count 50 --size 288 288
  sonograde phantom --video sweep.mp4 --seconds 20 --fps 30        # probe sweep over a 3-D phantom
  sonograde phantom --video screen.avi --seconds 10 --screen --layout 2   # as a capture card sees it
  sonograde phantom --contact-sheet docs/phantom-contact-sheet.png

The same arguments always give byte-identical datasets and contact sheets.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, metavar="DIR", help="write a manifest dataset here")
    parser.add_argument("--count", type=int, default=100, help="images in the dataset (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("W", "H"),
        default=None,
        help="image size in pixels (default 384 320)",
    )
    parser.add_argument(
        "--video", type=Path, metavar="FILE", help="write a sweep video (.mp4: mp4v codec, .avi: MJPG)"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="video length in seconds (default 10)")
    parser.add_argument("--fps", type=float, default=30.0, help="video frame rate (default 30)")
    parser.add_argument("--screen", action="store_true", help="render the scanner screen around the image")
    parser.add_argument(
        "--layout", default="0", help="screen layout: 0-3 or classic/wide/compact/hd (default 0)"
    )
    parser.add_argument(
        "--contact-sheet",
        type=Path,
        metavar="FILE.png",
        help="write one example per category side by side (PNG)",
    )


def _fail(message: str) -> int:
    print(f"sonograde phantom: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    import cv2
    from tqdm import tqdm

    from capture.phantom import DEFAULT_SIZE, PhantomError
    from capture.phantom_dataset import contact_sheet, write_dataset
    from capture.phantom_sequence import PhantomSequence

    if not (args.out or args.video or args.contact_sheet):
        return _fail("nothing to do: give --out DIR, --video FILE and/or --contact-sheet FILE.png")
    size = tuple(args.size) if args.size else DEFAULT_SIZE
    layout: int | str = int(args.layout) if str(args.layout).isdigit() else args.layout
    try:
        if args.screen:
            from capture.screen import get_layout

            get_layout(layout)  # a bad layout fails here, before any work
        if args.out:
            root = write_dataset(args.out, args.count, args.seed, size, progress=True)
            print(f"wrote {args.count} phantom images to {root} (manifest.csv, images/, masks/)")
        if args.video:
            if args.seconds <= 0 or args.fps <= 0:
                return _fail("--seconds and --fps must be positive")
            suffix = args.video.suffix.lower()
            codec = {".avi": "MJPG", ".mp4": "mp4v", ".m4v": "mp4v", ".mkv": "MJPG"}.get(suffix)
            if codec is None:
                return _fail(f"unsupported video extension {suffix!r}: use .mp4 or .avi")
            frames = max(1, round(args.seconds * args.fps))
            sequence = PhantomSequence(
                args.seed,
                size,
                args.fps,
                screen=args.screen,
                realtime=False,
                layout=layout,
                max_frames=frames,
            )
            writer = None
            try:
                for frame in tqdm(sequence, total=frames, desc="phantom video", unit="frame"):
                    if writer is None:
                        height, width = frame.image.shape
                        args.video.parent.mkdir(parents=True, exist_ok=True)
                        writer = cv2.VideoWriter(
                            str(args.video),
                            cv2.VideoWriter_fourcc(*codec),
                            args.fps,
                            (width, height),
                            isColor=False,
                        )
                        if not writer.isOpened():
                            return _fail(f"OpenCV cannot write {args.video} with codec {codec}")
                    writer.write(frame.image)
            finally:
                sequence.close()
                if writer is not None:
                    writer.release()
            print(f"wrote {frames} frames ({args.seconds:g} s at {args.fps:g} fps) to {args.video}")
        if args.contact_sheet:
            if args.contact_sheet.suffix.lower() != ".png":
                return _fail("--contact-sheet must name a .png file")
            args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(args.contact_sheet), contact_sheet(args.seed, size)):
                return _fail(f"could not write {args.contact_sheet}")
            print(f"wrote contact sheet to {args.contact_sheet}")
    except (PhantomError, ValueError, OSError) as error:
        return _fail(str(error))
    return 0
