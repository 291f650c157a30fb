"""Grade live frames in real time and publish every result over ZeroMQ.

With no options: the synthetic phantom scanner at 30 fps, the shipped models on ONNX Runtime at the
fastest precision present (INT8 where calibrated, else FP32), results on tcp://127.0.0.1:5555, and a
live status line (fps, latency p50/p99, dropped frames, current category, source state) on stderr. The
start and the end summary name the machine: CPU model, ISA features (AVX2, AVX-512, VNNI, AMX) and load
average. The phantom renders in its own process. Ctrl-C stops cleanly.

Examples:
  sonograde run                                     # phantom, shipped models, tcp://127.0.0.1:5555
  sonograde run --seconds 10                        # stop by itself after 10 s (or --frames 300)
  sonograde run --overlay                           # also open the overlay window (needs a display)
  sonograde run --overlay --record scan.mp4         # ... or record it when there is no display
  sonograde run --source /dev/video0 --geometry scanner.json    # a capture card, cropped, sizes in mm
  sonograde run --source clip.mp4 --precision fp32 --no-send-frames
  sonograde overlay                                 # in another terminal: the display
  sonograde run --curve DIR                         # encrypted; keys from `sonograde keys --out DIR`
  sonograde run --publish tcp://0.0.0.0:5555 --allow-remote --curve DIR   # displays on other machines

A display in any language can subscribe: see docs/messages.md for the message schema.

Unreadable files in an image folder or DICOM series are skipped and counted; a frame a stage fails on
(e.g. a model that gives NaN) is skipped and counted; both show in the status line, the status messages
and the final summary. Frames that cannot be graded (too small, blank, colour Doppler/elastography) are
published as "not gradeable" with the reason.

Exit status: 0 stopped as asked or the source ended; 1 the source failed for good (the reason on
stderr) or the overlay could not start; 2 bad options, models or source.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from sonograde.publisher import DEFAULT_ENDPOINT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source")
    src.add_argument("--source", default="phantom",
                     help="phantom[:seed=N,...], a device (0, /dev/video0), a video file, an image folder or "
                          "glob, or dicom:PATH (default: phantom)")
    src.add_argument("--fps", type=float, default=None,
                     help="pace file and phantom sources at this rate (default: the source's own, 30 for the "
                          "phantom)")
    src.add_argument("--geometry", metavar="PROFILE.json", default=None,
                     help="scanner geometry profile: crop to the image region and report sizes in mm")
    src.add_argument("--no-loop", dest="loop", action="store_false",
                     help="end when a file source ends (default: loop it)")
    mdl = parser.add_argument_group("models")
    mdl.add_argument("--models", metavar="DIR", default=None,
                     help="models folder (default: the shipped models/)")
    mdl.add_argument("--roi-model", metavar="ONNX", default=None,
                     help="ROI-CNN file used instead of the models folder's roi_cnn[.P].onnx, e.g. "
                          "models/roi_cnn_vgg16.int8.onnx (the paper's network)")
    mdl.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                     help="inference backend (default: auto)")
    mdl.add_argument("--precision", choices=("auto", "fp32", "int8", "fp16"), default="auto",
                     help="auto = int8 where its files exist, else fp32 (default: auto)")
    mdl.add_argument("--threads", type=int, default=None,
                     help="intra-op threads per ONNX Runtime session (default 1: stages run side by side)")
    out = parser.add_argument_group("publishing")
    out.add_argument("--publish", metavar="ENDPOINT", default=DEFAULT_ENDPOINT,
                     help=f"ZeroMQ endpoint to bind (default {DEFAULT_ENDPOINT}); 'none' to not publish")
    out.add_argument("--allow-remote", action="store_true",
                     help="allow a non-loopback publish address (results are patient data: needs --curve)")
    out.add_argument("--curve", metavar="DIR", default=None,
                     help="encrypt the stream and let in only the display keys authorized in DIR "
                          "(make them with `sonograde keys --out DIR`; see docs/security.md)")
    out.add_argument("--send-frames", action=argparse.BooleanOptionalAction, default=True,
                     help="send the frame with each result (default: yes)")
    out.add_argument("--frame-encoding", choices=("raw", "jpeg"), default="raw",
                     help="raw bytes (default, ~0.01 ms) or JPEG (~0.4 ms, 10x smaller: remote displays)")
    run = parser.add_argument_group("running")
    run.add_argument("--frames", type=int, default=None, metavar="N", help="stop after N published results")
    run.add_argument("--seconds", type=float, default=None, metavar="S", help="stop after S seconds")
    run.add_argument("--overlay", action="store_true",
                     help="also start `sonograde overlay` on the published stream (window, or --record)")
    run.add_argument("--record", metavar="FILE.mp4", type=Path, default=None,
                     help="with --overlay: record the overlay to this file")
    run.add_argument("--quiet", action="store_true", help="no live status line")


def _error(message: str) -> int:
    print(f"sonograde run: {message}", file=sys.stderr)
    return 2


def overlay_command(endpoint: str, record: Path | None,
                    curve: str | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that start `sonograde overlay` in a child Python.

    The child must import this very sonograde, whatever the working folder holds: ``-P`` keeps the
    working folder off its ``sys.path`` (a folder there named like a package, such as a checkout's parent
    folder holding ``sonograde/``, would otherwise shadow the install), and PYTHONPATH starts with the
    folder this package was imported from.
    """
    import os

    import sonograde

    root = str(Path(sonograde.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, "-P", "-m", "sonograde.cli", "overlay", "--connect", endpoint]
    if curve is not None:
        command += ["--curve", str(Path(curve).resolve())]
    if record is not None:
        command += ["--record", str(record.resolve())]
    return command, env


def start_with_ctrl_c(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``command`` so that SIGINT (Ctrl-C, and how `run` stops the overlay) stops it, even when this
    process ignores SIGINT (started in the background or under nohup): an ignored signal is inherited,
    a handler is not, so SIGINT gets Python's handler for the moment the child starts. Main thread only."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(command, env=env)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_overlay(endpoint: str, record: Path | None, curve: str | None) -> subprocess.Popen:
    command, env = overlay_command(endpoint, record, curve)
    return start_with_ctrl_c(command, env)


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError
    from engine.machine import machine_line
    from sonograde import RESEARCH_USE_ONLY
    from sonograde.curve import CurveKeyError
    from sonograde.overlay import display_available
    from sonograde.pipeline import PipelineConfig, build_pipeline
    from sonograde.publisher import EndpointError, check_endpoint

    publish = None if str(args.publish).lower() == "none" else args.publish
    if args.frames is not None and args.frames <= 0:
        return _error(f"--frames must be positive, got {args.frames}")
    if args.seconds is not None and args.seconds <= 0:
        return _error(f"--seconds must be positive, got {args.seconds}")
    if args.overlay:
        if publish is None:
            return _error("--overlay needs publishing (drop --publish none)")
        has_display, why = display_available()
        if not has_display and args.record is None:
            return _error(f"--overlay: {why}; pass --record FILE.mp4 to record the overlay instead")
    if args.geometry and not Path(args.geometry).is_file():
        return _error(f"geometry profile not found: {args.geometry} "
                      "(make one with `sonograde screen measure`)")
    try:
        if publish is not None:
            check_endpoint(publish, args.allow_remote, args.curve)
    except EndpointError as error:
        return _error(str(error))
    if args.curve is not None:
        if publish is None:
            return _error("--curve encrypts the published stream; drop --publish none")
        from sonograde.curve import load_client_keys, load_server_keys

        try:  # check the keys now, before the models load
            load_server_keys(args.curve)
            if args.overlay:
                load_client_keys(args.curve)
        except CurveKeyError as error:
            return _error(str(error))

    config = PipelineConfig(
        source=args.source, source_fps=args.fps, loop=args.loop, geometry=args.geometry,
        models_dir=args.models, roi_model=args.roi_model, precision=args.precision, backend=args.backend,
        threads=args.threads, publish=publish, allow_remote=args.allow_remote, curve=args.curve,
        send_frames=args.send_frames, frame_encoding=args.frame_encoding,
    )
    print(RESEARCH_USE_ONLY, file=sys.stderr)
    try:
        pipeline = build_pipeline(config)
    except ModelLoadError as error:
        return _error(f"cannot load the models: {error}")
    except ValueError as error:  # capture.sources.SourceError, GeometryError, bad model contracts
        return _error(str(error))
    except OSError as error:
        return _error(f"cannot open {args.source!r}: {error}")
    print(f"source {pipeline.description}; models {pipeline.model_ids}; warming up...", file=sys.stderr)
    print(machine_line(), file=sys.stderr)  # what the speeds below were measured on, and how busy it is
    try:
        pipeline.start(warm_up=True)
    except (EndpointError, CurveKeyError) as error:
        return _error(str(error))
    except ValueError as error:  # engine.grader.ModelOutputError: a model's output has the wrong shape
        pipeline.stop()
        return _error(f"the models do not fit: {error}")
    endpoint = pipeline.publisher.endpoint if pipeline.publisher is not None else None
    if endpoint:
        security = ("CURVE-encrypted, authorized displays only" if pipeline.publisher.encrypted
                    else "unencrypted, this machine only")
        print(f"publishing on {endpoint} ({security}; Ctrl-C stops)", file=sys.stderr)

    overlay = _start_overlay(endpoint, args.record, args.curve) if args.overlay and endpoint else None
    stop_requested = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    previous = signal.signal(signal.SIGTERM, on_term)
    tty = sys.stderr.isatty() and not args.quiet
    started = time.monotonic()
    last_line = 0.0
    interrupted = False
    source_failure: str | None = None
    overlay_failure: str | None = None
    try:
        while not stop_requested:
            time.sleep(0.1)
            stats = pipeline.stats()
            now = time.monotonic()
            if not args.quiet and now - last_line >= (0.5 if tty else 5.0):
                last_line = now
                line = stats.status_line()
                if tty:
                    print("\r" + line + "\x1b[K", end="", file=sys.stderr, flush=True)
                else:
                    print(line, file=sys.stderr, flush=True)
            if args.frames is not None and stats.published >= args.frames:
                break
            if args.seconds is not None and now - started >= args.seconds:
                break
            if stats.source_state == "ended":
                source_failure = stats.last_error  # None when a file source simply ended
                break
            if overlay is not None and overlay.poll() is not None:
                if overlay.returncode != 0:
                    overlay_failure = f"the overlay stopped with exit status {overlay.returncode}"
                detail = f" ({overlay_failure})" if overlay_failure else ""
                print(f"\noverlay closed{detail}", file=sys.stderr)
                overlay = None
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tty:
            print(file=sys.stderr)
        pipeline.stop()
        if overlay is not None:
            overlay.send_signal(signal.SIGINT)
            try:
                overlay.wait(5)
            except subprocess.TimeoutExpired:
                overlay.kill()
            if overlay.returncode not in (0, None) and overlay_failure is None:
                overlay_failure = f"the overlay stopped with exit status {overlay.returncode}"
    stats = pipeline.stats()
    p50, p99 = stats.latency_ms.get("p50", float("nan")), stats.latency_ms.get("p99", float("nan"))
    print(f"stopped{' (Ctrl-C)' if interrupted else ''}: {stats.published} results in "
          f"{stats.elapsed_s:.1f} s, {stats.fps:.1f} fps at the end, latency capture->publish p50/p99 "
          f"{p50:.1f}/{p99:.1f} ms, "
          f"dropped {stats.dropped['total']}, stale graded {stats.stale_graded}, errors {stats.errors}, "
          f"not gradeable {stats.not_gradeable}, skipped files {stats.error_counts['source_skipped']}",
          file=sys.stderr)
    print(machine_line(), file=sys.stderr)
    if stats.errors:
        by_stage = ", ".join(f"{stage} {n}" for stage, n in stats.error_counts.items()
                             if stage not in ("total", "source_skipped") and n)
        print(f"errors by stage: {by_stage}; last: {stats.pipeline_error}", file=sys.stderr)
    if source_failure:
        print(f"sonograde run: the source failed: {source_failure}", file=sys.stderr)
        return 1
    if overlay_failure:
        print(f"sonograde run: {overlay_failure}; nothing more was shown or recorded", file=sys.stderr)
        return 1
    return 0  # Ctrl-C is the normal way to stop a live run
