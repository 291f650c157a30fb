"""Held-out evaluation of exported ONNX models, for the model cards (what ships is what is measured).

ROI-CNN (``evaluate_roi``): on the test side of ``engine.splits.make_split`` (BUS-BRA: the held-out official
fold), each image goes through exactly the pipeline's first two stages with the pipeline's own parameters
(``engine.grader.GraderConfig``, what ``TwoStageGrader`` runs): resize to the model's input size S (its
``sonograde.input_size``: 224 for the default ROI-CNN, 288 for the paper's), ``roi_input``, the ONNX ROI-
CNN, the area filter (threshold, smallest component fraction), then the pipeline's refinement
(``refine.stage.refine_lesion`` with ``config.refinement``), and beside it other refinements (the paper's
Chan–Vese on the S grid, the native ones) on the same probability map. DSC is computed at S x S (against the
mask resized as in training; the ``dice288_*`` keys) and at the image's own size, HD95 and the average
symmetric surface distance at the image's own size in pixels and, where the manifest gives
``pixel_size_mm``, in mm.

G-CNN (``evaluate_grader``): on the test side of the split, five-way datasets only for the five-way
metrics (accuracy, per-category accuracy, confusion matrix, one-vs-rest and macro AUC, malignancy AUC
against pathology) and the majority-class baseline (the most frequent training category), once with the
ground-truth masks and once with the masks of the two-stage pipeline (ROI-CNN + refinement).

Cross-validation (``--cv-folds K`` with K models trained by ``sonograde train grader|roi --cv-folds K
--test-fold i``): model i is evaluated on fold i and the K folds are pooled, so every five-way case is
graded (every image segmented) once by a network that never saw it; each case's baseline is its own fold's
training majority. A grader's first stage can be one ROI-CNN or one per fold (``--roi-model`` K times).

Command line: ``sonograde evaluate roi|grader`` (sonograde/commands/evaluate_models.py).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from engine import contract
from engine.backends.ort import cpu_session
from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.birads import FINE_FOUR, malignancy_score
from engine.data.datasets import grader_allowed, resize_mask, resize_to
from engine.data.manifest import ManifestRecord, load_gray, load_mask
from engine.grader import GraderConfig
from engine.grading_metrics import (
    binomial_p,
    bootstrap_interval,
    confusion_matrix,
    macro_auc,
    one_vs_rest_auc,
    paired_sign_p,
    roc_auc,
)
from engine.preprocess import grader_input, roi_input
from refine.metrics import dice
from refine.stage import RefinedLesion, refine_lesion

PIPELINE_CONFIG = GraderConfig()  # the shipped pipeline's refinement: what ships is what is measured
LOCATED_DICE = 0.3  # "located": the pipeline's refined mask overlaps the annotation with at least this DSC


def _session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return cpu_session(path, options)


def _metadata(session: ort.InferenceSession) -> dict[str, str]:
    return contract.read_metadata(session)


def _upsample(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def locate_and_refine(session: ort.InferenceSession, gray: np.ndarray, refine: bool = True,
                      config: GraderConfig = PIPELINE_CONFIG
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, RefinedLesion]:
    """(image on the ROI grid, probability map, raw mask, refined lesion), the grid being the model's
    S x S input size: ``TwoStageGrader.locate`` and ``refine``
    on an ONNX Runtime session of the ROI-CNN alone (no G-CNN needed), with the pipeline's parameters
    ``config`` and its refine function (``refine.stage.refine_lesion``; tests check the masks are the
    grader's). ``refine=False`` gives refinement ``"none"`` (the raw ROI at the frame's size)."""
    from refine.area_filter import area_filter

    size = roi_size(session)
    small = resize_to(gray, size)
    prob = session.run(None, {"image": roi_input(small, size)[None]})[0][0, 0]
    raw = area_filter(prob, threshold=config.threshold, min_fraction=config.min_fraction)
    parameters = config.refine_parameters()
    if not refine:
        parameters = replace(parameters, refinement="none")
    return small, prob, raw, refine_lesion(gray, small, prob, raw, parameters)


def roi_size(session: ort.InferenceSession) -> int:
    """S of a ROI-CNN session's (N, 1, S, S) input: its static input shape, else its metadata."""
    side = session.get_inputs()[0].shape[-1]
    return side if isinstance(side, int) and side > 0 else contract.roi_input_size(_metadata(session))


def pipeline_mask(session: ort.InferenceSession, gray: np.ndarray) -> np.ndarray:
    """The refined lesion mask of ``locate_and_refine`` at the image's own size (the pipeline's own
    refinement); all False when no lesion is found."""
    return locate_and_refine(session, gray)[3].mask


