"""Commands that take a second word (``sonograde bench refine``, ``sonograde calibrate int8``)."""

from __future__ import annotations

import argparse
import importlib

from sonograde import RESEARCH_USE_ONLY


def register_commands(sub: argparse._SubParsersAction, table: list[tuple[str, str, str]]) -> None:
    """Add a parser to ``sub`` for each ``(name, module, help)`` entry: its description the module's
    docstring, its epilog the research-use line; the module's ``add_arguments`` fills it and its ``run``
    is called for it. Both levels of the command line use this."""
    for name, module_name, help_text in table:
        module = importlib.import_module(module_name)
        child = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            epilog=RESEARCH_USE_ONLY,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(child)
        child.set_defaults(_run=module.run)


def add_nested_commands(parser: argparse.ArgumentParser, table: list[tuple[str, str, str]]) -> None:
    """Register ``(name, module, help)`` entries as sub-subcommands; each module has add_arguments/run."""
    register_commands(parser.add_subparsers(dest="subcommand", metavar="WHAT", required=True), table)
