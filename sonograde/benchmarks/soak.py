"""A long run of the whole live pipeline: does it keep its frame rate, its latency and its memory?

The phantom scanner at 30 fps goes through the full pipeline (ROI-CNN, refinement, G-CNN, smoothing,
publishing with frames) to a real subscriber in another process, for ``--minutes``. Every ``--every``
minutes a table row shows, for that interval: results per second published and received, capture ->
receipt latency p50/p99 in the subscriber, the pipeline process's resident memory (RSS), dropped frames,
errors and the load average. The run ends with the RSS growth from the start of the measured window (after
``--warmup`` seconds of running) to the end, in MB and in %, and the trend of RSS over time (a least-squares
slope in MB per hour over samples taken every ``--sample-s`` seconds). The machine (CPU model, ISA
features, cores) and the load average are printed with the numbers: on a shared or loaded machine fps and
latency say more about the load than about the pipeline; RSS growth does not depend on it.

RSS is read from /proc (Linux). The last line is one JSON object with everything.

Examples:
  sonograde bench soak --minutes 60                    # the release check: RSS growth must stay < 1 %
  sonograde bench soak --minutes 5 --every 1 --json-out soak.json
  sonograde bench soak --minutes 10 --curve DIR        # the same over CURVE (keys from `sonograde keys`)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

GROWTH_LIMIT_PCT = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0,
                        help="measured duration in minutes (default 60)")
    parser.add_argument("--every", type=float, default=5.0, metavar="MIN",
                        help="print a table row every MIN minutes (default 5)")
    parser.add_argument("--warmup", type=float, default=60.0, metavar="S",
                        help="seconds of running before the measured window opens and the start RSS is "
                             "taken (default 60: allocators and caches settle)")
    parser.add_argument("--sample-s", type=float, default=10.0, metavar="S",
                        help="RSS sample period for the trend (default 10 s)")
    parser.add_argument("--fps", type=float, default=30.0, help="phantom frame rate (default 30)")
    parser.add_argument("--models", metavar="DIR", default=None, help="models folder (default: shipped)")
    parser.add_argument("--precision", choices=("auto", "fp32", "int8", "fp16"), default="auto",
                        help="auto = int8 where present, else fp32 (default)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    parser.add_argument("--curve", metavar="DIR", default=None,
                        help="encrypt and authenticate the stream with the keys in DIR (`sonograde keys`)")
    parser.add_argument("--json-out", metavar="FILE.json", type=Path, default=None,
                        help="also write the final JSON (rows and RSS samples included) to this file")


# ---------------------------------------------------------------------------------------------- memory


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of process ``pid`` (default: this one) in MB (10^6 bytes), from /proc."""
    with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("VmRSS not found in /proc/PID/status")


# ----------------------------------------------------------------------------------- subscriber process


def subscriber_process(endpoint: str, curve: str | None, ready, control, replies) -> None:  # pragma: no cover
    """Receive results; on "report" reply with this interval's count and latency percentiles (and start
    a new interval); on "stop" reply once more and end."""
    import queue

    import numpy as np

    from sonograde.subscriber import Subscriber

    latencies: list[float] = []
    received = 0
    with Subscriber(endpoint, rcvhwm=1000, curve=curve) as subscriber:
        ready.set()
        while True:
            try:
                command = control.get_nowait()
            except queue.Empty:
                command = None
            if command is not None:
                values = np.asarray(latencies, dtype=np.float64)
                replies.put({
                    "received": len(latencies),
                    "received_total": received,
                    "p50": round(float(np.percentile(values, 50)), 2) if len(values) else None,
                    "p99": round(float(np.percentile(values, 99)), 2) if len(values) else None,
                    "invalid": dict(subscriber.invalid),
                    "rss_mb": round(rss_mb(), 1),
                })
                latencies = []
                if command == "stop":
                    return
            message = subscriber.recv(50)
            if message is None or message.kind != "result":
                continue
            received += 1
            latencies.append(message.latency_ms)


# ------------------------------------------------------------------------------------------ measurement


def _slope_mb_per_h(samples: list[tuple[float, float]]) -> float | None:
    import numpy as np

    if len(samples) < 3:
        return None
    t = np.asarray([s[0] for s in samples]) / 3600.0
    rss = np.asarray([s[1] for s in samples])
    return round(float(np.polyfit(t, rss, 1)[0]), 3)


