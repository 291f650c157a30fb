"""`sonograde run` stops its overlay child with SIGINT: that must work even when run itself was started
with SIGINT ignored (in the background, under nohup), since an ignored signal is inherited."""

from __future__ import annotations

import signal
import subprocess
import sys

from sonograde.commands.run import start_with_ctrl_c

PROBE = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def _child_handles_ctrl_c() -> bool:
    child = start_with_ctrl_c([sys.executable, "-c", PROBE])
    child.wait(60)
    return child.returncode == 0


def test_the_child_gets_ctrl_c_although_this_process_ignores_it(capfd) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        # The trap this guards against: a plain Popen's child inherits the ignored SIGINT.
        plain = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
        assert plain.stdout.strip() == "False"
        capfd.readouterr()
        assert _child_handles_ctrl_c()
        assert capfd.readouterr().out.strip() == "True"
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # this process's setting is kept
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_child_gets_ctrl_c_normally(capfd) -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert _child_handles_ctrl_c()
        assert capfd.readouterr().out.strip() == "True"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
