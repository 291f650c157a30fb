"""The paper's experiments are research code, run from a source checkout, not part of the installed product.

The Table 3 experiment (one- vs two-stage classifiers, with the VGG16 and ResNet50 baselines it alone
uses) lives in the repository's research/ folder:

  python -m research.table3 --data DIR --out OUT_DIR            # from the checkout's root
  python -m research.table3 --smoke --out /tmp/t3_smoke          # phantom data, tiny networks, seconds
  python -m research.table3 --help

This command only says so (exit status 2). See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys

MOVED = ("sonograde experiment {name}: the paper's experiments are research code, not installed with the "
         "product; from a source checkout run `python -m research.table3 ...` (see --help there)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", default="table3", help="which experiment (table3)")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="ignored: run the experiment from research/")


def run(args: argparse.Namespace) -> int:
    print(MOVED.format(name=args.name), file=sys.stderr)
    return 2
