"""`--cpu-load N`: the busy processes start, really run, and are all gone afterwards, however the block ends.

No timing assertions: deadlines only bound how long a test waits for a process to appear or go.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sonograde.benchmarks.cpu_load import BusyProcesses

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, user+system CPU ticks) of ``pid``, or None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # after the command name, which may hold spaces
    state, ppid, utime, stime = fields[0], int(fields[1]), int(fields[11]), int(fields[12])
    return None if state in ("Z", "X") else (state, ppid, utime + stime)


def children(pid: int | None = None) -> list[int]:
    """Live (non-zombie) child processes of ``pid`` (default: this process), less multiprocessing's
    resource tracker (started once with the first spawned process, and kept for the interpreter's life)."""
    parent = pid or os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is None or stat[1] != parent:
                continue
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in command:
                found.append(int(entry.name))
    return found


def wait_for(predicate, what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.02)


def test_processes_start_spin_and_are_all_gone_afterwards() -> None:
    before = set(children())
    with BusyProcesses(2) as load:
        pids = load.pids
        assert len(pids) == 2 and len(set(pids)) == 2
        assert set(pids) <= set(children()), "the busy processes are children of this process"
        # They really work: each one accumulates CPU time (a sleeping stand-in would not).
        wait_for(lambda: all((_stat(pid) or ("", 0, 0))[2] > 5 for pid in pids), "CPU time in every spinner")
    assert all(_stat(pid) is None for pid in pids), "a busy process outlived the block"
    assert load.pids == []
    assert set(children()) <= before


def test_gone_after_an_exception_and_a_ctrl_c() -> None:
    for error in (RuntimeError("a failing benchmark"), KeyboardInterrupt()):
        with pytest.raises(type(error)), BusyProcesses(1) as load:
            pids = load.pids
            assert len(pids) == 1 and _stat(pids[0]) is not None
            raise error
        assert _stat(pids[0]) is None


def test_zero_starts_nothing_and_negative_is_refused() -> None:
    before = set(children())
    with BusyProcesses(0) as load:
        assert load.pids == []
        assert set(children()) == before
    with pytest.raises(ValueError, match=">= 0"):
        BusyProcesses(-1)


def test_a_spinner_does_not_outlive_a_killed_parent() -> None:
    """The benchmark process dies without stopping its busy process (os._exit, as after SIGKILL): the
    orphan notices and exits by itself."""
    script = textwrap.dedent("""
        import os, sys
        from sonograde.benchmarks.cpu_load import BusyProcesses
        load = BusyProcesses(1).start()
        print(load.pids[0], flush=True)
        os._exit(0)  # no stop(), no atexit handlers
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    orphan = int(done.stdout.strip().splitlines()[-1])
    wait_for(lambda: _stat(orphan) is None, "the orphaned busy process to exit")


def test_bench_pipeline_with_cpu_load_reports_the_setting_and_leaves_no_process(tmp_path, capsys) -> None:
    """`sonograde bench pipeline --cpu-load 1`, short, on small dev models: the JSON names the load and the
    machine, the invariants hold under load (nothing stale, everything published received), and no busy
    process is left."""
    import json

    from engine.backends.dev_models import make_grader_model, make_roi_model
    from sonograde.benchmarks.pipeline import report_lines
    from sonograde.cli import main as cli_main

    make_roi_model(tmp_path / "roi_cnn.onnx")
    make_grader_model(tmp_path / "g_cnn.onnx")
    before = set(children())
    rc = cli_main(["bench", "pipeline", "--models", str(tmp_path), "--seconds", "1.5", "--warmup", "0.5",
                   "--cpu-load", "1", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["cpu_load"] == 1
    assert summary["machine"]["logical_cpus"] >= 1 and summary["machine"]["load_avg"] is not None
    assert summary["stale_graded"] == 0
    assert summary["frames_received"] == summary["frames_published"] > 0
    assert summary["dropped_at_source"] >= 0 and 0 <= summary["dropped_at_source_pct"] <= 100
    assert set(children()) <= before, "a busy process outlived the benchmark"
    text = "\n".join(report_lines(summary))
    assert "1 busy process(es)" in text and text.count("machine: ") == 1 and "dropped at source" in text
    assert "PASS  stale_graded == 0" in text


def test_bench_pipeline_refuses_a_negative_load(capsys) -> None:
    from sonograde.cli import main as cli_main

    assert cli_main(["bench", "pipeline", "--cpu-load", "-1"]) == 2
    assert "--cpu-load must be >= 0" in capsys.readouterr().err
