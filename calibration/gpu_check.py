"""The table of ``scripts/gpu-check.sh``: every step's status and the engines' gates and speeds.

The script runs each step on its own (one failed build does not end the check), records
``NAME<TAB>EXIT_STATUS`` per step in ``WORK/steps.tsv`` and keeps each step's standard output in
``WORK/NAME.out`` and its standard error in ``WORK/NAME.err``. This module reads them back:
``python -m calibration.gpu_check WORK`` prints the table and exits 0 when every step passed, 1 otherwise.

A command's JSON result is found wherever it sits in its output (log lines before or after it, a JSON
object spread over several lines as ``build-engine`` prints it): the last JSON object that parses counts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

STEPS_FILE = "steps.tsv"
RESEARCH_NOTE = "research use only, not for diagnosis"


@dataclass(frozen=True)
class Step:
    """One step of the check: its name, exit status and the last line it wrote to standard error."""

    name: str
    status: int
    last_error: str = ""

    @property
    def passed(self) -> bool:
        return self.status == 0


def last_json_object(text: str) -> dict | None:
    """The last JSON object in ``text`` that starts at the beginning of a line, or None."""
    decoder = json.JSONDecoder()
    found = None
    offset = 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith("{"):
            start = offset + len(line) - len(line.lstrip())
            try:
                value, _ = decoder.raw_decode(text, start)
            except ValueError:
                value = None
            if isinstance(value, dict):
                found = value
        offset += len(line)
    return found


def read_result(work: Path, name: str) -> dict | None:
    """The JSON result of step ``name`` (from ``WORK/NAME.out``), or None."""
    try:
        return last_json_object((work / f"{name}.out").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None


def read_steps(work: Path) -> list[Step]:
    """The steps recorded in ``WORK/steps.tsv``, in the order they ran."""
    steps = []
    try:
        lines = (work / STEPS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return steps
    for line in lines:
        name, _, status = line.partition("\t")
        if not name:
            continue
        try:
            code = int(status)
        except ValueError:
            code = -1
        try:
            errors = [x for x in (work / f"{name}.err").read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            errors = []
        steps.append(Step(name, code, errors[-1].strip()[:100] if errors else ""))
    return steps


def _number(value, width: int, digits: int = 2) -> str:
    return f"{value:>{width}.{digits}f}" if isinstance(value, int | float) else f"{'n/a':>{width}}"


def render(work: Path) -> str:
    """The whole table as text."""
    lines = [f"{'step':<24} {'status':<8} last message on stderr"]
    steps = read_steps(work)
    for step in steps:
        status = "ok" if step.passed else f"FAILED {step.status}"
        lines.append(f"{step.name:<24} {status:<8} {'' if step.passed else step.last_error}")
    if not steps:
        lines.append(f"(no steps recorded in {work / STEPS_FILE})")
    lines += ["", f"{'model':<8} {'prec':<5} {'gate':<8} {'agreement':<30} {'ORT fp32 ms':>11} {'TRT ms':>8} "
                  f"{'speedup':>8}"]
    for stem, kind in (("roi_cnn", "roi"), ("g_cnn", "grader")):
        for precision in ("fp16", "int8"):
            result = read_result(work, f"verify.{stem}.{precision}")
            if result is None:
                lines.append(f"{kind:<8} {precision:<5} {'n/a':<8} (no result: see the steps above)")
                continue
            if kind == "roi":
                agreement = (f"DSC mean {_number(result.get('dsc_agreement_mean'), 0, 4)} "
                             f"min {_number(result.get('dsc_agreement_min'), 0, 3)}")
            else:
                agreement = (f"top1 {_number(result.get('top1_agreement'), 0, 4)} "
                             f"dp {_number(result.get('max_prob_diff'), 0, 4)}")
            gate = "PASS" if result.get("passed") else "REFUSED"
            times = (f"{_number(result.get('reference_ms'), 11)} {_number(result.get('candidate_ms'), 8)} "
                     f"{_number(result.get('speedup'), 8)}")
            lines.append(f"{kind:<8} {precision:<5} {gate:<8} {agreement:<30} {times}")
    lines += ["", f"{'pipeline':<14} {'fps':>6} {'e2e p50':>8} {'e2e p99':>8} {'dropped':>8}"]
    for precision in ("fp16", "int8"):
        bench = read_result(work, f"bench.{precision}")
        if bench is None:
            lines.append(f"tensorrt {precision:<5} n/a")
            continue
        e2e = bench.get("e2e_ms") or {}
        fps = _number(bench.get("fps"), 6, 1)
        lines.append(f"tensorrt {precision:<5} {fps} {_number(e2e.get('p50'), 8)} "
                     f"{_number(e2e.get('p99'), 8)} {bench.get('dropped', 'n/a')!s:>8}")
    lines.append(f"\n(work files in {work}; {RESEARCH_NOTE})")
    return "\n".join(lines)


def passed(work: Path) -> bool:
    """Every recorded step exited 0 (and at least one ran)."""
    steps = read_steps(work)
    return bool(steps) and all(step.passed for step in steps)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m calibration.gpu_check WORK_DIR", file=sys.stderr)
        return 2
    work = Path(argv[0])
    print(render(work))
    return 0 if passed(work) else 1


if __name__ == "__main__":
    sys.exit(main())
