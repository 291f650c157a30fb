"""The paper's Table 3 experiment: one-stage against two-stage classifiers, G-CNN against VGG16 and ResNet50.

Nine methods, as the paper's Table 3:

- one-stage ``G-CNN``, ``VGG16``, ``ResNet50``: the whole image, resized to ``whole_size`` squared (paper:
  288) and standardized, classified directly;
- two-stage ``ROI-CNN + X`` and ``Refined ROI-CNN + X`` for X in G-CNN, VGG16, ResNet50: the lesion crop
  made by ``engine.preprocess.grader_input`` (``crop_size`` squared, the shipped G-CNN's input) around the
  ROI that the *shipped* ROI-CNN finds (after the area filter), without or with Chan–Vese refinement.

Protocol (all choices are ours where the paper says nothing):

- patient-disjoint k-fold cross-validation: groups (``ManifestRecord.group``: patient, or the image where
  no patient id) are dealt to ``folds`` folds, stratified by BI-RADS label, with ``seed``;
- per fold and architecture two networks are trained: one on whole images (one-stage) and one on lesion
  crops from the ground-truth masks with the paper's translation + flip augmentation (two-stage, the
  way the shipped G-CNN is trained). The two-stage network is then tested on crops around the
  ROI-CNN's raw ROI and around the refined ROI, so "ROI-CNN + X" and "Refined ROI-CNN + X" share one
  trained network and differ only in the ROI they are given. Where the ROI-CNN finds nothing, the case
  counts as wrong;
- the loss is ``engine.training.grader_objective.allowed_set_loss`` (cross-entropy; a coarse BUS-BRA
  "4" on the summed probability of 4A, 4B, 4C), the optimizer and learning-rate schedule those of
  ``engine.training.common`` (SGD as the paper by default), five-way-labelled samples repeated
  ``TrainConfig.fine_repeat`` times per epoch when mixed with coarse ones, as in the shipped G-CNN's
  training; the two-stage networks see the crop only (no mask channel, unlike the shipped G-CNN), so
  all three architectures get the same input;
- out-of-fold predictions of all folds are pooled and summarized by
  :func:`sonograde.evaluation.summary.summarize_grading` (per-category accuracy = recall).

Every (fold, network) result is cached in ``out`` as JSON, so an interrupted run resumes where it stopped;
the fold assignment and the ROI masks are cached too. ``out`` also holds a decoded-image cache: it is
derived from patient images, keep ``out`` outside any repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.splits import assign_folds
from sonograde import RESEARCH_USE_ONLY
from sonograde.evaluation.labels import CATEGORIES, grading_label
from sonograde.evaluation.summary import GradedCase, summarize_grading

if TYPE_CHECKING:
    import torch

    from engine.data.datasets import GraderSample
    from engine.data.manifest import ManifestRecord

ARCHITECTURES: dict[str, str] = {"grader": "G-CNN", "vgg16": "VGG16", "resnet50": "ResNet50"}

METHODS: dict[str, tuple[str, str, str | None]] = {
    # method id: (name as the paper's Table 3, architecture, ROI: None = whole image, "raw", "refined")
    "one_stage_grader": ("One-stage G-CNN", "grader", None),
    "one_stage_vgg16": ("One-stage VGG16", "vgg16", None),
    "one_stage_resnet50": ("One-stage ResNet50", "resnet50", None),
    "roi_grader": ("ROI-CNN + G-CNN", "grader", "raw"),
    "roi_vgg16": ("ROI-CNN + VGG16", "vgg16", "raw"),
    "roi_resnet50": ("ROI-CNN + ResNet50", "resnet50", "raw"),
    "refined_grader": ("Refined ROI-CNN + G-CNN", "grader", "refined"),
    "refined_vgg16": ("Refined ROI-CNN + VGG16", "vgg16", "refined"),
    "refined_resnet50": ("Refined ROI-CNN + ResNet50", "resnet50", "refined"),
}

PAPER_TABLE3_REFINED_GCNN = {"3": 0.998, "4A": 0.940, "4B": 0.734, "4C": 0.922, "5": 0.876}


class ExperimentError(ValueError):
    """An experiment that cannot run as asked (no usable data, bad options, mismatched cache)."""


@dataclass(frozen=True)
class Table3Config:
    """Settings of the Table 3 experiment.

    data : manifest folders. out : results folder (resumable). models : ROI-CNN folder (None: shipped).
    folds : cross-validation folds (paper: 5). epochs : training epochs per network. width : width
    multiplier of all three architectures. crop_size : two-stage input side (px, multiple of 16).
    whole_size : one-stage input side (paper: 288). margin : crop margin around the ROI box (fraction of
    its side, as ``grader_input``). batch_size, optimizer, lr, weight_decay : as ``TrainConfig``.
    archs : architectures to run. stages : "one_stage" and/or "two_stage" (run one part now, the other
    later into the same ``out``). run_folds : train and test only these folds (0-based) now; None = all.
    seed : folds, initialisation and augmentation. threads : torch
    threads. max_side : decoded images are shrunk to this longer side (as the G-CNN training cache).
    """

    data: tuple[str, ...]
    out: str
    models: str | None = None
    folds: int = 5
    epochs: int = 10
    width: float = 0.25
    crop_size: int = 128
    whole_size: int = 288
    margin: float = 0.25
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float | None = None
    weight_decay: float = 1e-4
    archs: tuple[str, ...] = ("grader", "vgg16", "resnet50")
    stages: tuple[str, ...] = ("one_stage", "two_stage")
    run_folds: tuple[int, ...] | None = None
    seed: int = 0
    threads: int = 2
    max_side: int = 512
    progress: bool = True

    def check(self) -> None:
        if self.folds < 2:
            raise ExperimentError(f"--folds must be at least 2, got {self.folds}")
        if self.epochs < 1:
            raise ExperimentError(f"--epochs must be at least 1, got {self.epochs}")
        for name, size in (("--crop-size", self.crop_size), ("--whole-size", self.whole_size)):
            if size < 32 or size % 16:
                raise ExperimentError(f"{name} must be a multiple of 16 and >= 32, got {size}")
        if self.run_folds is not None and any(not 0 <= f < self.folds for f in self.run_folds):
            raise ExperimentError(f"--run-folds must be in 0..{self.folds - 1}, got {list(self.run_folds)}")
        if not self.stages or any(s not in ("one_stage", "two_stage") for s in self.stages):
            raise ExperimentError(f"stages must be one_stage and/or two_stage, got {self.stages}")
        unknown = [a for a in self.archs if a not in ARCHITECTURES]
        if unknown or not self.archs:
            raise ExperimentError(f"unknown architecture(s) {unknown}; "
                                  f"choose from {', '.join(ARCHITECTURES)}")

    def training_key(self) -> dict:
        """The settings a cached result depends on (a resume with other settings is refused)."""
        keys = ("data", "folds", "epochs", "width", "crop_size", "whole_size", "margin", "batch_size",
                "optimizer", "lr", "weight_decay", "seed", "max_side")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k in keys}


@dataclass
class CaseOutput:
    """One test case of one method: id, graded label, probabilities (None: no ROI found), pathology."""

    id: str
    label: str | None
    probabilities: list[float] | None
    pathology: str | None

    def graded(self) -> GradedCase:
        probs = tuple(self.probabilities) if self.probabilities is not None else None
        return GradedCase(self.id, self.label, probs, self.pathology)  # type: ignore[arg-type]


@dataclass
class Table3Result:
    """Pooled out-of-fold results per method, and how long the run took."""

    summaries: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    trained: int = 0
    reused: int = 0


# ------------------------------------------------------------------------------------------------ inputs


def whole_image_input(sample: GraderSample, size: int, rng: np.random.Generator | None) -> np.ndarray:
    """One-stage input (1, size, size): the whole image resized and standardized; with ``rng`` randomly
    translated by up to 10 % of its side and flipped horizontally (the G-CNN augmentation of the paper)."""
    from engine.augment import translate
    from engine.preprocess import roi_input

    image = sample.image
    if rng is not None:
        if rng.random() < 0.5:
            image = image[:, ::-1]
        h, w = image.shape
        dx, dy = (int(rng.integers(-w // 10, w // 10 + 1)), int(rng.integers(-h // 10, h // 10 + 1)))
        image, _ = translate(np.ascontiguousarray(image), np.zeros_like(image, dtype=bool), dx, dy)
    return roi_input(np.ascontiguousarray(image), size)


def build_classifier(arch: str, width: float, size: int, in_channels: int = 1) -> torch.nn.Module:
    """G-CNN (``engine.networks.GCNN``, global-pooling head as the shipped edge model), VGG16 or
    ResNet50 from ``engine.networks``, five outputs."""
    from engine.networks import GCNN, GCNNConfig
    from research.baselines import VGG16, ResNet50

    if arch == "grader":
        return GCNN(GCNNConfig(width=width, in_channels=in_channels, input_size=size))
    if arch == "vgg16":
        return VGG16(width=width, in_channels=in_channels, head="gap", input_size=size)
    if arch == "resnet50":
        return ResNet50(width=width, in_channels=in_channels)
    raise ExperimentError(f"unknown architecture {arch!r}")


def _train_config(config: Table3Config, size: int):  # -> engine.training.common.TrainConfig
    from engine.training.common import TrainConfig

    return TrainConfig(kind="grader", epochs=config.epochs, width=config.width, batch_size=config.batch_size,
                       lr=config.lr, optimizer=config.optimizer, weight_decay=config.weight_decay,
                       seed=config.seed, threads=config.threads, input_size=size, margin=config.margin,
                       mask_channel=False, progress=config.progress)


def train_classifier(arch: str, samples: Sequence[GraderSample],
                     make_input: Callable[[GraderSample, np.random.Generator | None], np.ndarray],
                     config: Table3Config, size: int, seed: int, desc: str) -> torch.nn.Module:
    """Train one classifier with the training helper's loss, optimizer and schedule; returns it in eval mode.

    engine.training.grader.train_grader trains only the G-CNN on ground-truth crops of a fixed split, so
    this reuses its pieces (the epoch of ``engine.training.common.train_one_epoch``, allowed_set_loss,
    fine_repeat, fine_datasets, make_optimizer) with any architecture, input function and training set,
    without checkpoints or validation.
    """
    import dataclasses

    import torch

    from engine.training.common import RunState, make_optimizer, train_one_epoch
    from engine.training.grader_data import fine_datasets
    from engine.training.grader_objective import allowed_set_loss

    torch.set_num_threads(config.threads)
    torch.manual_seed(seed)
    # channels_last: oneDNN convolutions run about twice as fast on CPU (as the training helper found)
    net = build_classifier(arch, config.width, size).to(memory_format=torch.channels_last)
    train_config = dataclasses.replace(_train_config(config, size), seed=seed)
    optimizer = make_optimizer(train_config, net.parameters())
    fine = fine_datasets(list(samples))
    is_fine = [s.id.split("/")[0] in fine for s in samples]
    # As the shipped G-CNN's training: five-way samples repeated when mixed with coarse ones (alone, the
    # repeat would only multiply the epoch length).
    repeat = train_config.fine_repeat if any(is_fine) and not all(is_fine) else 1
    pool = np.repeat(np.arange(len(samples)), [repeat if f else 1 for f in is_fine])

    def batch_loss(indices: np.ndarray, rng: np.random.Generator) -> torch.Tensor | None:
        batch = [samples[i] for i in indices]
        if len(batch) < 2:  # batch norm needs two samples
            return None
        x = torch.from_numpy(np.stack([make_input(s, rng) for s in batch]))
        x = x.contiguous(memory_format=torch.channels_last)
        allowed = torch.from_numpy(np.stack([s.allowed for s in batch]))
        return allowed_set_loss(net(x), allowed)

    state = RunState()
    for epoch in range(config.epochs):
        state.epoch = epoch
        train_one_epoch(train_config, state, name=desc, net=net, optimizer=optimizer,
                        epoch_order=lambda rng: rng.permutation(pool), batch_loss=batch_loss, leave=False)
    net.eval()
    return net


def predict(net: torch.nn.Module, inputs: Sequence[np.ndarray | None],
            batch: int = 32) -> list[list[float] | None]:
    """Softmax probabilities per input; ``None`` stays ``None`` (no ROI to classify)."""
    import torch

    out: list[list[float] | None] = [None] * len(inputs)
    present = [i for i, x in enumerate(inputs) if x is not None]
    with torch.no_grad():
        for start in range(0, len(present), batch):
            index = present[start:start + batch]
            x = torch.from_numpy(np.stack([inputs[i] for i in index]))
            x = x.contiguous(memory_format=torch.channels_last)
            probs = torch.softmax(net(x), dim=1).numpy()
            for i, p in zip(index, probs, strict=True):
                out[i] = [float(v) for v in p]
    return out


# ------------------------------------------------------------------------------------------------- ROIs


def compute_rois(samples: Sequence[GraderSample], models: str | None, cache: Path,
                 progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Raw (area-filtered) and refined ROI masks of the shipped ROI-CNN for every sample, at the sample's
    size; cached in ``cache`` (npz, keyed by id)."""
    from tqdm import tqdm

    from engine.grader import TwoStageGrader

    rois: dict[str, dict[str, np.ndarray]] = {}
    if cache.is_file():
        with np.load(cache) as data:
            for key in data.files:
                sample_id, kind = key.rsplit("|", 1)
                rois.setdefault(sample_id, {})[kind] = data[key]
    missing = [s for s in samples if s.id not in rois]
    if missing:
        grader = TwoStageGrader.from_models_dir(models)
        grader.warm_up()
        # Which ROI-CNN made these ROIs (the report names it; a later model does not silently mix in).
        ids_path = cache.with_name("rois_model.json")
        if ids_path.is_file() and json.loads(ids_path.read_text()) != grader.model_ids["roi"]:
            raise ExperimentError(f"{cache} holds ROIs of ROI-CNN {ids_path.read_text()}, but the models "
                                  f"folder now has {grader.model_ids['roi']!r}; use another --out")
        ids_path.write_text(json.dumps(grader.model_ids["roi"]))
        for sample in tqdm(missing, desc="ROI-CNN", disable=not progress, leave=False):
            located = grader.locate(sample.image)
            refined = grader.refine(sample.image, located)
            rois[sample.id] = {"raw": refined.raw_mask, "refined": refined.refined_mask}
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **{f"{i}|{k}": m for i, d in rois.items() for k, m in d.items()})
        tmp.replace(cache)
    return rois


