"""The documentation describes the product: its links resolve, and it carries no development history.

Checked: every relative link (and its #anchor) in README.md, docs/*.md and models/*.md points at an
existing file (heading); docs, model cards, every command's ``--help`` (through the CLI parser) and the
code carry no development-session words ("session 4", addenda, preregistrations) and none of our
development machines' paths.
"""

from __future__ import annotations

import argparse
import re
import unicodedata
from pathlib import Path

import pytest

from sonograde import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "models").glob("*.md")])

# Development history and our machines' layout. Split so that this file does not match itself.
SESSION_WORDS = re.compile(
    r"\bsessions?[\s-]*\d"               # "session 4", "session-2", "sessions 8-9"
    r"|\baddend(?:um|a)\b"               # "addendum 16"
    r"|\bpre-?registration"              # the preregistration files of experiments
    r"|/wor" r"k/"                       # our checkouts and run folders
    r"|\bruns/s\d+/",                    # a development run folder
    re.IGNORECASE,
)
# Products docs and help texts also name data by a placeholder, not by where it lies on our machines.
DEVELOPMENT_PATHS = re.compile(r"\.\./shared/|shared/data|development machine", re.IGNORECASE)

FENCED_CODE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _links(text: str) -> list[str]:
    """Link targets outside code: fenced blocks and inline code may show brackets that are not links."""
    prose = INLINE_CODE.sub("", FENCED_CODE.sub("", text))
    return [m.group(1) for m in LINK.finditer(prose)]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = INLINE_CODE.sub(lambda m: m.group(0).strip("`"), heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(markdown: Path) -> set[str]:
    text = FENCED_CODE.sub("", markdown.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.MULTILINE):
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _broken_links(document: Path) -> list[str]:
    broken = []
    for target in _links(document.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (document.parent / path_part).resolve() if path_part else document
        if not resolved.is_file():
            broken.append(f"{target} (no file {resolved})")
        elif anchor and resolved.suffix == ".md" and anchor.lower() not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {_relative(resolved)})")
    return broken


def _offending_lines(text: str, patterns: list[re.Pattern[str]]) -> list[str]:
    return [line.strip() for line in text.splitlines() if any(p.search(line) for p in patterns)]


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the CLI, nested ones (``calibrate int8``, ``bench pipeline``) included."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


def test_the_checks_themselves_catch_what_they_are_for(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("# Title\n\n## How to train it\n", encoding="utf-8")
    page.write_text(
        "[ok](there.md) [ok](there.md#how-to-train-it) [web](https://example.org/x) `[code](nowhere.md)`\n"
        "[gone](missing.md) [bad anchor](there.md#nowhere)\n```\n[in a block](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    broken = _broken_links(page)
    assert [b.split(" ")[0] for b in broken] == ["missing.md", "there.md#nowhere"]
    bad = ["measured in session 8", "see sessions 8-9", "(addendum 11 A)", "preregistration.md",
           "/wor" "k/runs/s4/probe.py", "runs/s9/x", "a Session-2 model"]
    good = ["intra-op threads per ONNX Runtime session", "one session per stage (default 1)",
            "the InferenceSession runs 2 threads", "a DICOM association"]
    assert all(SESSION_WORDS.search(line) for line in bad)
    assert not any(SESSION_WORDS.search(line) for line in good)
    assert DEVELOPMENT_PATHS.search("--data ../shared/data/busbra")
    assert DEVELOPMENT_PATHS.search("(the paper, `../shared/reference/paper.txt`)")


@pytest.mark.parametrize("document", DOCUMENTS, ids=_relative)
def test_every_relative_link_resolves(document):
    assert _broken_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=_relative)
def test_documents_carry_no_development_history_or_paths(document):
    text = document.read_text(encoding="utf-8")
    assert _offending_lines(text, [SESSION_WORDS, DEVELOPMENT_PATHS]) == []


def test_model_cards_say_research_use_only():
    for card in (REPO / "models").glob("*.md"):
        assert "research use only, not for diagnosis" in card.read_text(encoding="utf-8").lower(), card.name


def test_help_texts_carry_no_development_history_or_paths(capsys):
    paths = _command_paths(cli.build_parser())
    assert ("train",) in paths and ("calibrate", "int8") in paths
    offending = {}
    for path in paths:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*path, "--help"])
        assert exit_info.value.code == 0
        help_text = capsys.readouterr().out
        assert help_text.strip(), path
        lines = _offending_lines(help_text, [SESSION_WORDS, DEVELOPMENT_PATHS])
        if lines:
            offending[" ".join(path) or "sonograde"] = lines
    assert offending == {}


def test_code_carries_no_development_history_or_paths():
    roots = [REPO / name for name in ("capture", "engine", "refine", "calibration", "sonograde", "scripts",
                                      "research", "tests")]
    files = [REPO / "pyproject.toml"] + [
        f for root in roots if root.is_dir() for f in root.rglob("*")
        if f.suffix in {".py", ".sh", ".toml", ".cfg", ".txt"} and f.resolve() != Path(__file__).resolve()
    ]
    offending = {}
    for f in files:
        lines = _offending_lines(f.read_text(encoding="utf-8", errors="replace"), [SESSION_WORDS])
        if lines:
            offending[_relative(f)] = lines
    assert offending == {}


def test_documents_named_in_code_and_help_exist():
    named = set()
    for root in ("capture", "engine", "refine", "calibration", "sonograde", "scripts", "research"):
        for f in (REPO / root).rglob("*.py") if (REPO / root).is_dir() else []:
            text = f.read_text(encoding="utf-8")
            named.update(re.findall(r"\b((?:docs|models)/[\w.-]+\.md)", text))
    assert "docs/data.md" in named
    assert sorted(n for n in named if not (REPO / n).is_file()) == []
