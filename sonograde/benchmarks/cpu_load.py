"""Busy processes beside a benchmark: what a cart looks like when the scanner's own software takes a core.

``BusyProcesses(n)`` starts ``n`` processes that each spin on integer arithmetic (pure Python: no sleeping,
no I/O, no memory traffic to speak of, so each one wants one whole core all the time, at normal
priority). They are stopped when the ``with`` block ends, whatever ends it (an exception, Ctrl-C):
terminated, waited for, killed if they linger. A spinner whose parent dies without stopping it (killed
with SIGKILL, say) notices within about a tenth of a second and exits, so none outlives its benchmark.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from types import TracebackType

# Arithmetic iterations between two checks on the parent (well under a millisecond of work each).
_SPIN_BATCH = 20_000


def spin(parent_pid: int) -> None:  # pragma: no cover - runs in the child process
    """Keep one core busy until terminated or until ``parent_pid`` is no longer this process's parent."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle: it stops us
    value = 1
    next_check = time.monotonic() + 0.1
    while True:
        for i in range(_SPIN_BATCH):
            value = (value * 1103515245 + i) % 2147483648
        now = time.monotonic()
        if now >= next_check:
            if os.getppid() != parent_pid:  # the benchmark is gone: do not outlive it
                return
            next_check = now + 0.1


class BusyProcesses:
    """``count`` spinning processes for as long as the ``with`` block lasts (0: none; nothing starts).

    ``pids`` lists them while they run; ``stop()`` (also on leaving the block) ends them all and waits,
    SIGTERM first, SIGKILL for any still there after ``grace_s`` seconds.
    """

    def __init__(self, count: int, *, grace_s: float = 2.0) -> None:
        if count < 0:
            raise ValueError(f"the number of busy processes must be >= 0, got {count}")
        self.count = int(count)
        self.grace_s = float(grace_s)
        self._processes: list = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def start(self) -> BusyProcesses:
        # spawn: a fresh interpreter that imports only this small module (fork would copy the models and
        # the threads' locks of the benchmark process).
        context = mp.get_context("spawn")
        try:
            for index in range(self.count):
                process = context.Process(target=spin, args=(os.getpid(),),
                                          name=f"sonograde-cpu-load-{index}", daemon=True)
                process.start()
                self._processes.append(process)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """End every spinner and wait for it (idempotent)."""
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + self.grace_s
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5.0)
        self._processes.clear()

    def __enter__(self) -> BusyProcesses:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


__all__ = ["BusyProcesses", "spin"]
