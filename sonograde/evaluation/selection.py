"""Choose which manifest records an evaluation uses, so held-out numbers can be reproduced exactly.

Three filters, combined with AND:

- ``folds``: keep records whose manifest ``fold`` is one of these (BUS-BRA's official 5-fold split);
- ``ids``: keep records listed in an ids file: one id per line, ``ID``, ``DATASET:ID`` or ``DATASET/ID``
  (dataset = the manifest folder's name), ``#`` starts a comment, blank lines ignored; or a JSON file
  with a ``test_ids`` list (the ``split.json`` that ``sonograde train`` writes into its run folder);
- ``split``: recompute the training split of ``engine.splits.make_split`` (patient-disjoint, per dataset
  folder) with the given ``SplitConfig`` and keep its ``train``, ``val`` or ``test`` side. The shipped
  models' cards (``models/*.md``) state which config they were trained with.

A filter that keeps nothing raises :class:`SelectionError` naming what did not match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.data.manifest import ManifestRecord
    from engine.splits import SplitConfig


class SelectionError(ValueError):
    """A filter that selects nothing or cannot be read."""


@dataclass(frozen=True)
class Selection:
    """Filters to apply; ``None`` means "do not filter on this"."""

    folds: tuple[int, ...] | None = None
    ids_file: Path | None = None
    split: str | None = None
    split_config: SplitConfig | None = None

    def describe(self) -> str:
        """A short human-readable account of the filters, for reports."""
        parts = []
        if self.folds:
            parts.append("fold " + ", ".join(str(f) for f in self.folds))
        if self.ids_file:
            parts.append(f"ids in {self.ids_file}")
        if self.split:
            cfg = self.split_config
            detail = "" if cfg is None else (
                f" (engine.splits.make_split: test_fold={cfg.test_fold}, test_fraction={cfg.test_fraction}, "
                f"val_fraction={cfg.val_fraction}, seed={cfg.seed}, train_only={list(cfg.train_only)})")
            parts.append(f"the {self.split} side of the training split{detail}")
        return "; ".join(parts) or "all records"


def read_ids(path: Path) -> set[str]:
    """Ids from an ids file (see module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise SelectionError(f"cannot read ids file {path}: {error.strerror or error}") from error
    ids: set[str] = set()
    if text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise SelectionError(f"ids file {path} looks like JSON but is not: {error}") from error
        listed = payload.get("test_ids") if isinstance(payload, dict) else None
        if not isinstance(listed, list):
            raise SelectionError(f"JSON ids file {path} has no 'test_ids' list")
        entries = [str(entry) for entry in listed]
    else:
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    for entry in entries:
        if entry:
            ids.add(entry.replace("/", ":", 1) if "/" in entry and ":" not in entry else entry)
    if not ids:
        raise SelectionError(f"ids file {path} lists no ids (one id or DATASET:ID per line)")
    return ids


def select(records: Sequence[ManifestRecord], selection: Selection) -> list[ManifestRecord]:
    """The records that pass every filter of ``selection``, in their original order."""
    kept = list(records)
    if selection.split:
        from engine.splits import SplitConfig, make_split

        if selection.split not in ("train", "val", "test"):
            raise SelectionError(f"unknown split side {selection.split!r}; choose train, val or test")
        side = getattr(make_split(kept, selection.split_config or SplitConfig()), selection.split)
        chosen = {(r.dataset, r.id) for r in side}
        kept = [r for r in kept if (r.dataset, r.id) in chosen]
        if not kept:
            raise SelectionError(
                f"the {selection.split} side of the training split is empty for these datasets "
                "(e.g. BUSI is train-only: no honest held-out part exists)"
            )
    if selection.folds:
        wanted = set(selection.folds)
        before = kept
        kept = [r for r in kept if r.fold in wanted]
        if not kept:
            have = sorted({r.fold for r in before if r.fold is not None})
            raise SelectionError(f"no record has fold {sorted(wanted)}; folds present: {have or 'none'}")
    if selection.ids_file:
        ids = read_ids(selection.ids_file)
        kept = [r for r in kept if r.id in ids or f"{r.dataset}:{r.id}" in ids]
        if not kept:
            raise SelectionError(f"none of the ids in {selection.ids_file} is among the selected records")
    return kept