def soak(args: argparse.Namespace, out=sys.stdout) -> dict:
    """Run the soak; print the table to ``out`` as it goes; return the summary."""
    import multiprocessing as mp

    from tqdm import tqdm

    from engine.machine import describe_machine
    from sonograde.pipeline import (
        Pipeline,
        PipelineConfig,
        load_grader,
        resolve_precision,
        source_opener,
        warm_up_grader,
    )
    from sonograde.publisher import Publisher, PublisherConfig

    config = PipelineConfig(source="phantom", source_fps=args.fps, models_dir=args.models,
                            precision=args.precision, backend=args.backend, threads=args.threads,
                            publish=None, curve=args.curve)
    precision = resolve_precision(args.models, args.precision, args.backend)
    grader = load_grader(config)
    warm_up_grader(grader)
    opener = source_opener(config)
    publisher = Publisher(PublisherConfig(endpoint="tcp://127.0.0.1:*", curve=args.curve))
    ctx = mp.get_context("spawn")
    ready, control, replies = ctx.Event(), ctx.Queue(), ctx.Queue()
    child = ctx.Process(target=subscriber_process,
                        args=(publisher.endpoint, args.curve, ready, control, replies), daemon=True)
    child.start()
    info = describe_machine()
    print(f"sonograde bench soak: phantom {args.fps:g} fps -> pipeline ({precision}) -> ZeroMQ"
          f"{' (CURVE)' if args.curve else ''} -> subscriber process, {args.minutes:g} min after "
          f"{args.warmup:g} s warm-up", file=out)
    print(info.line(), file=out)
    rows: list[dict] = []
    samples: list[tuple[float, float]] = []
    pipeline = None
    try:
        if not ready.wait(120) or not publisher.wait_for_subscriber(30):
            raise RuntimeError("the subscriber process did not connect")
        pipeline = Pipeline(grader, opener, config, publisher=publisher,
                            stream_name=getattr(opener, "stream_name", None))
        pipeline.start(warm_up=False)
        time.sleep(max(0.0, args.warmup))
        control.put("report")  # close the warm-up interval in the subscriber
        replies.get(timeout=30)
        t0 = time.monotonic()
        rss_start = rss_mb()
        samples.append((0.0, rss_start))
        previous = pipeline.stats()
        previous_t = t0
        header = (f"{'min':>6} {'fps pub':>8} {'fps recv':>8} {'e2e p50':>8} {'e2e p99':>8} {'RSS MB':>8} "
                  f"{'dropped':>8} {'errors':>6} {'load 1m':>7}")
        print(header, file=out, flush=True)
        total_s, every_s = args.minutes * 60.0, args.every * 60.0
        next_row, next_sample = t0 + every_s, t0 + args.sample_s
        with tqdm(total=int(total_s), unit="s", desc="bench soak", file=sys.stderr, disable=None,
                  leave=False) as bar:
            while (now := time.monotonic()) < t0 + total_s:
                time.sleep(max(0.0, min(1.0, next_sample - now, next_row - now, t0 + total_s - now)))
                now = time.monotonic()
                bar.n = int(min(now - t0, total_s))
                bar.refresh()
                if now >= next_sample:
                    samples.append((now - t0, rss_mb()))
                    next_sample += args.sample_s
                if now >= next_row or now >= t0 + total_s:
                    next_row += every_s
                    row = _row(pipeline, previous, previous_t, now, t0, control, replies)
                    previous, previous_t = pipeline.stats(), now
                    rows.append(row)
                    tqdm.write(_format_row(row), file=out)
                    out.flush()
        rss_end = rss_mb()
        samples.append((time.monotonic() - t0, rss_end))
        final = pipeline.stats()
    finally:
        if pipeline is not None:
            pipeline.stop()
        try:
            control.put("stop")
            subscriber_final = replies.get(timeout=10)
        except Exception:  # the child may be gone already; the summary says so
            subscriber_final = {}
        child.join(10)
        if child.is_alive():
            child.terminate()
        publisher.close()
    growth_mb = rss_end - rss_start
    measured = [r for r in rows if r["fps_published"] is not None]
    summary = {
        "minutes": args.minutes,
        "warmup_s": args.warmup,
        "source": pipeline.stream_name if pipeline is not None else "phantom",
        "precision": precision,
        "curve": bool(args.curve),
        "machine": info.as_dict(),
        "load_avg_end": [round(v, 2) for v in os.getloadavg()],
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss_end, 1),
        "rss_growth_mb": round(growth_mb, 2),
        "rss_growth_pct": round(100.0 * growth_mb / rss_start, 3),
        "rss_max_mb": round(max(s[1] for s in samples), 1),
        "rss_slope_mb_per_h": _slope_mb_per_h(samples),
        "fps_published_mean": round(sum(r["fps_published"] for r in measured) / max(1, len(measured)), 2),
        "e2e_p99_ms_worst_interval": max((r["e2e_p99_ms"] for r in measured if r["e2e_p99_ms"] is not None),
                                         default=None),
        "published": final.published,
        "received": subscriber_final.get("received_total"),
        "dropped": final.dropped,
        "errors": final.errors,
        "stale_graded": final.stale_graded,
        "invalid_messages": subscriber_final.get("invalid"),
        "subscriber_rss_mb": subscriber_final.get("rss_mb"),
        "rows": rows,
        "rss_samples": [[round(t, 1), round(r, 2)] for t, r in samples],
    }
    verdict = "PASS" if summary["rss_growth_pct"] < GROWTH_LIMIT_PCT else "FAIL"
    print(f"RSS {summary['rss_start_mb']} -> {summary['rss_end_mb']} MB: growth "
          f"{summary['rss_growth_mb']} MB ({summary['rss_growth_pct']} %), trend "
          f"{summary['rss_slope_mb_per_h']} MB/h, max "
          f"{summary['rss_max_mb']} MB  [{verdict} growth < {GROWTH_LIMIT_PCT:g} %]", file=out)
    print(f"{summary['published']} results published, {summary['received']} received, mean "
          f"{summary['fps_published_mean']} fps, worst interval e2e p99 "
          f"{summary['e2e_p99_ms_worst_interval']} ms, errors {summary['errors']}, stale "
          f"{summary['stale_graded']}", file=out)
    print(describe_machine().line() + " (at the end)", file=out)
    return summary