def roi_crop(sample: GraderSample, mask: np.ndarray, config: Table3Config) -> np.ndarray | None:
    """Two-stage test input around a predicted ROI (``None`` when the ROI is empty)."""
    from engine.preprocess import grader_input

    if not mask.any():
        return None
    return grader_input(sample.image, mask, size=config.crop_size, margin=config.margin, mask_channel=False)


# ------------------------------------------------------------------------------------------------- run


def _load(config: Table3Config) -> tuple[list[GraderSample], dict[str, ManifestRecord]]:
    from engine.data.datasets import load_grader_samples, load_records
    from engine.data.manifest import ManifestError

    try:
        records = load_records(list(config.data))
    except ManifestError as error:
        raise ExperimentError(str(error)) from error
    samples = load_grader_samples(records, cache_dir=Path(config.out) / "cache", max_side=config.max_side,
                                  progress=config.progress)
    by_id = {f"{r.dataset}/{r.id}": r for r in records}
    if len(samples) < 2 * config.folds:
        raise ExperimentError(f"only {len(samples)} gradable lesions (mask + BI-RADS 2-5) in "
                              f"{', '.join(config.data)}: too few for {config.folds} folds")
    return samples, by_id


def _check_resume(out: Path, config: Table3Config) -> None:
    path = out / "config.json"
    key = config.training_key()
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != key:
            changed = sorted(k for k in set(previous) | set(key) if previous.get(k) != key.get(k))
            raise ExperimentError(f"{out} holds results of other settings ({', '.join(changed)}); "
                                  "use another --out or the same settings to resume")
    else:
        path.write_text(json.dumps(key, indent=1))


