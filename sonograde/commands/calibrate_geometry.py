"""Deprecated spelling of `sonograde screen measure` (measuring a scanner screen is not calibration).

Same options and output as `sonograde screen measure`; prints a deprecation note on stderr first:
  sonograde screen measure --frame screen.png --out geometry.json
"""

from __future__ import annotations

import argparse
import sys

from sonograde.commands import screen_measure

DEPRECATION = ("sonograde calibrate geometry is deprecated and will be removed: use "
               "`sonograde screen measure` (same options)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    screen_measure.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    print(DEPRECATION, file=sys.stderr)
    return screen_measure.run(args)
