"""Measure speed, side by side with what we compare against, in one run.

Examples:
  sonograde bench refine            # Numba Chan-Vese against scikit-image
  sonograde bench refine --json
  sonograde bench soak --minutes 60     # fps, latency and RSS over an hour
"""

from __future__ import annotations

import argparse

from sonograde.commands.nested import add_nested_commands

BENCHMARKS: list[tuple[str, str, str]] = [
    ("refine", "sonograde.benchmarks.refine", "Chan-Vese: ours (Numba) against scikit-image"),
    ("pipeline", "sonograde.benchmarks.pipeline", "end to end: source -> pipeline -> ZeroMQ -> subscriber"),
    ("phantom", "sonograde.benchmarks.phantom", "phantom scanner sequence frames per second on one core"),
    ("grader", "sonograde.benchmarks.grader", "two-stage grader: time per stage, per ORT thread count"),
    ("soak", "sonograde.benchmarks.soak", "long run: fps, latency and memory (RSS growth) over time"),
    ("batch", "sonograde.benchmarks.batch", "archive grading: images/s in one process, a local pool, Ray"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_nested_commands(parser, BENCHMARKS)


def run(args: argparse.Namespace) -> int:  # pragma: no cover - dispatch replaces it with the child's run
    raise SystemExit("choose a benchmark: " + ", ".join(name for name, _, _ in BENCHMARKS))