def run_table3(config: Table3Config, log: Callable[[str], None] | None = None) -> Table3Result:
    """Run (or resume) the experiment; writes ``table3.json`` and ``table3.md`` into ``config.out``."""
    config.check()
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(out, config)
    started = time.perf_counter()
    samples, by_id = _load(config)
    records = [by_id[s.id] for s in samples]
    folds_path = out / "folds.json"
    if folds_path.is_file():
        folds = json.loads(folds_path.read_text())
        if set(folds) != {s.id for s in samples}:
            raise ExperimentError(f"{folds_path} was made for other data; use another --out")
    else:
        folds = assign_folds(records, config.folds, config.seed)
        folds_path.write_text(json.dumps(folds, indent=0, sort_keys=True))
    needs_roi = "two_stage" in config.stages
    rois = compute_rois(samples, config.models, out / "rois.npz", config.progress) if needs_roi else {}
    labels = {s.id: grading_label(by_id[s.id].birads) for s in samples}
    pathology = {s.id: by_id[s.id].pathology if by_id[s.id].pathology in ("benign", "malignant") else None
                 for s in samples}
    result = Table3Result()
    from engine.training.grader_data import sample_input

    crop_config = _train_config(config, config.crop_size)
    for fold in config.run_folds if config.run_folds is not None else range(config.folds):
        train = [s for s in samples if folds[s.id] != fold]
        test = [s for s in samples if folds[s.id] == fold]
        for arch in config.archs:
            for stage in config.stages:
                methods = ([f"one_stage_{arch}"] if stage == "one_stage"
                           else [f"roi_{arch}", f"refined_{arch}"])
                paths = {m: out / f"fold{fold}" / f"{m}.json" for m in methods}
                if all(p.is_file() for p in paths.values()):
                    result.reused += 1
                    continue
                t0 = time.perf_counter()
                seed = config.seed * 1000 + fold * 10 + list(ARCHITECTURES).index(arch)
                desc = f"fold {fold + 1}/{config.folds} {stage.replace('_', '-')} {ARCHITECTURES[arch]}"
                if stage == "one_stage":
                    net = train_classifier(arch, train,
                                           lambda s, r: whole_image_input(s, config.whole_size, r),
                                           config, config.whole_size, seed, desc)
                    outputs = {methods[0]: predict(net, [whole_image_input(s, config.whole_size, None)
                                                         for s in test])}
                else:
                    net = train_classifier(arch, train, lambda s, r: sample_input(s, crop_config, r),
                                           config, config.crop_size, seed, desc)
                    outputs = {
                        f"{kind}_{arch}": predict(net, [roi_crop(s, rois[s.id][roi], config) for s in test])
                        for kind, roi in (("roi", "raw"), ("refined", "refined"))
                    }
                for method, probs in outputs.items():
                    cases = [asdict(CaseOutput(s.id, labels[s.id], p, pathology[s.id]))
                             for s, p in zip(test, probs, strict=True)]
                    paths[method].parent.mkdir(parents=True, exist_ok=True)
                    tmp = paths[method].with_suffix(".tmp")
                    tmp.write_text(json.dumps({"fold": fold, "method": method, "cases": cases,
                                               "train_seconds": round(time.perf_counter() - t0, 1),
                                               "n_train": len(train)}))
                    tmp.replace(paths[method])
                result.trained += 1
                log(f"{desc}: trained on {len(train)}, tested on {len(test)} "
                    f"in {time.perf_counter() - t0:.0f} s")
    result.summaries = summarize_table3(out, config)
    result.seconds = time.perf_counter() - started
    write_table3(out, config, result)
    return result


