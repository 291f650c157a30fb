"""End-to-end latency and throughput: source -> pipeline -> ZeroMQ -> a subscriber in another process.

The subscriber runs in a separate process (multiprocessing, spawn) and stamps every result on receipt
with CLOCK_MONOTONIC, the clock the capture stamps frames with, so `e2e_ms` is capture -> receipt in
another process. Models are warmed up and the subscriber is connected before the clock starts. Prints
one JSON object:

  {"seconds", "source_fps", "fps", "frames_published", "frames_received", "dropped", "stale_graded",
   "e2e_ms": {"p50", "p95", "p99", "max"}, "stages_ms": {"<stage>": {"p50", "p99"}}, ...}

Stages (``stages_ms``, p50 and p99 per frame): queue (capture -> ROI-CNN start), locate, refine, classify,
classify_descriptors (the descriptor models' share of classify, where the grader has them and reports it),
measure (size and calipers of the explained assessment), encode, total (capture -> publish); and the
handoffs between them, wait_refine, wait_classify, wait_publish (how long a frame waited in the next
stage's one-item slot: that stage was busy, or its thread waited for a core or the GIL). Per frame, queue +
locate + the waits + refine + classify + encode (measure is part of encode) add up to total, so a p99 far
beyond its p50 shows where the time went.

``--cpu-load N`` runs N busy processes (each spinning on one core, at normal priority) beside the pipeline
for the whole run, as when the scanner's own software takes a core: the pipeline must then shed frames
(``dropped_at_source`` grows), never queue them, so latency stays bounded, and never grade a stale frame.
The report names the load setting and the machine (CPU model, ISA features, load average at the end,
the busy processes included).

Targets on a 2-core CPU with the shipped models, the phantom at 30 fps for 60 s, fastest precision: idle,
fps >= 29.5, <= 1 % of source frames dropped, e2e p99 <= 45 ms, stale_graded == 0, frames_received ==
frames_published; with ``--cpu-load 1``, fps >= 25 and e2e p99 <= 90 ms, stale_graded == 0 (no targets
for more busy processes: they only show how it degrades). With descriptor models, classify_descriptors
p50 <= 3 ms (what descriptors may add to the classify stage).

Examples:
  sonograde bench pipeline                          # phantom at 30 fps, 60 s, fastest precision
  sonograde bench pipeline --cpu-load 1             # ... with one core taken by a busy process
  sonograde bench pipeline --seconds 10 --json
  sonograde bench pipeline --precision fp32 --plot latency.png
  sonograde bench pipeline --source clip.mp4 --models my_models/
  sonograde bench pipeline --curve DIR              # the same over CURVE (keys from `sonograde keys`)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

# Per number of busy processes (--cpu-load): least fps, largest e2e p99 (ms), largest share of source
# frames dropped (%, None: not judged).
TARGETS = {0: {"fps": 29.5, "e2e_p99_ms": 45.0, "dropped_pct": 1.0},
           1: {"fps": 25.0, "e2e_p99_ms": 90.0, "dropped_pct": None}}
DESCRIPTORS_P50_MS = 3.0
STAGE_ORDER = ("queue", "locate", "wait_refine", "refine", "wait_classify", "classify",
               "classify_descriptors", "wait_publish", "measure", "encode", "total")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="measured duration (default 60)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of running before the measured window opens (default 2)")
    parser.add_argument("--source", default="phantom", help="source string (default: phantom)")
    parser.add_argument("--fps", type=float, default=30.0, help="source frame rate (default 30)")
    parser.add_argument("--models", metavar="DIR", default=None, help="models folder (default: shipped)")
    parser.add_argument("--roi-model", metavar="ONNX", default=None,
                        help="ROI-CNN file used instead of the models folder's roi_cnn[.P].onnx, e.g. "
                             "models/roi_cnn_vgg16.int8.onnx (the paper's network)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8", "fp16"), default="auto",
                        help="auto = int8 where present, else fp32 (default)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    parser.add_argument("--frame-encoding", choices=("raw", "jpeg", "none"), default="raw",
                        help="frame part of each message (default raw; none = header only)")
    parser.add_argument("--curve", metavar="DIR", default=None,
                        help="encrypt and authenticate the stream with the keys in DIR (`sonograde keys`)")
    parser.add_argument("--source-in-process", action="store_true",
                        help="render the phantom in the grabber thread instead of its own process (to "
                             "compare)")
    parser.add_argument("--cpu-load", type=int, default=0, metavar="N",
                        help="N busy processes (one spinning core each) beside the pipeline (default 0)")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--plot", metavar="FILE.png", type=Path, default=None,
                        help="latency distribution and per-stage breakdown")


# ----------------------------------------------------------------------------------- subscriber process


def subscriber_process(endpoint: str, ready, stop, results,  # pragma: no cover - other process
                       curve: str | None = None) -> None:
    """Receive results until ``stop`` carries the number published, then send back
    ``(seq, frame_index, t_capture_ns, t_publish_ns, t_receive_ns)`` rows and the invalid count."""
    import queue
    import signal

    from sonograde.subscriber import Subscriber

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle: it ends this process

    rows: list[tuple[int, int, int, int, int]] = []
    with Subscriber(endpoint, rcvhwm=100000, curve=curve) as subscriber:
        ready.set()
        expected = None
        deadline = None
        while True:
            if expected is None:
                try:
                    expected = stop.get_nowait()
                    deadline = time.monotonic() + 3.0  # whatever is in flight arrives well within this
                except queue.Empty:
                    pass
            if expected is not None and (len(rows) >= expected or time.monotonic() > deadline):
                break
            message = subscriber.recv(50)
            if message is None or message.kind != "result":
                continue
            if deadline is not None:
                deadline = time.monotonic() + 3.0  # still draining: wait for 3 s of silence
            h = message.header
            rows.append((h["seq"], h["frame_index"], h["t_capture_ns"], h["t_publish_ns"],
                         message.t_receive_ns))
        results.put({"rows": rows, "invalid": dict(subscriber.invalid)})


# ------------------------------------------------------------------------------------------ measurement


def _pcts(values, qs=(50, 95, 99)) -> dict[str, float]:
    import numpy as np

    if len(values) == 0:
        return {}
    array = np.asarray(values, dtype=np.float64)
    out = {f"p{q}": round(float(np.percentile(array, q)), 2) for q in qs}
    out["max"] = round(float(array.max()), 2)
    return out


def measure(args: argparse.Namespace, progress: bool = True) -> tuple[dict, dict]:
    """Run the benchmark; return (the JSON summary, raw samples for the plot)."""
    import multiprocessing as mp

    import numpy as np

    from engine.machine import describe_machine
    from sonograde.benchmarks.cpu_load import BusyProcesses
    from sonograde.pipeline import (
        Pipeline,
        PipelineConfig,
        load_grader,
        resolve_precision,
        source_opener,
        warm_up_grader,
    )
    from sonograde.publisher import Publisher, PublisherConfig

    send_frames = args.frame_encoding != "none"
    config = PipelineConfig(
        source=args.source, source_fps=args.fps, models_dir=args.models, roi_model=args.roi_model,
        precision=args.precision,
        backend=args.backend, threads=args.threads, publish=None, send_frames=send_frames,
        frame_encoding=args.frame_encoding if send_frames else "raw",
        source_process=not args.source_in_process,
    )
    precision = resolve_precision(args.models, args.precision, args.backend)
    grader = load_grader(config)
    warm_up_grader(grader)
    opener = source_opener(config)
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", curve=args.curve))
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=subscriber_process,
                        args=(publisher.endpoint, ready, stop, results, args.curve), daemon=True)
    child.start()
    load = BusyProcesses(args.cpu_load)
    pipeline = None
    try:
        if not ready.wait(60) or not publisher.wait_for_subscriber(10):
            raise RuntimeError("the subscriber process did not connect")
        pipeline = Pipeline(grader, opener, config, publisher=publisher,
                            description=getattr(opener, "description", args.source),
                            stream_name=getattr(opener, "stream_name", None))
        load.start()  # before the pipeline: the warm-up below also lets the busy processes settle
        pipeline.start(warm_up=False)  # warmed up above, before the clock
        # The window opens ``--warmup`` s after the first published result (thread start, first frames
        # and allocator growth are not the steady state). fps, source_fps and e2e_ms are measured in the
        # window; frames_published/frames_received cover the whole run.
        t_wait = time.monotonic()
        while pipeline.stats().published == 0:
            if time.monotonic() - t_wait > 30:
                raise RuntimeError(f"no result within 30 s; source state {pipeline.stats().source_state}")
            time.sleep(0.005)
        time.sleep(max(0.0, args.warmup))
        start = pipeline.stats()
        t0 = time.monotonic()
        t0_ns = time.monotonic_ns()
        cpu0 = time.process_time()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=int(args.seconds), unit="s", desc="bench pipeline", file=sys.stderr, leave=False)
        while (elapsed := time.monotonic() - t0) < args.seconds:
            time.sleep(min(0.25, max(0.0, args.seconds - elapsed)))
            if bar is not None:
                bar.n = int(min(elapsed, args.seconds))
                bar.set_postfix_str(pipeline.stats().status_line()[:60])
        end = pipeline.stats()
        t1 = time.monotonic()
        cpu_s = time.process_time() - cpu0
        machine = describe_machine()  # the load average of the measured window, busy processes included
        if bar is not None:
            bar.close()
        pipeline.stop()
        load.stop()
        final = pipeline.stats()
        stop.put(final.published)
        received = results.get(timeout=30)
        child.join(10)
    finally:
        if pipeline is not None:
            pipeline.stop()  # idempotent; on Ctrl-C and errors it also ends the phantom's process
        load.stop()  # also on Ctrl-C and errors: no busy process outlives the benchmark
        if child.is_alive():
            child.terminate()
        publisher.close()

    all_rows = np.asarray(received["rows"], dtype=np.int64).reshape(-1, 5)
    rows = all_rows[all_rows[:, 2] >= t0_ns]  # results captured inside the window
    e2e = (rows[:, 4] - rows[:, 2]) / 1e6
    transport = (rows[:, 4] - rows[:, 3]) / 1e6
    samples = pipeline.stage_samples(since_ns=t0_ns)
    window = t1 - t0
    frames_in = end.source_frames - start.source_frames
    dropped_at_source = end.dropped["source"] - start.dropped["source"]
    summary = {
        "seconds": round(window, 2),
        "cpu_load": args.cpu_load,
        "source_process": not args.source_in_process,
        "source_fps": round(frames_in / window, 2),
        "fps": round((end.published - start.published) / window, 2),
        "dropped_at_source": dropped_at_source,
        "dropped_at_source_pct": round(100.0 * dropped_at_source / max(frames_in, 1), 2),
        # CPU time of the pipeline process (all its threads) per result in the window: the work the
        # grading process does per frame, which a busy machine changes far less than wall-clock times.
        "process_cpu_ms_per_result": round(1e3 * cpu_s / max(end.published - start.published, 1), 2),
        "frames_published": final.published,
        "frames_received": len(all_rows),
        "dropped": final.dropped["total"],
        "stale_graded": final.stale_graded,
        "e2e_ms": _pcts(e2e),
        "stages_ms": {name: {k: v for k, v in _pcts(values, (50, 99)).items() if k != "max"}
                      for name, values in samples.items() if values},
        "publish_to_receive_ms": _pcts(transport, (50, 99)),
        "dropped_by_place": final.dropped,
        "errors": final.errors,
        "invalid_messages": received["invalid"],
        "missing_seq": int(final.published - len(set(all_rows[:, 0].tolist()))),
        "warmup_s": args.warmup,
        "e2e_ms_including_warmup": _pcts((all_rows[:, 4] - all_rows[:, 2]) / 1e6),
        "source": pipeline.description,
        "precision": precision,
        "backend": args.backend,
        "model_ids": pipeline.model_ids,
        "frame_encoding": args.frame_encoding,
        "curve": bool(args.curve),
        "machine": machine.as_dict(),
    }
    return summary, {"e2e": e2e, "stages": samples, "t_capture": rows[:, 2]}


def plot(path: Path, summary: dict, samples: dict) -> None:
    """Three panels: e2e latency histogram (with p50/p99), e2e over time, per-stage p50/p99 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    e2e = samples["e2e"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    ax.hist(e2e, bins=60, color="#4477aa")
    for key, style in (("p50", "--"), ("p99", ":")):
        value = summary["e2e_ms"][key]
        ax.axvline(value, color="k", linestyle=style, label=f"{key} {value} ms")
    target = TARGETS.get(summary.get("cpu_load", 0))
    if target is not None:
        ax.axvline(target["e2e_p99_ms"], color="#cc3311", label=f"p99 target {target['e2e_p99_ms']:.0f} ms")
    ax.set_xlabel("capture -> subscriber receipt (ms)")
    ax.set_ylabel("results")
    ax.set_title("end-to-end latency")
    ax.legend()
    ax = axes[1]
    if len(e2e):
        t = (samples["t_capture"] - samples["t_capture"][0]) / 1e9
        ax.plot(t, e2e, ".", markersize=2, color="#4477aa")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"latency over time ({summary['fps']} fps)")
    ax = axes[2]
    names = [n for n in STAGE_ORDER if n in summary["stages_ms"]]
    p50 = [summary["stages_ms"][n]["p50"] for n in names]
    p99 = [summary["stages_ms"][n]["p99"] for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, p50, 0.4, label="p50", color="#4477aa")
    ax.bar(x + 0.2, p99, 0.4, label="p99", color="#ee6677")
    ax.set_xticks(x, [n.replace("classify_", "classify\n") for n in names])
    ax.set_ylabel("ms")
    ax.set_title("per stage (total = capture -> publish)")
    ax.legend()
    load = f", {summary['cpu_load']} busy process(es)" if summary.get("cpu_load") else ""
    machine = summary.get("machine") or {}
    fig.suptitle(f"sonograde bench pipeline: {summary['source']}, {summary['precision']}, "
                 f"{summary['seconds']} s{load}; {machine.get('cpu', '')}, load average "
                 f"{(machine.get('load_avg') or ['?'])[0]}. Research use only, not for diagnosis.",
                 fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_stages(stages_ms: dict) -> str:
    """One line of per-stage p50/p99 ms in pipeline order, the descriptors' share beside classify."""
    def cell(name: str) -> str:
        return f"{stages_ms[name].get('p50', '-')}/{stages_ms[name].get('p99', '-')}"

    cells = []
    for name in STAGE_ORDER:
        if name not in stages_ms or name == "classify_descriptors":
            continue
        text = f"{name} {cell(name)}"
        if name == "classify":
            text += (f" (descriptors {cell('classify_descriptors')})" if "classify_descriptors" in stages_ms
                     else " (no descriptor models)")
        cells.append(text)
    return "stages p50/p99 ms: " + ", ".join(cells)


def checks(summary: dict) -> list[tuple[str, bool]]:
    """(label, passed) of the targets for the run's load setting (``TARGETS``) and the invariants."""
    e2e_p99 = summary["e2e_ms"].get("p99", float("inf"))
    complete = summary["frames_received"] == summary["frames_published"]
    result = [("stale_graded == 0", summary["stale_graded"] == 0),
              ("frames_received == frames_published", complete)]
    target = TARGETS.get(summary.get("cpu_load", 0))
    if target is not None:
        result.insert(0, (f"fps >= {target['fps']:g}", summary["fps"] >= target["fps"]))
        result.append((f"e2e p99 <= {target['e2e_p99_ms']:g} ms", e2e_p99 <= target["e2e_p99_ms"]))
        if target["dropped_pct"] is not None:
            result.append((f"dropped at source <= {target['dropped_pct']:g} %",
                           summary["dropped_at_source_pct"] <= target["dropped_pct"]))
    descriptors = summary["stages_ms"].get("classify_descriptors")
    if descriptors:
        result.append((f"classify_descriptors p50 <= {DESCRIPTORS_P50_MS:g} ms",
                       descriptors.get("p50", float("inf")) <= DESCRIPTORS_P50_MS))
    return result


def report_lines(summary: dict) -> list[str]:
    """The human-readable report: setting, machine, the numbers, per-stage times, the checks."""
    from engine.machine import MachineInfo

    load = summary.get("cpu_load", 0)
    setting = f"{load} busy process(es) beside the pipeline" if load else "no added load"
    e2e = summary["e2e_ms"]
    if summary["source"].startswith("phantom"):
        setting += ("; the phantom renders in its own process" if summary.get("source_process", True)
                    else "; the phantom renders in the grabber thread")
    lines = [
        f"{summary['source']}, {summary['precision']}, {summary['seconds']} s measured, {setting}",
        MachineInfo.from_dict(summary["machine"]).line() if summary.get("machine") else "machine: unknown",
        f"{summary['fps']} fps (source {summary['source_fps']} fps); dropped at source "
        f"{summary['dropped_at_source']} ({summary['dropped_at_source_pct']} %); stale graded "
        f"{summary['stale_graded']}; received {summary['frames_received']} of {summary['frames_published']} "
        f"published",
        f"e2e capture -> subscriber p50/p99 {e2e.get('p50')}/{e2e.get('p99')} ms (max {e2e.get('max')}); "
        f"pipeline process CPU {summary.get('process_cpu_ms_per_result')} ms per result",
        format_stages(summary["stages_ms"]),
    ]
    target = TARGETS.get(load)
    if target is None:
        lines.append(f"  (no fps/latency targets for --cpu-load {load}: it shows how the pipeline degrades)")
    lines += [f"  {'PASS' if ok else 'FAIL'}  {label}" for label, ok in checks(summary)]
    return lines


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError

    if args.seconds <= 0:
        print(f"sonograde bench pipeline: --seconds must be positive, got {args.seconds}", file=sys.stderr)
        return 2
    if args.cpu_load < 0:
        print(f"sonograde bench pipeline: --cpu-load must be >= 0, got {args.cpu_load}", file=sys.stderr)
        return 2
    try:
        summary, samples = measure(args, progress=not args.json)
    except ModelLoadError as error:
        print(f"sonograde bench pipeline: cannot load the models: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # bad source string, unreadable keys
        print(f"sonograde bench pipeline: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nsonograde bench pipeline: interrupted, no result (every process it started is stopped)",
              file=sys.stderr)
        return 130
    if args.plot is not None:
        plot(args.plot, summary, samples)
    if not args.json:
        for line in report_lines(summary):
            print(line, file=sys.stderr)
        if args.plot is not None:
            print(f"plot written to {args.plot}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
