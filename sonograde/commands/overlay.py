"""Show the published results over the live image: ROI-CNN contour (blue), refined contour (red), the
width and height calipers (green, with their lengths), the smoothed BI-RADS category with the five
probabilities, the explained assessment (malignancy probability, lexicon descriptors with their
probabilities, size in mm or px, the drivers of the category), latency and frame rate. Results of an
older publisher (message schema 1) are shown without the assessment; a newer one is skipped with a
message saying to upgrade.

Subscribes to a `sonograde run` publisher. Opens a window where there is a display (q or Esc closes
it); without one it records (--record) or writes a snapshot (--snapshot) and says so. Frames are
written to disk only when you ask for it.

Examples:
  sonograde overlay                                  # window, tcp://127.0.0.1:5555
  sonograde overlay --record scan.mp4 --seconds 30   # record 30 s of the overlay
  sonograde overlay --snapshot overlay.png --frames 60   # a picture of the 60th result
  sonograde overlay --connect tcp://10.0.0.5:5555    # another machine (publisher run with --allow-remote)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sonograde.publisher import DEFAULT_ENDPOINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", metavar="ENDPOINT", default=DEFAULT_ENDPOINT,
                        help=f"publisher endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--record", metavar="FILE.mp4", type=Path, default=None,
                        help="record the overlay to an MP4 file")
    parser.add_argument("--snapshot", metavar="FILE.png", type=Path, default=None,
                        help="write the last overlay picture to a PNG when stopping")
    parser.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N results")
    parser.add_argument("--seconds", type=float, default=None, metavar="S", help="stop after S seconds")
    parser.add_argument("--no-window", dest="window", action="store_false",
                        help="never open a window (record/snapshot only)")


def run(args: argparse.Namespace) -> int:
    from sonograde.messages import Message
    from sonograde.overlay import OverlayRenderer, OverlaySink, RateMeter
    from sonograde.subscriber import Subscriber

    sink = OverlaySink(window=args.window, record=args.record, snapshot=args.snapshot)
    if not sink.window:
        if args.record is None and args.snapshot is None:
            reason = sink.window_note or "--no-window"
            print(f"sonograde overlay: no window ({reason}); "
                  "pass --record FILE.mp4 and/or --snapshot FILE.png", file=sys.stderr)
            return 2
        if args.window:
            print(f"sonograde overlay: {sink.window_note}; recording/snapshot only", file=sys.stderr)
    if args.frames is not None and args.frames <= 0:
        print(f"sonograde overlay: --frames must be positive, got {args.frames}", file=sys.stderr)
        return 2

    renderer = OverlayRenderer()
    meter = RateMeter()
    result: Message | None = None
    status: Message | None = None
    results = 0
    started = time.monotonic()
    print(f"sonograde overlay: listening on {args.connect}", file=sys.stderr)
    try:
        with Subscriber(args.connect) as subscriber:
            while not sink.quit_requested:
                if args.seconds is not None and time.monotonic() - started >= args.seconds:
                    break
                messages = subscriber.recv_latest(timeout_ms=250)
                fresh = False
                for message in messages:
                    if message.kind == "result":
                        result, fresh = message, True
                        results += 1
                        meter.tick(message.t_receive_ns)
                    else:
                        status = message
                if not messages and result is None and status is None and not sink.window:
                    continue  # nothing to record yet
                if fresh or messages or sink.window:
                    sink.show(renderer.render(result, status, meter.fps))
                if args.frames is not None and results >= args.frames:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        written = sink.close()
    if args.record is not None:
        print(f"recorded {sink.frames_written} pictures to {args.record}", file=sys.stderr)
    if written is not None:
        print(f"snapshot written to {written}", file=sys.stderr)
    elif args.snapshot is not None:
        print("no snapshot: nothing was received (is `sonograde run` publishing on "
              f"{args.connect}?)", file=sys.stderr)
        return 1
    return 0