def _methods(config: Table3Config) -> list[str]:
    return [m for m, (_, arch, _) in METHODS.items() if arch in config.archs]


def folds_done(out: Path, config: Table3Config) -> dict[str, list[int]]:
    """Per method, the folds whose results are in ``out``."""
    return {m: [f for f in range(config.folds) if (out / f"fold{f}" / f"{m}.json").is_file()]
            for m in _methods(config)}


def completed_folds(out: Path, config: Table3Config) -> list[int]:
    """The folds the table pools, so that all its rows pool the same cases: among the fold sets the
    methods have finished, the one that maximizes (folds x methods that finished all of them); ties go
    to more folds. With a complete run this is every fold."""
    done = {m: set(f) for m, f in folds_done(out, config).items() if f}
    best: tuple[int, int, list[int]] = (0, 0, [])
    for candidate in {frozenset(f) for f in done.values()}:
        rows = sum(1 for f in done.values() if candidate <= f)
        score = (len(candidate) * rows, len(candidate), sorted(candidate))
        if score[:2] > best[:2]:
            best = score
    return best[2]


def summarize_table3(out: Path, config: Table3Config) -> dict[str, dict]:
    """Pool every method's out-of-fold results over :func:`completed_folds` and summarize them; a partial
    run (interrupted, or ``run_folds``) gives a table over fewer folds, named in ``table3.md``."""
    summaries: dict[str, dict] = {}
    folds = completed_folds(out, config)
    if not folds:
        return summaries
    for method in _methods(config):
        paths = [out / f"fold{fold}" / f"{method}.json" for fold in folds]
        if not all(p.is_file() for p in paths):
            continue
        cases: list[CaseOutput] = []
        train_seconds = 0.0
        for path in paths:
            payload = json.loads(path.read_text())
            train_seconds += float(payload.get("train_seconds", 0.0))
            cases.extend(CaseOutput(**c) for c in payload["cases"])
        summary = summarize_grading([c.graded() for c in cases])
        summary["train_seconds"] = round(train_seconds, 1)
        summary["folds"] = folds
        summaries[method] = summary
    return summaries


