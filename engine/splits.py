"""Patient-disjoint train / validation / test splits of manifest records.

Rules (``make_split``), applied per dataset folder:
- datasets named in ``train_only`` (default ``busi``: it holds near-duplicate images, so no honest
  evaluation is possible on it) go entirely to training;
- datasets with an official ``fold`` column (BUS-BRA) hold out ``fold == test_fold`` as the test set;
  the other folds are split into train and validation by patient (``ManifestRecord.group``);
- other datasets (e.g. breast_lesions_usg, no patient id: one case = one group) hold out
  ``test_fraction`` of the groups as test and ``val_fraction`` as validation, stratified by a label
  (BI-RADS category by default) so that every category is represented;
- with ``folds`` = K > 0 (cross-validation), those datasets are instead dealt into K stratified folds
  (``assign_folds``) and fold ``test_fold`` (1..K) is the test set, like an official fold; validation is
  ``val_fraction`` of the other folds' groups. Running K trainings with ``test_fold`` 1..K then predicts
  every case exactly once from a network that never saw it.
A group (patient) never appears on two sides of a split; ``check_disjoint`` asserts it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.data.manifest import ManifestRecord


@dataclass(frozen=True)
class SplitConfig:
    """How to split. Fractions are of groups (patients/cases), not images."""

    test_fold: int = 1
    val_fraction: float = 0.1
    test_fraction: float = 0.3
    seed: int = 0
    train_only: tuple[str, ...] = ("busi",)
    folds: int = 0

    def __post_init__(self) -> None:
        if self.folds < 0 or self.folds == 1:
            raise ValueError(f"folds must be 0 (no cross-validation) or >= 2, got {self.folds}")
        if self.folds and not 1 <= self.test_fold <= self.folds:
            raise ValueError(f"test_fold must be 1..{self.folds} with {self.folds} folds, "
                             f"got {self.test_fold}")


@dataclass
class Split:
    """Records on each side of a split."""

    train: list[ManifestRecord] = field(default_factory=list)
    val: list[ManifestRecord] = field(default_factory=list)
    test: list[ManifestRecord] = field(default_factory=list)

    def summary(self) -> str:
        def count(records: list[ManifestRecord]) -> str:
            per: dict[str, int] = defaultdict(int)
            for r in records:
                per[r.dataset] += 1
            return ", ".join(f"{k} {v}" for k, v in sorted(per.items())) or "none"

        return f"train: {count(self.train)}; val: {count(self.val)}; test: {count(self.test)}"


def _group_split(records: Sequence[ManifestRecord], fractions: Sequence[float], seed: int,
                 stratify: Callable[[ManifestRecord], str]) -> list[list[ManifestRecord]]:
    """Split records into len(fractions)+1 parts by group, stratified by ``stratify`` of each group's
    first record; part i gets round(fraction_i * groups) of each stratum, the last part the rest."""
    groups: dict[str, list[ManifestRecord]] = defaultdict(list)
    for record in records:
        groups[record.group].append(record)
    strata: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        strata[stratify(groups[key][0])].append(key)
    parts: list[list[ManifestRecord]] = [[] for _ in range(len(fractions) + 1)]
    rng = random.Random(seed)
    for stratum in sorted(strata):
        keys = strata[stratum]
        rng.shuffle(keys)
        start = 0
        for index, fraction in enumerate(fractions):
            take = round(fraction * len(keys))
            for key in keys[start:start + take]:
                parts[index].extend(groups[key])
            start += take
        for key in keys[start:]:
            parts[-1].extend(groups[key])
    return parts


def folds_patient_disjoint(records: Sequence[ManifestRecord]) -> bool:
    """True if no patient appears in two official folds."""
    folds: dict[str, set[int | None]] = defaultdict(set)
    for record in records:
        folds[record.group].add(record.fold)
    return all(len(f) == 1 for f in folds.values())


def check_disjoint(split: Split) -> None:
    """Raise ValueError if any group is on two sides of the split."""
    sides = {name: {r.group for r in getattr(split, name)} for name in ("train", "val", "test")}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sides[a] & sides[b]
        if both:
            raise ValueError(f"split is not patient-disjoint: {len(both)} group(s) in {a} and {b}, "
                             f"e.g. {sorted(both)[0]}")


def default_stratum(record: ManifestRecord) -> str:
    return record.birads or record.pathology or "-"


def assign_folds(records: Sequence[ManifestRecord], folds: int, seed: int) -> dict[str, int]:
    """Patient-disjoint fold (0..folds-1) per ``"dataset/id"``: groups dealt round-robin within each
    BI-RADS stratum after a seeded shuffle, so every fold gets about the same mix of categories."""
    import numpy as np

    groups: dict[str, list[ManifestRecord]] = defaultdict(list)
    for record in records:
        groups[record.group].append(record)
    strata: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        strata[groups[key][0].birads or "-"].append(key)
    rng = np.random.default_rng(seed)
    assignment: dict[str, int] = {}
    offset = 0
    for stratum in sorted(strata):
        keys = strata[stratum]
        order = rng.permutation(len(keys))
        for position, index in enumerate(order):
            fold = (position + offset) % folds
            for record in groups[keys[index]]:
                assignment[f"{record.dataset}/{record.id}"] = fold
        offset += len(keys)  # continue the deal where the last stratum stopped: balanced fold sizes
    return assignment


def make_split(records: Sequence[ManifestRecord], config: SplitConfig = SplitConfig(), *,
               stratify: Callable[[ManifestRecord], str] = default_stratum) -> Split:
    """Split ``records`` by the rules in the module docstring; checks the result is patient-disjoint."""
    by_dataset: dict[str, list[ManifestRecord]] = defaultdict(list)
    for record in records:
        by_dataset[record.dataset].append(record)
    split = Split()
    for name in sorted(by_dataset):
        items = by_dataset[name]
        if name in config.train_only:
            split.train.extend(items)
            continue
        has_folds = all(r.fold is not None for r in items)
        if has_folds:
            if not folds_patient_disjoint(items):
                raise ValueError(f"dataset {name}: official folds share patients; cannot hold out a fold")
            split.test.extend(r for r in items if r.fold == config.test_fold)
            rest = [r for r in items if r.fold != config.test_fold]
            val, train = _group_split(rest, [config.val_fraction], config.seed, stratify)
        elif config.folds:
            fold_of = assign_folds(items, config.folds, config.seed)
            split.test.extend(r for r in items if fold_of[f"{r.dataset}/{r.id}"] == config.test_fold - 1)
            rest = [r for r in items if fold_of[f"{r.dataset}/{r.id}"] != config.test_fold - 1]
            val, train = _group_split(rest, [config.val_fraction], config.seed, stratify)
        else:
            test, val, train = _group_split(items, [config.test_fraction, config.val_fraction],
                                            config.seed, stratify)
            split.test.extend(test)
        split.val.extend(val)
        split.train.extend(train)
    check_disjoint(split)
    return split
