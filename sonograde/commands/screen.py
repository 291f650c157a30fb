"""The scanner's screen as a capture card sees it: measure where the image is and how many mm a pixel spans.

  sonograde screen measure --frame screen.png --out geometry.json        # image rectangle + mm per pixel
  sonograde screen measure --source 0 --frames 5 --out geometry.json     # from capture card 0

The profile it writes is what `sonograde run --geometry geometry.json` applies (crop and pixel size).
See docs/calibration.md ("Scanner geometry").
"""

from __future__ import annotations

import argparse

from sonograde.commands.nested import add_nested_commands

SUBCOMMANDS: list[tuple[str, str, str]] = [
    ("measure", "sonograde.commands.screen_measure", "image rectangle and mm per pixel of a captured screen"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_nested_commands(parser, SUBCOMMANDS)


def run(args: argparse.Namespace) -> int:  # pragma: no cover - dispatch replaces it with the child's run
    raise SystemExit("choose one of: " + ", ".join(name for name, _, _ in SUBCOMMANDS))