def write_table3(out: Path, config: Table3Config, result: Table3Result) -> None:
    """``table3.json`` (settings, run time, per-method summary) and ``table3.md`` (the Table 3 analogue)."""
    roi_model = out / "rois_model.json"
    roi_model_id = json.loads(roi_model.read_text()) if roi_model.is_file() else None
    payload = {"config": config.training_key(), "archs": list(config.archs), "roi_model": roi_model_id,
               "seconds": round(result.seconds, 1), "trained_now": result.trained, "reused": result.reused,
               "methods": result.summaries}
    (out / "table3.json").write_text(json.dumps(payload, indent=1))
    keys: list[str] = []
    for summary in result.summaries.values():
        for k in summary.get("per_category_accuracy", {}):
            if k not in keys:
                keys.append(k)
    order = [k for k in ("3", "4A", "4B", "4C", "4", "5") if k in keys]
    folds_used = next(iter(result.summaries.values()))["folds"] if result.summaries else []
    lines = [
        "# Table 3 analogue: one-stage vs two-stage grading",
        "",
        f"> {RESEARCH_USE_ONLY}.",
        "",
        f"Data: {', '.join(config.data)}; {config.folds}-fold patient-disjoint cross-validation (seed "
        f"{config.seed}); {config.epochs} epochs per network, width {config.width}, one-stage input "
        f"{config.whole_size} px, two-stage crop {config.crop_size} px (margin {config.margin}), optimizer "
        f"{config.optimizer}; ROIs from ROI-CNN {roi_model_id or '–'}. Run time of this invocation "
        f"{result.seconds:.0f} s. Per-category accuracy = recall of the pooled out-of-fold predictions; a "
        "case whose ROI the ROI-CNN misses counts as wrong.",
        "",
        f"Pooled over folds {', '.join(str(f + 1) for f in folds_used) or '–'} of {config.folds}.",
        "",
        "| method | n | " + " | ".join(order) + " | accuracy | macro AUC | malignancy AUC |",
        "|---|---|" + "---|" * len(order) + "---|---|---|",
    ]
    for method, summary in result.summaries.items():
        per = summary.get("per_category_accuracy", {})
        cells = [_fmt(per.get(k)) for k in order]
        lines.append(f"| {METHODS[method][0]} | {summary['n']} | " + " | ".join(cells)
                     + f" | {_fmt(summary.get('accuracy'))} | {_fmt(summary.get('macro_auc'))} | "
                       f"{_fmt(summary.get('malignancy_auc'))} |")
    missing = {m: f for m, f in folds_done(out, config).items() if m not in result.summaries}
    for method, done in missing.items():
        lines.append(f"| {METHODS[method][0]} | not finished on these folds (done: "
                     f"{', '.join(str(f + 1) for f in done) or 'none'}) |" + " |" * (len(order) + 3))
    lines.append("| *paper: Refined ROI-CNN + G-CNN* | 2238 | "
                 + " | ".join(_fmt(PAPER_TABLE3_REFINED_GCNN.get(k)) for k in order) + " | – | – | – |")
    lines += ["", "Categories: " + ", ".join(CATEGORIES)
              + " (2 graded as 3, BUS-BRA's 4 as 4A+4B+4C summed).", ""]
    (out / "table3.md").write_text("\n".join(lines))