def _mask_scores(mask: np.ndarray, truth: np.ndarray, pixel_size_mm: float | None, name: str) -> dict:
    """DSC, HD95 and average symmetric surface distance of one frame-sized mask, in px and (with a pixel
    size) in mm; a missed lesion gives DSC 0 and infinite distances (counted as ``missed``)."""
    from refine.metrics import segmentation_metrics

    m = segmentation_metrics(mask, truth, pixel_size_mm=pixel_size_mm)
    row = {f"dice_full_{name}": m.dsc, f"hd95_full_{name}_px": m.hd95, f"asd_full_{name}_px": m.avg_dist}
    if pixel_size_mm is not None:
        row[f"hd95_full_{name}_mm"] = m.hd95_mm
        row[f"asd_full_{name}_mm"] = m.avg_dist_mm
    return row


def evaluate_roi(model: str | Path, records: list[ManifestRecord], *, refine: bool = True,
                 refinements: tuple[str, ...] | None = None, native_level: float | None = None,
                 progress: bool = True) -> dict:
    """DSC (mean, median), HD95 and average symmetric surface distance of the raw mask and of each
    refinement on ``records`` with masks, at the image's own size (mm where the manifest gives a pixel
    size). ``refined`` is the pipeline's refinement (``PIPELINE_CONFIG.refinement``); ``refinements``
    adds others side by side (``refine.stage.REFINEMENTS``; default: the paper's and the pipeline's).
    ``native_level`` overrides the native refinements' outline level. ``refine=False`` scores the raw
    mask only."""
    from tqdm import tqdm

    chosen = PIPELINE_CONFIG.refinement
    others = tuple(refinements) if refinements is not None else ("paper",)
    others = tuple(dict.fromkeys(r for r in (*others, chosen) if r != "none")) if refine else ()
    session = _session(model)
    rows = []
    for record in tqdm([r for r in records if r.mask is not None], desc="evaluate roi", disable=not progress):
        gray = load_gray(record.image)
        truth = load_mask(record)
        assert truth is not None
        small, prob, raw, _ = locate_and_refine(session, gray, refine=False)
        truth_288 = resize_mask(truth, prob.shape[-1])
        pixel = record.pixel_size_mm or None
        row = {"id": f"{record.dataset}/{record.id}",
               "dice288_threshold": dice(prob > 0.5, truth_288), "dice288_raw": dice(raw, truth_288)}
        row.update(_mask_scores(_upsample(raw, truth.shape), truth, pixel, "raw"))
        for name in others:
            parameters = replace(PIPELINE_CONFIG.refine_parameters(), refinement=name)
            if native_level is not None:
                parameters = replace(parameters, native_level=native_level)
            t0 = time.perf_counter()
            lesion = refine_lesion(gray, small, prob, raw, parameters)
            row[f"refine_ms_{name}"] = (time.perf_counter() - t0) * 1e3
            scores = _mask_scores(lesion.mask, truth, pixel, name)
            row.update(scores)
            if name == chosen:  # the pipeline's refinement also under the name the model cards use
                row["dice288_refined"] = dice(lesion.mask_grid, truth_288)
                row.update({k.replace(f"_{name}", "_refined", 1): v for k, v in scores.items()})
        rows.append(row)
    return {"summary": roi_summary(rows), "rows": rows, "metadata": _metadata(session),
            "refinement": chosen if refine else "none", "refinements": list(others)}


