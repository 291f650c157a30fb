"""DICOM services: `serve` runs Sonograde as a DICOM node next to a scanner and a PACS.

Examples:
  sonograde dicom serve --out DIR                                 # 127.0.0.1:11112, AE title SONOGRADE
  sonograde dicom serve --out DIR --forward PACS@127.0.0.1:4242   # results also sent to the PACS
  sonograde dicom serve --out DIR --port 0                        # any free port (printed on start)

Needs the dicom extra: pip install 'sonograde[dicom]'. See docs/dicom.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

from sonograde import RESEARCH_USE_ONLY

SERVE_HELP = "Storage SCP: grade received ultrasound images, SR + SEG back"
SERVE_DESCRIPTION = """\
Run Sonograde as a DICOM node: a Storage SCP that grades the ultrasound images it receives.

It answers C-ECHO and accepts Ultrasound Image Storage, Ultrasound Multi-frame Image Storage and
Secondary Capture (modality US or OT). Each received image (a multi-frame: up to --max-frames frames
spread over the clip, the report about the one with the largest lesion) is graded and gets, in
DIR/results/: a Comprehensive 3D SR measurement report (TID 1500: lesion width, height, longest
diameter in mm, BI-RADS category, descriptors, malignancy probability, model ids, research statement),
a Segmentation of the refined lesion (when one is found), with --overlay a Secondary Capture of the
overlay, and a JSON summary. Patient and study identity are copied from the image; logs carry none.

Refused, with a status and a log line, never a crash: other SOP classes (0x0122), other modalities
(0xC101), objects whose pixel data cannot be decoded (0xC102); presentation contexts proposing only
transfer syntaxes no decoder here reads are rejected at association (result 0x04).

With --forward the SR, SEG (and SC) go to the PACS by C-STORE from a queue in DIR/outbox/: a slow or
dead PACS never holds up receiving; undelivered objects are retried (pause growing to a minute) and
kept across restarts. Images received but not yet graded wait in DIR/incoming/ and are graded on the
next start; images that cannot be graded are kept in DIR/failed/.

The node listens on 127.0.0.1 unless --host says otherwise. DICOM here is unencrypted: to serve
another machine, put it behind a TLS tunnel or a VPN, never on an open network.

Examples:
  sonograde dicom serve --out DIR
  sonograde dicom serve --out DIR --forward PACS@127.0.0.1:4242 --overlay
  sonograde dicom serve --out DIR --port 0 --ae-title SGNODE --precision int8
  python -m pynetdicom echoscu 127.0.0.1 11112 -aec SONOGRADE             # check it
  python -m pynetdicom storescu 127.0.0.1 11112 -aec SONOGRADE scan.dcm   # send it an image

Stop with Ctrl-C (prints the counts). Exit status: 0 after a clean stop; 2 bad options or models.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="subcommand", metavar="WHAT", required=True)
    serve = sub.add_parser("serve", help=SERVE_HELP, description=SERVE_DESCRIPTION.strip(),
                           epilog=RESEARCH_USE_ONLY, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(serve)
    serve.set_defaults(_run=run_serve)


def run(args: argparse.Namespace) -> int:  # pragma: no cover - dispatch replaces it with run_serve
    raise SystemExit("choose: serve")




def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="results folder (incoming/, results/, outbox/, failed/ are made in it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11112, metavar="PORT",
                        help="port to listen on (default 11112; 0: any free port, printed on start)")
    parser.add_argument("--ae-title", default="SONOGRADE", metavar="AE",
                        help="this node's AE title (default SONOGRADE)")
    parser.add_argument("--forward", default=None, metavar="AE@HOST:PORT",
                        help="send the SR, SEG (and SC) to this PACS by C-STORE, e.g. PACS@127.0.0.1:4242")
    parser.add_argument("--overlay", action="store_true",
                        help="also write (and forward) a Secondary Capture with the overlay drawn in")
    parser.add_argument("--max-frames", type=int, default=8, metavar="N",
                        help="frames graded per multi-frame image, evenly spread (default 8)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="grading threads (default 1; the receiving threads are separate)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn[.PRECISION].onnx and g_cnn[.PRECISION].onnx "
                             "(default: the shipped models/)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="which model files to use (default fp32)")
    parser.add_argument("--retry-seconds", type=float, default=2.0, metavar="S",
                        help="first pause before re-sending to an unreachable PACS; doubles up to 60 "
                             "(default 2)")
    parser.add_argument("--verbose", action="store_true",
                        help="debug log lines (still nothing of the patient)")


def run_serve(args: argparse.Namespace) -> int:
    prog = "sonograde dicom serve"
    try:
        import pynetdicom  # noqa: F401

        import sonograde.dicom.objects  # noqa: F401 - needs highdicom
        from sonograde.dicom.node import DicomNode, ForwardTarget
    except ImportError as exc:
        print(f"{prog}: the dicom extra is not installed ({exc.name}); pip install 'sonograde[dicom]'",
              file=sys.stderr)
        return 2
    from engine.backends import ModelLoadError
    from engine.grader import TwoStageGrader

    for name, value, low in (("--port", args.port, 0), ("--max-frames", args.max_frames, 1),
                             ("--workers", args.workers, 1)):
        if value < low or (name == "--port" and value > 65535):
            print(f"{prog}: {name} {value} is out of range", file=sys.stderr)
            return 2
    if not 0 < len(args.ae_title) <= 16:
        print(f"{prog}: --ae-title must have 1 to 16 characters", file=sys.stderr)
        return 2
    try:
        forward = ForwardTarget.parse(args.forward) if args.forward else None
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    # pynetdicom's own logging can print data set contents at debug level: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        grader = TwoStageGrader.from_models_dir(args.models, precision=args.precision)
        grader.warm_up()
    except (ModelLoadError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    node = DicomNode(grader, args.out, ae_title=args.ae_title, host=args.host, port=args.port,
                     forward=forward, max_frames=args.max_frames, overlay=args.overlay, workers=args.workers,
                     retry_initial_s=args.retry_seconds)
    print(RESEARCH_USE_ONLY, file=sys.stderr)
    try:
        port = node.start()
    except OSError as exc:
        print(f"{prog}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"{prog}: listening on {args.host}:{port} as {args.ae_title} (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    stopped = threading.Event()
    try:
        import signal

        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    node.stop()
    print(f"{prog}: {node.counters.line()}", file=sys.stderr)
    return 0
