"""Obviously bad input gets one line saying what is wrong, never a traceback: a corrupt model for
`calibrate fp16`, `experiment table3` without torch, a malformed overlay endpoint, and a sweep of the
commands over missing, corrupt and empty inputs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sonograde.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bad_inputs(tmp_path: Path) -> Path:
    (tmp_path / "models").mkdir()
    for name in ("roi_cnn.onnx", "g_cnn.onnx"):
        (tmp_path / "models" / name).write_bytes(b"\x08\x07garbage, not a protobuf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.png").write_bytes(b"junk")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    return tmp_path


def sweep(d: Path) -> list[list[str]]:
    return [
        ["calibrate", "fp16", "--model", str(d / "models/g_cnn.onnx"), "--out", str(d / "o.onnx")],
        ["calibrate", "int8", "--model", str(d / "models/g_cnn.onnx"), "--out", str(d / "o.onnx"),
         "--data", str(d / "empty")],
        ["grade", str(d / "bad.png")],
        ["grade", str(d / "empty")],
        ["grade", str(d / "missing.png")],
        ["grade", str(d / "bad.png"), "--models", str(d / "models")],
        ["run", "--models", str(d / "models"), "--frames", "1", "--publish", "none", "--quiet"],
        ["run", "--source", str(d / "empty"), "--frames", "1", "--publish", "none", "--quiet"],
        ["run", "--source", str(d / "bad.png"), "--seconds", "20", "--publish", "none", "--quiet"],
        ["evaluate", "--data", str(d / "empty"), "--models", str(d / "models")],
        ["overlay", "--connect", "garbage", "--snapshot", str(d / "x.png"), "--seconds", "1"],
        ["calibrate", "geometry", "--frame", str(d / "bad.png"), "--out", str(d / "g.json")],
        ["sources", "--try", str(d / "bad.png")],
        ["bench", "pipeline", "--models", str(d / "models"), "--seconds", "1"],
    ]


@pytest.mark.parametrize("index", range(len(sweep(Path(".")))))
def test_bad_input_is_one_line_not_a_traceback(bad_inputs, index, capsys):
    argv = sweep(bad_inputs)[index]
    rc = cli_main(argv)
    err = capsys.readouterr().err
    assert rc in (1, 2), (argv, err)
    assert "Traceback" not in err and "File \"" not in err, (argv, err)
    errors = [line for line in err.splitlines() if line.startswith(("error:", "sonograde "))
              and not line.startswith("sonograde overlay: no display")]
    assert errors, (argv, err)


def test_experiment_table3_without_torch_is_one_line(tmp_path):
    """torch made unimportable in a child Python (as on an install without the train extra): the Table 3
    experiment (research/table3.py, run from a checkout) says so in one line, and the product's
    `sonograde experiment table3` says in one line where the experiment is."""
    script = tmp_path / "no_torch.py"
    script.write_text(textwrap.dedent("""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        if sys.argv[1] == "research":
            from research.table3 import main
            sys.exit(main(sys.argv[2:]))
        from sonograde.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    for argv, expected in ((["research", "--smoke"], "needs the train extra"),
                           (["experiment", "table3", "--smoke"], "python -m research.table3")):
        done = subprocess.run([sys.executable, str(script), *argv, "--out", str(tmp_path / "t3")],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "t3").exists()  # refused before writing anything