def roi_summary(rows: list[dict]) -> dict:
    """Mean, median and count of non-finite values of every per-image measure (over the images that have
    it: mm distances only where a pixel size is known), and how many images the refined mask locates
    (DSC >= ``LOCATED_DICE`` with the annotation at the image's own size)."""
    summary: dict = {"images": len(rows)}
    keys = list(dict.fromkeys(key for row in rows for key in row if key != "id"))
    for key in keys:
        values = np.array([r[key] for r in rows if key in r], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[key] = {"mean": float(finite.mean()) if finite.size else None,  # None: no finite value
                        "median": float(np.median(finite)) if finite.size else None,
                        "p99": float(np.percentile(finite, 99)) if finite.size else None,
                        "n": int(values.size), "missed": int((~np.isfinite(values)).sum())}
    if rows and "dice_full_refined" in rows[0]:
        summary["located"] = int(sum(r["dice_full_refined"] >= LOCATED_DICE for r in rows))
    return summary


def pool_roi_results(results: list[dict]) -> dict:
    """One ROI report over several ``evaluate_roi`` results on disjoint images (the K folds of a
    cross-validation: every image segmented once by a ROI-CNN that never saw it)."""
    rows = [row for result in results for row in result["rows"]]
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("an image appears in two of the pooled results: are the test folds disjoint?")
    return {"summary": {"folds": len(results), **roi_summary(rows)}, "rows": rows,
            "model_ids": [r["metadata"].get(contract.MODEL_ID) for r in results]}


def _five_way_label(record: ManifestRecord) -> int | None:
    allowed = grader_allowed(record.birads)
    if allowed is None or allowed.sum() != 1:
        return None
    return int(np.argmax(allowed))


def grader_report(probs: np.ndarray, labels: np.ndarray, malignant: np.ndarray,
                  majority: int | np.ndarray, graded: np.ndarray | None = None) -> dict:
    """Five-way metrics of one set of predictions against the majority-class baseline.

    ``majority`` is the baseline's category (index), or one per case when cases come from several
    cross-validation folds, each with its own training majority. ``graded`` (bool per case, default all)
    marks the cases the two-stage pipeline graded; where it found no lesion the case counts as wrong in
    every accuracy (its uniform probabilities only enter the AUCs, as ties), since the pipeline answers
    no category there. Besides the point estimates: a 95 % bootstrap interval of accuracy and macro AUC,
    the one-sided exact binomial p-value of the accuracy against the baseline's accuracy, and the exact
    McNemar p-value of grader vs baseline on the same cases."""
    graded = np.ones(len(labels), bool) if graded is None else np.asarray(graded, bool)
    predicted = probs.argmax(1)
    # Confusion over the graded cases; a row's accuracy is over all its cases (misses are wrong).
    matrix = confusion_matrix(labels[graded], predicted[graded], len(GRADER_CATEGORIES))
    correct = (predicted == labels) & graded
    per_category = {c: (float(correct[labels == k].mean()) if (labels == k).any() else None)
                    for k, c in enumerate(GRADER_CATEGORIES)}
    baseline = np.broadcast_to(np.asarray(majority), labels.shape)
    baseline_correct = baseline == labels
    known = malignant >= 0
    return {
        "cases": len(labels),
        "accuracy": float(correct.mean()),
        "accuracy_95ci": bootstrap_interval(lambda c: float(c.mean()), (correct,)),
        "per_category_accuracy": per_category,
        "confusion_rows_truth_cols_pred": matrix.tolist(),
        "not_graded": int((~graded).sum()),
        "one_vs_rest_auc": dict(zip(GRADER_CATEGORIES, one_vs_rest_auc(probs, labels), strict=True)),
        "macro_auc": macro_auc(probs, labels),
        "macro_auc_95ci": bootstrap_interval(macro_auc, (probs, labels)),
        "malignancy_auc": roc_auc(malignancy_score(probs[known]), malignant[known] == 1),
        "majority_class": GRADER_CATEGORIES[int(Counter(baseline.tolist()).most_common(1)[0][0])],
        "majority_accuracy": float(baseline_correct.mean()),
        "majority_macro_auc": 0.5,
        "accuracy_vs_majority_binomial_p": binomial_p(int(correct.sum()), len(labels),
                                                      float(baseline_correct.mean())),
        "accuracy_vs_majority_mcnemar_p": paired_sign_p(correct, baseline_correct),
    }


def evaluate_grader(model: str | Path, roi_model: str | Path | None, test: list[ManifestRecord],
                    train: list[ManifestRecord], *, progress: bool = True) -> dict:
    """Five-way metrics on the five-way test cases, with ground-truth masks and (if ``roi_model``) with the
    two-stage pipeline's refined masks."""
    from tqdm import tqdm

    session = _session(model)
    meta = _metadata(session)
    grader_in = contract.GraderInput.from_metadata(meta)
    size, margin, mask_channel, view = (grader_in.input_size, grader_in.roi_margin, grader_in.mask_channel,
                                        grader_in.view)
    roi_session = _session(roi_model) if roi_model else None
    cases = [r for r in test if r.mask is not None and _five_way_label(r) is not None
             and r.birads not in ("4",)]
    fine_sets = {r.dataset for r in cases if r.birads in FINE_FOUR}
    cases = [r for r in cases if r.dataset in fine_sets]
    train_labels = [_five_way_label(r) for r in train if r.dataset in fine_sets and r.mask is not None]
    majority = Counter(x for x in train_labels if x is not None).most_common(1)[0][0]
    labels, malignant, gt_probs, pipe_probs, found, overlap = [], [], [], [], [], []
    for record in tqdm(cases, desc="evaluate grader", disable=not progress):
        gray = load_gray(record.image)
        truth = load_mask(record)
        assert truth is not None
        labels.append(_five_way_label(record))
        malignant.append({"malignant": 1, "benign": 0}.get(record.pathology or "", -1))
        x = grader_input(gray, truth, size=size, margin=margin, mask_channel=mask_channel, view=view)
        gt_probs.append(session.run(None, {"image": x[None]})[0][0])
        if roi_session is not None:
            full = pipeline_mask(roi_session, gray)
            found.append(bool(full.any()))
            overlap.append(dice(full, truth))
            if full.any():
                x = grader_input(gray, full, size=size, margin=margin, mask_channel=mask_channel,
                                 view=view)
                pipe_probs.append(session.run(None, {"image": x[None]})[0][0])
            else:  # no lesion found: not graded (wrong in every accuracy), uniform probabilities for AUCs
                pipe_probs.append(np.full(len(GRADER_CATEGORIES), 1.0 / len(GRADER_CATEGORIES), np.float32))
    labels_a, malignant_a = np.array(labels), np.array(malignant)
    result = {"datasets": sorted(fine_sets), "metadata": meta,
              "ground_truth_masks": grader_report(np.array(gt_probs), labels_a, malignant_a, majority),
              "ids": [f"{r.dataset}/{r.id}" for r in cases]}
    per_case = [{"id": f"{r.dataset}/{r.id}", "label": int(labels[i]), "malignant": int(malignant[i]),
                 "majority": int(majority), "ground_truth_masks": [float(v) for v in gt_probs[i]]}
                for i, r in enumerate(cases)]
    if roi_session is not None:
        result["two_stage_masks"] = grader_report(np.array(pipe_probs), labels_a, malignant_a, majority,
                                                  graded=np.array(found, bool))
        result["two_stage_masks"]["lesion_found"] = int(sum(found))
        result["two_stage_masks"]["lesion_located"] = int(sum(d >= LOCATED_DICE for d in overlap))
        for i, row in enumerate(per_case):
            row["two_stage_masks"] = [float(v) for v in pipe_probs[i]]
            row["lesion_found"] = bool(found[i])
            row["pipeline_dice"] = float(overlap[i])  # against the annotation, at the image's own size
    result["per_case"] = per_case
    return result


def pool_grader_results(results: list[dict]) -> dict:
    """One report over the per-case predictions of several ``evaluate_grader`` results (e.g. the K
    folds of a cross-validation: every case predicted once by a network that never saw it), each case
    against its own fold's majority class."""
    rows = [row for result in results for row in result["per_case"]]
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("a case appears in two of the pooled results: are the test folds disjoint?")
    labels = np.array([row["label"] for row in rows])
    malignant = np.array([row["malignant"] for row in rows])
    majority = np.array([row["majority"] for row in rows])
    pooled: dict = {"folds": len(results), "datasets": sorted({d for r in results for d in r["datasets"]}),
                    "model_ids": [r["metadata"].get(contract.MODEL_ID) for r in results]}
    for key in ("ground_truth_masks", "two_stage_masks"):
        if all(key in row for row in rows):
            graded = np.array([row.get("lesion_found", True) for row in rows]) if key == "two_stage_masks" \
                else None
            pooled[key] = grader_report(np.array([row[key] for row in rows]), labels, malignant, majority,
                                        graded=graded)
    if "two_stage_masks" in pooled:
        pooled["two_stage_masks"]["lesion_found"] = int(sum(row["lesion_found"] for row in rows))
        if all("pipeline_dice" in row for row in rows):
            pooled["two_stage_masks"]["lesion_located"] = int(sum(row["pipeline_dice"] >= LOCATED_DICE
                                                                  for row in rows))
    pooled["per_case"] = rows
    return pooled


def average_grader_results(results: list[dict]) -> dict:
    """One report of the mean of several results' probabilities over the same cases (an ensemble of
    networks, e.g. the pooled cross-validations of several initializations on one fold assignment)."""
    by_id = [{row["id"]: row for row in result["per_case"]} for result in results]
    ids = sorted(by_id[0])
    if any(sorted(cases) != ids for cases in by_id[1:]):
        raise ValueError("the results to average hold different cases: use the same data and folds")
    first = by_id[0]
    if any(cases[i]["majority"] != first[i]["majority"] for cases in by_id[1:] for i in ids):
        raise ValueError("the results to average have different majority classes: use one fold assignment")
    labels = np.array([first[i]["label"] for i in ids])
    malignant = np.array([first[i]["malignant"] for i in ids])
    majority = np.array([first[i]["majority"] for i in ids])
    averaged: dict = {"members": len(results)}
    for key in ("ground_truth_masks", "two_stage_masks"):
        if all(key in cases[i] for cases in by_id for i in ids):
            probs = np.mean([[cases[i][key] for i in ids] for cases in by_id], axis=0)
            graded = None
            if key == "two_stage_masks":  # one ROI-CNN for all members: a miss is a miss for the mean
                graded = np.array([all(cases[i].get("lesion_found", True) for cases in by_id) for i in ids])
            averaged[key] = grader_report(probs, labels, malignant, majority, graded=graded)
    return averaged