def _row(pipeline, previous, previous_t: float, now: float, t0: float, control, replies) -> dict:
    stats = pipeline.stats()
    control.put("report")
    try:
        reply = replies.get(timeout=30)
    except Exception:
        reply = {"received": 0, "p50": None, "p99": None}
    interval = max(now - previous_t, 1e-9)
    return {
        "minute": round((now - t0) / 60.0, 2),
        "fps_published": round((stats.published - previous.published) / interval, 2),
        "fps_received": round(reply["received"] / interval, 2),
        "e2e_p50_ms": reply["p50"],
        "e2e_p99_ms": reply["p99"],
        "rss_mb": round(rss_mb(), 1),
        "dropped": stats.dropped["total"] - previous.dropped["total"],
        "errors": stats.errors - previous.errors,
        "load_1m": round(os.getloadavg()[0], 2),
    }


def _format_row(row: dict) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return (f"{row['minute']:6.1f} {row['fps_published']:8.1f} {row['fps_received']:8.1f} "
            f"{ms(row['e2e_p50_ms']):>8} {ms(row['e2e_p99_ms']):>8} {row['rss_mb']:8.1f} {row['dropped']:8d} "
            f"{row['errors']:6d} {row['load_1m']:7.2f}")


def run(args: argparse.Namespace) -> int:
    from engine.backends import ModelLoadError

    for name in ("minutes", "every", "sample_s"):
        if getattr(args, name) <= 0:
            print(f"sonograde bench soak: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    if not Path("/proc/self/status").exists():
        print("sonograde bench soak: needs Linux (/proc) to read the process's memory", file=sys.stderr)
        return 2
    try:
        summary = soak(args)
    except ModelLoadError as error:
        print(f"sonograde bench soak: cannot load the models: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # keys that cannot be read, a bad option value
        print(f"sonograde bench soak: {error}", file=sys.stderr)
        return 2
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    compact = {k: v for k, v in summary.items() if k not in ("rows", "rss_samples")}
    print(json.dumps(compact))
    return 0 if summary["rss_growth_pct"] < GROWTH_LIMIT_PCT else 1