def _fmt(value: object) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------ command line

CLI_HELP = """The paper's Table 3 experiment, from a source checkout (needs the train extra: torch).

One-stage classifiers (G-CNN, VGG16, ResNet50 on the whole image) against two-stage ones (the lesion
crop around the shipped ROI-CNN's ROI, without and with Chan–Vese refinement, then G-CNN, VGG16 or
ResNet50), trained and tested by patient-disjoint k-fold cross-validation, at the edge width. Writes
OUT/table3.md and OUT/table3.json (per-category accuracy per method, the Table 3 analogue). Every
(fold, network) result is cached in OUT: run the same command again to resume. OUT also caches decoded
images: keep it outside any repository. Measured on two idle CPU cores with breast_lesions_usg (151
lesions): 5 folds at --whole-size 288 --crop-size 128 --epochs 20 --width 0.125 took 19 minutes; adding
BUS-BRA or widening the networks multiplies that: run long ones with nohup.

Examples ($DATA: the folder with the public datasets; any manifest folder DIR works, docs/data.md):
  python -m research.table3 --data $DATA/breast_lesions_usg --out /tmp/t3      # 5 folds
  python -m research.table3 --data $DATA/breast_lesions_usg --out /tmp/t3_a --epochs 20 \\
      --width 0.125 --whole-size 288 --crop-size 128 --optimizer adamw    # docs/research.md
  python -m research.table3 --data DIR --folds 3 --epochs 4 --width 0.125 --out /tmp/t3_small
  python -m research.table3 --smoke --out /tmp/t3_smoke     # phantom data, tiny networks, seconds

Exit status: 0 done; 2 bad data or options.
"""

