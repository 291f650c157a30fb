"""Show the published results over the live image: ROI-CNN contour (blue), refined contour (red), the
width and height calipers (green, with their lengths), the smoothed BI-RADS category with the five
probabilities, the explained assessment (malignancy probability, lexicon descriptors with their
probabilities, size in mm or px, the drivers of the category), latency and frame rate. Results of an
older publisher (message schema 1) are shown without the assessment; a newer one is skipped with a
message saying to upgrade.

Subscribes to a `sonograde run` publisher. Opens a window where there is a display (q or Esc closes
it); without one it records (--record) or writes a snapshot (--snapshot) and says so. Frames are
written to disk only when you ask for it. Messages it cannot draw (malformed, NaN, a newer schema) are
skipped and counted, a picture that fails to render is skipped and counted, and when the publisher goes
quiet for 3 s (no heartbeat) the picture dims and says NO SIGNAL; the counts are printed at the end.

Examples:
  sonograde overlay                                  # window, tcp://127.0.0.1:5555
  sonograde overlay --record scan.mp4 --seconds 30   # record 30 s of the overlay
  sonograde overlay --snapshot overlay.png --frames 60   # a picture of the 60th result
  sonograde overlay --curve DIR                      # an encrypted stream (`sonograde run --curve DIR`)
  sonograde overlay --connect tcp://10.0.0.5:5555 --curve DIR   # another machine (see docs/security.md)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from sonograde.publisher import DEFAULT_ENDPOINT
from sonograde.subscriber import DEFAULT_MAX_MESSAGE_BYTES

NO_SIGNAL_AFTER_S = 3.0  # the publisher sends a heartbeat about once a second: three missed ones


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect", metavar="ENDPOINT", default=DEFAULT_ENDPOINT,
                        help=f"publisher endpoint (default {DEFAULT_ENDPOINT})")
    parser.add_argument("--curve", metavar="DIR", default=None,
                        help="decrypt with the display keys in DIR (client.key_secret, server.key), for a "
                             "publisher started with --curve")
    default_mb = DEFAULT_MAX_MESSAGE_BYTES / 1e6
    parser.add_argument("--max-message-mb", type=float, default=default_mb, metavar="MB",
                        help="refuse larger message parts, and frames of more pixels than that, before "
                             f"decoding them (default {default_mb:g}: a 4096 x 4096 frame and its header)")
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

    from sonograde.curve import CurveKeyError, load_client_keys
    from sonograde.publisher import EndpointError, check_endpoint, is_loopback_endpoint

    curve = getattr(args, "curve", None)  # programmatic callers may build args without the new options
    max_message_mb = getattr(args, "max_message_mb", DEFAULT_MAX_MESSAGE_BYTES / 1e6)
    if curve is None and not is_loopback_endpoint(args.connect):
        print(f"sonograde overlay: {args.connect} is another machine; a publisher there streams only with "
              "CURVE: pass --curve DIR with the display keys (`sonograde keys`, docs/security.md)",
              file=sys.stderr)
        return 2
    try:  # a malformed endpoint is a one-line error, not a ZMQError traceback from connect
        check_endpoint(args.connect, allow_remote=curve is not None, curve=curve)
    except EndpointError as error:
        print(f"sonograde overlay: {error}", file=sys.stderr)
        return 2
    if curve is not None:
        try:
            load_client_keys(curve)
        except CurveKeyError as error:
            print(f"sonograde overlay: {error}", file=sys.stderr)
            return 2
    max_bytes = int(max_message_mb * 1e6)
    if max_bytes < 4096:
        print(f"sonograde overlay: --max-message-mb must be at least 0.004, got {max_message_mb}",
              file=sys.stderr)
        return 2

    renderer = OverlayRenderer()
    meter = RateMeter()
    result: Message | None = None
    status: Message | None = None
    results = 0
    render_failures = 0
    last_render_error = ""
    invalid: Mapping[str, int] = {}
    started = time.monotonic()
    last_message = None
    print(f"sonograde overlay: listening on {args.connect}{' (CURVE)' if curve else ''}",
          file=sys.stderr)
    try:
        with Subscriber(args.connect, curve=curve, max_message_bytes=max_bytes,
                        max_frame_pixels=max_bytes) as subscriber:
            invalid = subscriber.invalid  # counted by kind as messages are skipped
            while not sink.quit_requested:
                if args.seconds is not None and time.monotonic() - started >= args.seconds:
                    break
                messages = subscriber.recv_latest(timeout_ms=250)
                now = time.monotonic()
                if messages:
                    last_message = now
                silent_s = None if last_message is None else now - last_message
                no_signal_s = silent_s if silent_s is not None and silent_s >= NO_SIGNAL_AFTER_S else None
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
                if fresh or messages or sink.window or no_signal_s is not None:
                    try:
                        picture = renderer.render(result, status, meter.fps, no_signal_s)
                    except Exception as error:  # one picture that cannot be drawn must not end the display
                        render_failures += 1
                        last_render_error = f"{type(error).__name__}: {str(error)[:120]}"
                        result = status = None  # draw the next messages afresh, not fail on these again
                    else:
                        sink.show(picture)
                if args.frames is not None and results >= args.frames:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        written = sink.close()
    if invalid:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(invalid.items()))
        print(f"skipped {sum(invalid.values())} message(s) that could not be drawn ({kinds})",
              file=sys.stderr)
    if render_failures:
        print(f"skipped {render_failures} picture(s) that failed to render (last: {last_render_error})",
              file=sys.stderr)
    if args.record is not None:
        print(f"recorded {sink.frames_written} pictures to {args.record}", file=sys.stderr)
    if written is not None:
        print(f"snapshot written to {written}", file=sys.stderr)
    elif args.snapshot is not None:
        print("no snapshot: nothing was received (is `sonograde run` publishing on "
              f"{args.connect}?)", file=sys.stderr)
        return 1
    return 0