SMOKE_PHANTOM_COUNT = 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m research.table3``."""
    parser.add_argument("--data", type=Path, action="append", default=None, metavar="DIR",
                        help="manifest folder with masks and BI-RADS labels (repeatable); "
                             "with --smoke and no --data: a phantom dataset written into OUT")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="results folder (resumable; caches decoded images: keep it out of "
                             "repositories)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn.onnx and g_cnn.onnx for the ROIs "
                             "(default: shipped models/)")
    parser.add_argument("--folds", type=int, default=5,
                        help="cross-validation folds (default 5, as the paper)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per network (default 10)")
    parser.add_argument("--width", type=float, default=0.25, help="width multiplier of every network (0.25)")
    parser.add_argument("--crop-size", type=int, default=128, help="two-stage crop side in px (default 128)")
    parser.add_argument("--whole-size", type=int, default=288,
                        help="one-stage image side in px (default 288, as the paper)")
    parser.add_argument("--archs", default="grader,vgg16,resnet50",
                        help="comma-separated architectures: grader (G-CNN), vgg16, resnet50 (default all)")
    parser.add_argument("--stages", default="one_stage,two_stage",
                        help="one_stage and/or two_stage (default both); run one part now and the other "
                             "later into the same --out")
    parser.add_argument("--run-folds", default=None, metavar="LIST",
                        help="train and test only these folds now (1-based, comma-separated, e.g. 1,2,3); "
                             "the table pools the folds every method has finished")
    parser.add_argument("--summarize", action="store_true",
                        help="train nothing: rewrite table3.md/json from the results already in --out")
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                        help="sgd (the paper's, default) or adamw")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="folds, initialisation, augmentation (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny settings for a quick check: 2 folds, 1 epoch, width 0.0625, 32 px inputs; "
                             f"phantom data ({SMOKE_PHANTOM_COUNT} images) when no --data")


def run(args: argparse.Namespace) -> int:
    try:  # before any work: every part of table3 trains or loads torch networks
        import torch  # noqa: F401
    except ImportError as error:
        print(f"python -m research.table3: needs the train extra (pip install 'sonograde[train]'): {error}",
              file=sys.stderr)
        return 2
    data = [str(d) for d in args.data or []]
    folds, epochs, width = args.folds, args.epochs, args.width
    crop, whole, archs = args.crop_size, args.whole_size, args.archs
    if args.smoke:
        folds, epochs, width, crop, whole = 2, 1, 0.0625, 32, 32
        if not data:
            from capture.phantom_dataset import write_dataset

            data = [str(write_dataset(args.out / "phantom", SMOKE_PHANTOM_COUNT, seed=0, size=(160, 128)))]
    if not data:
        print("python -m research.table3: give --data DIR (or --smoke for phantom data)", file=sys.stderr)
        return 2
    models = str(args.models) if args.models else None
    try:
        run_folds = (tuple(int(f) - 1 for f in args.run_folds.split(",") if f.strip())
                     if args.run_folds else None)
    except ValueError:
        print(f"python -m research.table3: --run-folds takes fold numbers like 1,2,3, got {args.run_folds!r}",
              file=sys.stderr)
        return 2
    config = Table3Config(data=tuple(data), out=str(args.out), models=models,
                          folds=folds, epochs=epochs, width=width, crop_size=crop, whole_size=whole,
                          optimizer=args.optimizer, lr=args.lr, batch_size=args.batch_size,
                          archs=tuple(a.strip() for a in archs.split(",") if a.strip()), seed=args.seed,
                          stages=tuple(x.strip() for x in args.stages.split(",") if x.strip()),
                          run_folds=() if args.summarize else run_folds,
                          threads=args.threads)
    try:
        result = run_table3(config)
    except ExperimentError as error:
        print(f"python -m research.table3: {error}", file=sys.stderr)
        return 2
    print(RESEARCH_USE_ONLY)
    print((Path(config.out) / "table3.md").read_text())
    print(f"run time {result.seconds:.0f} s ({result.trained} networks trained now, {result.reused} reused); "
          f"results in {config.out}/table3.json", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m research.table3 ...`` from a source checkout (research code is not installed)."""
    parser = argparse.ArgumentParser(prog="python -m research.table3", description=CLI_HELP,
                                      epilog=RESEARCH_USE_ONLY,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
