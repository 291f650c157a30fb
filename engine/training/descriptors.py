"""Training of the descriptor and malignancy model (``sonograde train descriptors``).

Runtime: ``engine.descriptors``.

Steps, each resumable from the output folder (outside the repository):

1. ``extract``: every lesion of the given datasets goes through the shipped two-stage pipeline exactly as
   ``sonograde grade`` runs it (ROI-CNN, area filter, Chan–Vese, G-CNN); the hand-made features of the
   PIPELINE's refined mask are kept, and those of the annotated mask (with the G-CNN read on it) as an
   upper bound, plus both masks' sizes and 128 px lesion crops. One cache file per dataset, written every
   ``CHECKPOINT_EVERY`` cases, so an interrupted run continues where it stopped.
2. ``fit``: standardized L2 logistic regression heads (numpy / scipy L-BFGS, no scikit-learn), each on
   the cases that carry its label (partial labels: a missing label is never a negative), the malignancy
   head on every dataset with pathology, Platt-calibrated on out-of-fold predictions grouped by patient;
   cross-validation over BrEaST-Lesions_USG, its official test split, BUS-BRA's fold 1.
3. the model JSON (``engine.descriptors.FORMAT``) and a metrics JSON + reliability diagram.

Labels: BrEaST-Lesions_USG's manifest columns ``shape``, ``margin`` ("not circumscribed - a&b"),
``echogenicity``, ``posterior_features``, ``calcifications``; ``pathology`` (benign/malignant) of all three
datasets.
"""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from engine import agreement
from engine.birads import CATEGORIES
from engine.data.manifest import ManifestRecord
from engine.grading_metrics import bootstrap_interval, roc_auc
from engine.lexicon import MARGIN_SUBTYPES, READER_DESCRIPTORS, manifest_descriptor_labels

CHECKPOINT_EVERY = 50
CROP_SIZE = 128

def descriptor_labels(record: ManifestRecord) -> dict[str, str | None]:
    """The lexicon labels a record carries (None where it has none), as training reads them: shape, margin,
    echo_pattern, posterior_features, calcifications and ``subtype:NAME`` ("yes"/"no" for a
    not-circumscribed margin whose reader named its subtypes, else None). The words are read by
    ``engine.lexicon.manifest_descriptor_labels``."""
    labels = manifest_descriptor_labels(record.extra)
    out: dict[str, str | None] = {name: labels.value(name) for name in READER_DESCRIPTORS}
    named = labels.margin_subtypes if labels.value("margin") == "not circumscribed" else None
    for name in MARGIN_SUBTYPES:
        out[f"subtype:{name}"] = None if named is None else ("yes" if named[name] else "no")
    return out


def _square_crop(
    gray: np.ndarray, mask: np.ndarray, size: int = CROP_SIZE, margin: float = 0.25
) -> np.ndarray:
    """The lesion's square crop (the G-CNN's view: box squared, 25 % margin) as uint8 size x size."""
    import cv2

    from engine.preprocess import _crop_square, square_crop_box

    box = cv2.boundingRect(mask.astype(np.uint8))
    x0, y0, side = square_crop_box(box, margin)
    crop = _crop_square(gray, x0, y0, side)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if side > size else cv2.INTER_LINEAR)


def extract(
    records: Sequence[ManifestRecord],
    out_dir: Path,
    *,
    models_dir: Path | None = None,
    threads: int = 2,
    progress: bool = True,
) -> dict[str, dict]:
    """Run the pipeline on every record with a lesion mask; cached per record id in ``out_dir``.

    Returns {"dataset/id": case} with keys: dataset, id, group, fold, labels, pathology, birads,
    pixel_size_mm, found, dice, pipe_features, pipe_probs, pipe_size_px, pipe_crop, ann_features,
    ann_probs, ann_size_px, ann_crop, frame_shape.
    """
    from tqdm import tqdm

    from engine.data.manifest import load_gray, load_mask
    from engine.descriptors import lesion_features
    from engine.grader import TwoStageGrader
    from refine.measure import lesion_size
    from refine.metrics import dice

    out_dir.mkdir(parents=True, exist_ok=True)
    cache_path = out_dir / "cases.pkl"
    cases: dict[str, dict] = {}
    if cache_path.is_file():
        with cache_path.open("rb") as handle:
            cases = pickle.load(handle)
    todo = [r for r in records if r.mask is not None and f"{r.dataset}/{r.id}" not in cases]
    if not todo:
        return cases
    grader = TwoStageGrader.from_models_dir(models_dir, threads=threads)
    grader.warm_up()

    def save() -> None:
        tmp = cache_path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            pickle.dump(cases, handle, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(cache_path)

    for n, record in enumerate(tqdm(todo, desc="pipeline features", unit="lesion", disable=not progress)):
        gray = load_gray(record.image)
        ann = load_mask(record)
        if ann is None or not ann.any():
            continue
        result = grader.grade(gray)
        case: dict = {
            "dataset": record.dataset,
            "id": record.id,
            "group": record.group,
            "fold": record.fold,
            "labels": descriptor_labels(record),
            "pathology": record.pathology,
            "birads": record.birads,
            "pixel_size_mm": record.pixel_size_mm,
            "frame_shape": gray.shape,
            "found": result.lesion_found,
        }
        ann_probs = grader.grader.run(grader.grader_input(gray, ann)[None])[0]
        case.update(
            ann_features=lesion_features(gray, ann, ann_probs),
            ann_probs=ann_probs,
            ann_size_px=lesion_size(ann),
            ann_crop=_square_crop(gray, ann),
        )
        if result.lesion_found:
            probs = np.array([result.probabilities[c] for c in grader.categories], dtype=np.float32)
            mask = result.refined_mask
            case.update(
                dice=float(dice(mask, ann)),
                pipe_features=lesion_features(gray, mask, probs),
                pipe_probs=probs,
                pipe_size_px=lesion_size(mask),
                pipe_crop=_square_crop(gray, mask),
            )
        else:
            case.update(dice=0.0, pipe_features=None, pipe_probs=None, pipe_size_px=None, pipe_crop=None)
        cases[f"{record.dataset}/{record.id}"] = case
        if (n + 1) % CHECKPOINT_EVERY == 0:
            save()
    save()
    return cases


# --------------------------------------------------------------------------------------------------------
# Logistic regression (numpy + scipy), standardized features, L2 on the weights (not the intercepts).


def fit_logistic(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, lam: float = 1.0, sample_weight: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial (n_classes > 2) or binary logistic regression; returns coef (K or 1, F), intercept.

    Minimises sum_i w_i * NLL_i / sum_i w_i * n + lam / 2 * ||W||^2 / n (n = cases)."""
    from scipy.optimize import minimize

    n, f = x.shape
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = w * n / w.sum()
    k = 1 if n_classes == 2 else n_classes
    onehot = np.eye(n_classes)[y] if k > 1 else None

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        coef = theta[: k * f].reshape(k, f)
        b = theta[k * f :]
        z = x @ coef.T + b
        if k == 1:
            z = z[:, 0]
            nll = np.logaddexp(0, z) - y * z
            p = 1 / (1 + np.exp(-z))
            g = (p - y) * w
            grad_c = (g[:, None] * x).sum(0)[None] / n + lam * coef / n
            grad_b = np.array([g.sum() / n])
        else:
            zmax = z.max(1, keepdims=True)
            lse = zmax[:, 0] + np.log(np.exp(z - zmax).sum(1))
            nll = lse - (z * onehot).sum(1)
            p = np.exp(z - lse[:, None])
            g = (p - onehot) * w[:, None]
            grad_c = g.T @ x / n + lam * coef / n
            grad_b = g.sum(0) / n
        value = float((w * nll).sum() / n + 0.5 * lam * (coef**2).sum() / n)
        return value, np.concatenate([grad_c.ravel(), grad_b])

    theta0 = np.zeros(k * f + k)
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 2000})
    coef = res.x[: k * f].reshape(k, f)
    return coef, res.x[k * f :]


def predict_logistic(x: np.ndarray, coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities (N, n_classes)."""
    z = x @ coef.T + intercept
    if n_classes == 2 and coef.shape[0] == 1:
        p = 1 / (1 + np.exp(-z[:, 0]))
        return np.stack([1 - p, p], 1)
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    return (len(y) / (n_classes * np.maximum(counts, 1)))[y]


def fit_platt(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Platt scaling on logit scores: P = sigmoid(a * s + b), fitted by maximum likelihood."""
    coef, b = fit_logistic(scores[:, None], y.astype(np.float64), 2, lam=1e-6)
    return float(coef[0, 0]), float(b[0])


# --------------------------------------------------------------------------------------------------------
# Metrics


def cohen_kappa(y: np.ndarray, p: np.ndarray, n_classes: int, weights: str | None = None) -> float:
    """``engine.agreement.cohen_kappa`` as the cross-validation arrays want it: NaN without cases, 0 where
    the expected disagreement is 0 (one class throughout, so agreement is no better than chance)."""
    if len(y) == 0:
        return float("nan")
    value = agreement.cohen_kappa(y, p, n_classes, weights)
    return 0.0 if value is None else value


def bootstrap_ci(metric, arrays: Sequence[np.ndarray], *, n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``metric`` (``engine.grading_metrics.bootstrap_interval``)."""
    return bootstrap_interval(metric, tuple(arrays), resamples=n_boot, seed=seed)


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (``engine.grading_metrics.roc_auc``; NaN where one class is absent)."""
    return roc_auc(np.asarray(score), np.asarray(y))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """``engine.agreement.expected_calibration_error``; 0 without cases."""
    value = agreement.expected_calibration_error(y, p, bins)
    return 0.0 if value is None else value


def data_hash(records: Sequence[ManifestRecord]) -> str:
    """SHA-256 over the sorted "dataset/id|label columns" of the records used (not the pixels)."""
    h = hashlib.sha256()
    for r in sorted(records, key=lambda r: (r.dataset, r.id)):
        h.update(f"{r.dataset}/{r.id}|{r.pathology}|{r.birads}|{sorted(r.extra.items())}\n".encode())
    return h.hexdigest()


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# --------------------------------------------------------------------------------------------------------
# Design matrices, cross-validation, the preregistered choice, the final fit.

BREAST = "breast_lesions_usg"
LEARNED = READER_DESCRIPTORS
PRIMARY = ("shape", "margin", "echo_pattern", "posterior_features")  # the preregistered mean-kappa set
LAMBDA = 1.0
EMBED_DIMS = 32
CV_FOLDS, CV_SEED, TEST_SPLIT_SEED = 5, 3, 0
BUDGET_MS = 3.0  # the most the explained assessment may add to the classify stage, p50
MIN_DICE = 0.3  # a pipeline mask overlapping the annotation less than this trains nothing (wrong region)
SUSPICION_INPUTS = (
    "shape:irregular",
    "shape:round",
    "orientation:not parallel",
    "margin:not circumscribed",
    "margin_subtype:angular",
    "margin_subtype:microlobulated",
    "margin_subtype:spiculated",
    "echo_pattern:anechoic",
    "echo_pattern:complex cystic and solid",
    "echo_pattern:heterogeneous",
    "echo_pattern:hyperechoic",
    "echo_pattern:isoechoic",
    "posterior_features:enhancement",
    "posterior_features:shadowing",
    "posterior_features:combined pattern",
    "calcifications:calcifications in a mass",
)


def _values(name: str) -> tuple[str, ...]:
    from engine.descriptors import DESCRIPTOR_VALUES

    return DESCRIPTOR_VALUES[name]


class Features:
    """Per-case feature rows: ``train`` (pipeline mask where it found the lesion, else the annotation),
    ``test`` (pipeline mask; None = missed), ``ann`` (annotated mask), optional embeddings alike."""

    def __init__(self, cases: list[dict], embeddings: dict[str, dict[str, np.ndarray]] | None) -> None:
        self.cases = cases
        self.ann = np.stack([c["ann_features"] for c in cases])
        found = np.array([c["pipe_features"] is not None for c in cases])
        self.found = found
        usable = found & np.array([c["dice"] >= MIN_DICE for c in cases])
        self.test = np.stack(
            [c["pipe_features"] if f else c["ann_features"] for c, f in zip(cases, found, strict=True)]
        )
        self.train = np.where(usable[:, None], self.test, self.ann)
        self.emb = None
        if embeddings is not None:
            keys = [f"{c['dataset']}/{c['id']}" for c in cases]
            pipe = np.stack([embeddings["pipe"].get(k, embeddings["ann"][k]) for k in keys])
            ann = np.stack([embeddings["ann"][k] for k in keys])
            self.emb = {"ann": ann, "test": pipe, "train": np.where(usable[:, None], pipe, ann)}


class Standardizer:
    def __init__(self, x: np.ndarray, emb: np.ndarray | None = None, dims: int = EMBED_DIMS) -> None:
        self.mean = x.mean(0)
        self.scale = np.where(x.std(0) > 1e-9, x.std(0), 1.0)
        self.pca = None
        if emb is not None:
            mu = emb.mean(0)
            _, _, vt = np.linalg.svd(emb - mu, full_matrices=False)
            comps = vt[:dims]
            proj = (emb - mu) @ comps.T
            sd = np.where(proj.std(0) > 1e-9, proj.std(0), 1.0)
            # equal block weight: the embedding block's total variance equals the hand-made block's
            self.pca = (mu, comps, sd * math.sqrt(dims / x.shape[1]))

    def __call__(self, x: np.ndarray, emb: np.ndarray | None = None) -> np.ndarray:
        z = np.clip((x - self.mean) / self.scale, -6, 6)
        if self.pca is not None:
            mu, comps, sd = self.pca
            z = np.concatenate([z, np.clip((emb - mu) @ comps.T / sd, -6, 6)], 1)
        return z


def _label_index(cases: list[dict], name: str) -> np.ndarray:
    """Class index per case, -1 where the case has no such label."""
    if name.startswith("subtype:"):
        values: tuple[str, ...] = ("no", "yes")
    else:
        values = _values(name)
    out = np.full(len(cases), -1)
    for i, c in enumerate(cases):
        v = c["labels"].get(name) if c.get("labels") else None
        if v in values:
            out[i] = values.index(v)
    return out


def _fit_head(z: np.ndarray, y: np.ndarray, k: int, *, balanced: bool = True):
    keep = y >= 0
    w = balanced_weights(y[keep], k) if balanced else None
    return fit_logistic(z[keep], y[keep], k, lam=LAMBDA, sample_weight=w)


def _pathology(cases: list[dict]) -> np.ndarray:
    return np.array(
        [1 if c["pathology"] == "malignant" else 0 if c["pathology"] == "benign" else -1 for c in cases]
    )


def _groups(cases: list[dict]) -> np.ndarray:
    return np.array([c["group"] for c in cases])


def _group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {g: i % k for i, g in zip(range(len(uniq)), uniq[order], strict=True)}
    return np.array([fold_of[g] for g in groups])


def fit_malignancy(z: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Unweighted logistic on the labelled cases + Platt scaling on 5-fold out-of-fold logits grouped by
    patient. Returns coef, intercept, (a, b)."""
    keep = y >= 0
    z, y, groups = z[keep], y[keep], groups[keep]
    folds = _group_folds(groups, 5, 0)
    oof = np.zeros(len(y))
    for f in range(5):
        tr = folds != f
        c, b = fit_logistic(z[tr], y[tr], 2, lam=LAMBDA)
        oof[~tr] = (z[~tr] @ c.T + b)[:, 0]
    a, bb = fit_platt(oof, y)
    coef, intercept = fit_logistic(z, y, 2, lam=LAMBDA)
    return coef, intercept, (a, bb)


def _malignancy_predict(z: np.ndarray, model: tuple) -> np.ndarray:
    coef, intercept, (a, b) = model
    s = (z @ coef.T + intercept)[:, 0]
    return 1 / (1 + np.exp(-(a * s + b)))


def _descriptor_predict(z: np.ndarray, heads: dict) -> dict[str, np.ndarray]:
    out = {}
    for name, (coef, b, k) in heads.items():
        out[name] = predict_logistic(z, coef, b, k)
    return out


def _fit_descriptor_heads(z: np.ndarray, cases: list[dict]) -> dict:
    heads = {}
    for name in LEARNED:
        k = len(_values(name))
        y = _label_index(cases, name)
        if (y >= 0).sum() >= 10 and len(np.unique(y[y >= 0])) >= 2:
            c, b = _fit_head(z, y, k)
            heads[name] = (c, b, k)
    for sub in MARGIN_SUBTYPES:
        y = _label_index(cases, f"subtype:{sub}")
        if (y == 1).sum() >= 3 and (y == 0).sum() >= 3:
            c, b = _fit_head(z, y, 2)
            heads[f"subtype:{sub}"] = (c, b, 2)
    return heads


def _subtype_joint(pred: dict[str, np.ndarray], name: str) -> np.ndarray:
    """P(subtype present) = P(not circumscribed) * P(subtype | not circumscribed)."""
    return pred["margin"][:, 1] * pred[name][:, 1]


def crossval_breast(
    feat: Features,
    breast_idx: np.ndarray,
    folds: np.ndarray,
    other_idx: np.ndarray,
    use_emb: bool,
    *,
    masks: str = "pipeline",
) -> dict:
    """Out-of-fold descriptor probabilities and malignancy for the BrEaST cases ``breast_idx`` (folds =
    their fold numbers, -1 = never tested: always training); malignancy also trained on ``other_idx``."""
    cases = feat.cases
    n = len(breast_idx)
    preds: dict[str, np.ndarray] = {}
    mal = np.full(n, np.nan)
    missed = np.zeros(n, dtype=bool)
    for f in sorted(set(folds[folds >= 0].tolist())):
        te = breast_idx[folds == f]
        tr = breast_idx[folds != f]
        xtr = feat.train if masks == "pipeline" else feat.ann
        xte = feat.test if masks == "pipeline" else feat.ann
        etr = (feat.emb["train"] if masks == "pipeline" else feat.emb["ann"]) if use_emb else None
        ete = (feat.emb["test"] if masks == "pipeline" else feat.emb["ann"]) if use_emb else None
        std = Standardizer(xtr[tr], etr[tr] if use_emb else None)
        ztr = std(xtr[tr], etr[tr] if use_emb else None)
        zte = std(xte[te], ete[te] if use_emb else None)
        heads = _fit_descriptor_heads(ztr, [cases[i] for i in tr])
        p = _descriptor_predict(zte, heads)
        sel = folds == f
        for name, v in p.items():
            preds.setdefault(name, np.full((n, v.shape[1]), np.nan))[sel] = v
        mtr = np.concatenate([tr, other_idx])
        std_m = Standardizer(xtr[mtr], etr[mtr] if use_emb else None)
        model = fit_malignancy(
            std_m(xtr[mtr], etr[mtr] if use_emb else None),
            _pathology([cases[i] for i in mtr]),
            _groups([cases[i] for i in mtr]),
        )
        mal[sel] = _malignancy_predict(std_m(xte[te], ete[te] if use_emb else None), model)
        if masks == "pipeline":
            missed[sel] = ~feat.found[te]
    return {"preds": preds, "malignancy": mal, "missed": missed}


def descriptor_metrics(cases: list[dict], result: dict, idx_mask: np.ndarray | None = None) -> dict:
    """Kappa (95 % bootstrap CI), agreement and confusion matrix per descriptor; a missed lesion is wrong
    (its prediction is set to a class that differs from the truth)."""
    out = {}
    preds, missed = result["preds"], result["missed"]
    sel_all = np.ones(len(cases), dtype=bool) if idx_mask is None else idx_mask
    for name in [*LEARNED, *(f"subtype:{s}" for s in MARGIN_SUBTYPES)]:
        if name not in preds:
            continue
        k = len(_values(name)) if not name.startswith("subtype:") else 2
        y = _label_index(cases, name)
        has = (y >= 0) & sel_all & ~np.isnan(preds[name][:, 0])
        if name.startswith("subtype:"):
            # presence among all lesions with a margin label: joint probability
            y = np.where(_label_index(cases, "margin") == 0, 0, y)
            has = (y >= 0) & sel_all & ~np.isnan(preds[name][:, 0])
            p = (_subtype_joint(preds, name)[has] >= 0.5).astype(int)
        else:
            p = preds[name][has].argmax(1)
        t = y[has]
        miss = missed[has]
        p = np.where(miss, (t + 1) % k, p)
        kap = cohen_kappa(t, p, k)
        lo, hi = bootstrap_ci(lambda a, b, k=k: cohen_kappa(a, b, k), [t, p])
        cm = np.zeros((k, k), dtype=int)
        np.add.at(cm, (t, p), 1)
        out[name] = {
            "n": int(has.sum()),
            "kappa": round(kap, 3),
            "kappa_ci": [round(lo, 3), round(hi, 3)],
            "agreement": round(float((t == p).mean()), 3),
            "confusion": cm.tolist(),
            "classes": list(_values(name)) if not name.startswith("subtype:") else ["no", "yes"],
            "missed": int(miss.sum()),
        }
    return out


def malignancy_metrics(y: np.ndarray, p: np.ndarray, missed: np.ndarray, base_rate: float) -> dict:
    p = np.where(missed | np.isnan(p), base_rate, p)
    keep = y >= 0
    y, p = y[keep], p[keep]
    a = auc(y, p)
    lo, hi = bootstrap_ci(auc, [y, p])
    return {
        "n": len(y),
        "malignant": int(y.sum()),
        "auc": round(a, 3),
        "auc_ci": [round(lo, 3), round(hi, 3)],
        "ece": round(expected_calibration_error(y, p), 3),
        "missed": int(missed[keep].sum()),
    }


FIVE = CATEGORIES


def five_way_label(birads: str | None) -> int:
    b = (birads or "").upper()
    if b == "2":
        b = "3"
    return FIVE.index(b) if b in FIVE else -1


def five_way_metrics(y: np.ndarray, probs: np.ndarray) -> dict:
    keep = y >= 0
    y, probs = y[keep], probs[keep]
    pred = probs.argmax(1)
    aucs = [auc((y == k).astype(int), probs[:, k]) for k in range(5)]
    qwk = cohen_kappa(y, pred, 5, "quadratic")
    lo, hi = bootstrap_ci(lambda a, b: cohen_kappa(a, b, 5, "quadratic"), [y, pred])
    return {
        "n": len(y),
        "accuracy": round(float((pred == y).mean()), 3),
        "qwk": round(qwk, 3),
        "qwk_ci": [round(lo, 3), round(hi, 3)],
        "macro_auc": round(float(np.nanmean(aucs)), 3),
    }


def reliability_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], bins: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for label, (y, p) in curves.items():
        idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            sel = idx == b
            if sel.sum() >= 3:
                xs.append(p[sel].mean())
                ys.append(y[sel].mean())
        ax.plot(xs, ys, "o-", label=f"{label} (ECE {expected_calibration_error(y, p):.3f}, n={len(y)})")
    ax.set_xlabel("predicted malignancy probability")
    ax.set_ylabel("observed fraction malignant (biopsy)")
    ax.set_title("Reliability - research use only, not for diagnosis", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def embed(
    cases: dict[str, dict], out_dir: Path, *, progress: bool = True
) -> dict[str, dict[str, np.ndarray]]:
    """Frozen EfficientNet-Lite0 (ImageNet) features of every case's pipeline and annotated 128 px crop,
    through the exported ONNX (``efficientnet_lite.export_onnx``); cached in ``out_dir/embeddings.pkl``."""
    import onnxruntime as ort
    from tqdm import tqdm

    path = out_dir / "embeddings.pkl"
    known: dict[str, dict[str, np.ndarray]] = {"pipe": {}, "ann": {}}
    if path.is_file():
        with path.open("rb") as handle:
            known = pickle.load(handle)
    todo = [k for k in cases if k not in known["ann"]]
    if todo:
        onnx_path = out_dir / "efficientnet_lite0_128.onnx"
        if not onnx_path.is_file():
            from engine.training.efficientnet_lite import export_onnx

            export_onnx(onnx_path, CROP_SIZE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        from engine.backends.ort import cpu_session

        session = cpu_session(onnx_path, options)
        for start in tqdm(
            range(0, len(todo), 32), desc="encoder features", unit="batch", disable=not progress
        ):
            keys = todo[start : start + 32]
            for kind, field in (("ann", "ann_crop"), ("pipe", "pipe_crop")):
                have = [k for k in keys if cases[k][field] is not None]
                if not have:
                    continue
                batch = np.stack([cases[k][field] for k in have]).astype(np.float32)[:, None]
                feats = session.run(None, {"crop": batch})[0]
                for k, v in zip(have, feats, strict=True):
                    known[kind][k] = v.astype(np.float32)
        with path.open("wb") as handle:
            pickle.dump(known, handle)
    return known


def train_descriptors(
    data: Sequence[str | Path],
    out_dir: str | Path,
    *,
    models_dir: Path | None = None,
    candidates: Sequence[str] = ("A", "B"),
    threads: int = 1,
    progress: bool = True,
    command: str = "",
    model_id: str | None = None,
) -> dict:
    """The whole preregistered procedure; writes ``out_dir``/descriptors.json, metrics.json, reliability.png.

    Candidates: "A" hand-made features + G-CNN suspicion; "B" A + EfficientNet-Lite0 embedding. The choice
    (B only if its CV mean kappa over shape, margin, echo pattern and posterior features beats A's by
    >= 0.03 and its CV malignancy AUC is not lower by > 0.01) is made on BrEaST-Lesions_USG cross-validation
    before the test splits are scored."""
    import json
    import time

    from engine.data.datasets import load_records
    from engine.descriptors import FEATURE_NAMES, FORMAT
    from engine.splits import SplitConfig, assign_folds, make_split

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = load_records(list(data))
    by_key = {f"{r.dataset}/{r.id}": r for r in records}
    cases_map = extract(records, out, models_dir=models_dir, threads=threads, progress=progress)
    keys = [k for k in sorted(cases_map) if k in by_key]
    cases = [cases_map[k] for k in keys]
    embeddings = embed({k: cases_map[k] for k in keys}, out, progress=progress) if "B" in candidates else None
    feat = Features(cases, embeddings)
    ds = np.array([c["dataset"] for c in cases])

    breast_records = [r for r in records if r.dataset == BREAST]
    if not breast_records:
        raise ValueError("descriptor training needs BrEaST-Lesions_USG (its manifest labels the descriptors)")
    test_ids = {r.id for r in make_split(breast_records, SplitConfig(seed=TEST_SPLIT_SEED)).test}
    fold_of = assign_folds(breast_records, CV_FOLDS, CV_SEED)
    breast_idx = np.flatnonzero(ds == BREAST)
    cv_folds = np.array([fold_of[keys[i]] for i in breast_idx])
    test_folds = np.array([0 if cases[i]["id"] in test_ids else -1 for i in breast_idx])
    other_train = np.flatnonzero((ds != BREAST) & np.array([c["fold"] != 1 for c in cases]))
    busbra_test = np.flatnonzero((ds != BREAST) & np.array([c["fold"] == 1 for c in cases]))
    bcases = [cases[i] for i in breast_idx]
    bpath = _pathology(bcases)
    report: dict = {
        "counts": {
            "breast_lesions": len(breast_idx),
            "breast_test": int((test_folds == 0).sum()),
            "other_train": len(other_train),
            "busbra_fold1": len(busbra_test),
            "breast_pipeline_found": int(feat.found[breast_idx].sum()),
        }
    }

    # 1. the preregistered choice, on cross-validation only
    cv: dict[str, dict] = {}
    for cand in candidates:
        res = crossval_breast(feat, breast_idx, cv_folds, other_train, cand == "B")
        dm = descriptor_metrics(bcases, res)
        base = float((_pathology([cases[i] for i in other_train]) == 1).mean())
        mm = malignancy_metrics(bpath, res["malignancy"], res["missed"], base)
        cv[cand] = {
            "result": res,
            "descriptors": dm,
            "malignancy": mm,
            "mean_kappa": round(float(np.mean([dm[n]["kappa"] for n in PRIMARY])), 3),
        }
    chosen, why = "A", "only candidate A compared"
    if "B" in cv and "A" in cv:
        gain = cv["B"]["mean_kappa"] - cv["A"]["mean_kappa"]
        auc_drop = cv["A"]["malignancy"]["auc"] - cv["B"]["malignancy"]["auc"]
        if gain >= 0.03 and auc_drop <= 0.01:
            # (iii) the budget: descriptors add <= 3 ms p50 to the classify stage (INT8, this CPU)
            latency = encoder_latency(out, cases, [by_key[keys[i]] for i in breast_idx[:50]])
            report["encoder_latency"] = latency
            added = latency["int8_encoder_ms"] + latency["features_ms"]
            if added <= BUDGET_MS:
                chosen, why = "B", f"kappa +{gain:.3f}, AUC drop {auc_drop:.3f}, adds {added:.2f} ms p50"
            else:
                why = (f"B's kappa gain {gain:.3f} and AUC drop {auc_drop:.3f} pass, but encoder INT8 + "
                       f"features take {added:.2f} ms p50 > {BUDGET_MS} ms (load {latency['load']})")
        else:
            why = f"B's kappa gain {gain:.3f} < 0.03 or AUC drop {auc_drop:.3f} > 0.01"
    elif candidates:
        chosen = candidates[0]
    use_emb = chosen == "B"
    report["choice"] = {
        "chosen": chosen,
        "why": why,
        **{c: {"mean_kappa": cv[c]["mean_kappa"], "malignancy_auc": cv[c]["malignancy"]["auc"]} for c in cv},
    }
    report["cv"] = {c: {"descriptors": cv[c]["descriptors"], "malignancy": cv[c]["malignancy"]} for c in cv}

    # 2. the chosen candidate on the held-out splits, and with annotated masks (upper bound)
    res_test = crossval_breast(feat, breast_idx, test_folds, other_train, use_emb)
    sel = test_folds == 0
    base = float((_pathology([cases[i] for i in other_train]) == 1).mean())
    report["breast_test"] = {
        "descriptors": descriptor_metrics(bcases, res_test, sel),
        "malignancy": malignancy_metrics(
            bpath[sel], res_test["malignancy"][sel], res_test["missed"][sel], base
        ),
    }
    res_ann = crossval_breast(feat, breast_idx, cv_folds, other_train, use_emb, masks="annotated")
    report["cv_annotated_masks"] = {
        "descriptors": descriptor_metrics(bcases, res_ann),
        "malignancy": malignancy_metrics(bpath, res_ann["malignancy"], res_ann["missed"], base),
    }

    # final model: BrEaST non-test + BUS-BRA folds 2-5 + BUSI (the test splits stay unseen)
    tr_b = breast_idx[test_folds != 0]
    emb = feat.emb if use_emb else None
    std = Standardizer(feat.train[tr_b], emb["train"][tr_b] if emb else None)
    heads = _fit_descriptor_heads(
        std(feat.train[tr_b], emb["train"][tr_b] if emb else None), [cases[i] for i in tr_b]
    )
    mtr = np.concatenate([tr_b, other_train])
    std_m = Standardizer(feat.train[mtr], emb["train"][mtr] if emb else None)
    mal_model = fit_malignancy(
        std_m(feat.train[mtr], emb["train"][mtr] if emb else None),
        _pathology([cases[i] for i in mtr]),
        _groups([cases[i] for i in mtr]),
    )
    # BUS-BRA fold 1 with the final malignancy head
    zb = std_m(feat.test[busbra_test], emb["test"][busbra_test] if emb else None)
    pb = _malignancy_predict(zb, mal_model)
    yb = _pathology([cases[i] for i in busbra_test])
    missed_b = ~feat.found[busbra_test]
    report["busbra_fold1"] = {"malignancy": malignancy_metrics(yb, pb, missed_b, base)}
    gprobs = np.stack(
        [
            cases[i]["pipe_probs"] if cases[i]["pipe_probs"] is not None else np.full(5, 0.2)
            for i in busbra_test
        ]
    )
    from engine.descriptors import _CATEGORY_LIKELIHOOD

    report["busbra_fold1"]["shipped_grader_malignancy"] = malignancy_metrics(
        yb, gprobs @ np.array(_CATEGORY_LIKELIHOOD), np.zeros(len(yb), bool), base
    )

    # size against the annotated masks, BrEaST test split, mm
    size_err = {"width": [], "height": [], "longest": []}
    for i in breast_idx[sel]:
        c = cases[i]
        if c["pipe_size_px"] is None or not c["pixel_size_mm"]:
            continue
        for key in size_err:
            a = c["ann_size_px"][key]
            size_err[key].append(
                (abs(c["pipe_size_px"][key] - a) / a, abs(c["pipe_size_px"][key] - a) * c["pixel_size_mm"])
            )
    report["size_breast_test"] = {
        k: {
            "n": len(v),
            "median_relative_error": round(float(np.median([e[0] for e in v])), 3),
            "median_abs_error_mm": round(float(np.median([e[1] for e in v])), 2),
        }
        for k, v in size_err.items()
        if v
    }

    # 3. category: shipped grader vs C (ordinal head on the malignancy logit), CV and test
    from engine.training.ordinal import fit_ordinal_head, ordinal_probabilities

    y5 = np.array([five_way_label(c["birads"]) for c in bcases])
    shipped = np.stack([c["pipe_probs"] if c["pipe_probs"] is not None else np.full(5, 0.2) for c in bcases])
    cv_res = cv[chosen]["result"]
    score = logit(np.where(cv_res["missed"], base, cv_res["malignancy"]))
    c_probs = np.zeros((len(bcases), 5))
    for f in sorted(set(cv_folds.tolist())):
        tr = (cv_folds != f) & (y5 >= 0)
        head = fit_ordinal_head(score[tr], y5[tr])
        c_probs[cv_folds == f] = ordinal_probabilities(head, score[cv_folds == f])
    c_probs[cv_res["missed"]] = 0.2
    t_score = logit(np.where(res_test["missed"], base, res_test["malignancy"]))
    head = fit_ordinal_head(score[(test_folds != 0) & (y5 >= 0)], y5[(test_folds != 0) & (y5 >= 0)])
    ct = ordinal_probabilities(head, t_score[sel])
    ct[res_test["missed"][sel]] = 0.2
    report["category"] = {
        "cv": {
            "shipped_grader": five_way_metrics(y5, shipped),
            "descriptor_ordinal": five_way_metrics(y5, c_probs),
        },
        "breast_test": {
            "shipped_grader": five_way_metrics(y5[sel], shipped[sel]),
            "descriptor_ordinal": five_way_metrics(y5[sel], ct),
        },
    }
    cvc = report["category"]["cv"]
    replace = (
        cvc["descriptor_ordinal"]["qwk"] - cvc["shipped_grader"]["qwk"] >= 0.05
        and cvc["descriptor_ordinal"]["macro_auc"] >= cvc["shipped_grader"]["macro_auc"]
        and report["category"]["breast_test"]["descriptor_ordinal"]["qwk"]
        >= report["category"]["breast_test"]["shipped_grader"]["qwk"]
    )
    report["category"]["descriptor_category_replaces_shipped"] = bool(replace)

    # 4. the suspicion model behind the drivers: pathology on CV descriptor probabilities (non-test cases)
    preds = cv_res["preds"]
    lhw = FEATURE_NAMES.index("log_height_width")
    cols = []
    for item in SUSPICION_INPUTS:
        d, v = item.split(":", 1)
        if d == "orientation":
            cols.append((feat.test[breast_idx, lhw] > 0).astype(float))
        elif d == "margin_subtype":
            name = f"subtype:{v}"
            cols.append(_subtype_joint(preds, name) if name in preds else np.zeros(len(bcases)))
        elif d in preds:
            cols.append(preds[d][:, _values(d).index(v)])
        else:
            cols.append(np.zeros(len(bcases)))
    xs = np.nan_to_num(np.stack(cols, 1))
    keep = (test_folds != 0) & (bpath >= 0) & ~cv_res["missed"]
    s_coef, s_b = fit_logistic(xs[keep], bpath[keep], 2, lam=LAMBDA)
    report["suspicion_model_in_sample_auc"] = round(auc(bpath[keep], (xs[keep] @ s_coef.T)[:, 0]), 3)

    # calcifications: shipped only if learnable (CV kappa CI above 0)
    not_learned = {}
    calc = cv[chosen]["descriptors"].get("calcifications")
    if calc is None or not calc["kappa_ci"][0] > 0:
        heads.pop("calcifications", None)
        not_learned["calcifications"] = (
            "not learnable from the 15 lesions with calcifications in the training "
            "data (cross-validated kappa's 95 % CI includes 0)"
        )

    # 5. write the model, metrics and reliability diagram
    def head_json(entry: tuple, classes: Sequence[str]) -> dict:
        c, b, _k = entry
        return {
            "classes": list(classes),
            "coef": np.round(c, 6).tolist(),
            "intercept": np.round(b, 6).tolist(),
        }

    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    if use_emb:
        raise RuntimeError("candidate B won, but this version's runtime has no image encoder; metrics.json "
                           "holds the comparison")
    # one standardizer in the runtime: fold the descriptor heads' scaling into the malignancy one's
    model = {
        "format": FORMAT,
        "model_id": model_id or f"descriptors-{chosen}-{time.strftime('%Y%m%d')}",
        "research_use_only": "Research use only, not for diagnosis.",
        "training_command": command,
        "data_sha256": data_hash([by_key[k] for k in keys]),
        "candidate": chosen,
        "feature_names": list(FEATURE_NAMES),
        "mean": np.round(std.mean, 8).tolist(),
        "scale": np.round(std.scale, 8).tolist(),
        "heads": {n: head_json(heads[n], _values(n)) for n in LEARNED if n in heads},
        "margin_subtypes": {
            s: head_json(heads[f"subtype:{s}"], ("no", "yes"))
            for s in MARGIN_SUBTYPES
            if f"subtype:{s}" in heads
        },
        "not_learned": not_learned,
    }
    # malignancy head re-expressed on the descriptor standardizer's z: w.(x - m2)/s2 = (w*s1/s2).z + const
    mcoef, mb, platt = mal_model
    ratio = std.scale / std_m.scale
    model["malignancy"] = {
        "classes": ["benign", "malignant"],
        "coef": np.round(mcoef * ratio, 6).tolist(),
        "intercept": np.round(mb + (mcoef * (std.mean - std_m.mean) / std_m.scale).sum(1), 6).tolist(),
        "platt": [round(platt[0], 6), round(platt[1], 6)],
    }
    model["suspicion"] = {
        "inputs": list(SUSPICION_INPUTS),
        "coef": np.round(s_coef[0], 6).tolist(),
        "mean": np.round(xs[keep].mean(0), 6).tolist(),
        "intercept": float(s_b[0]),
    }
    (out / "descriptors.json").write_text(json.dumps(model, indent=1) + "\n")
    reliability_png(
        out / "reliability.png",
        {
            "BUS-BRA fold 1": (yb[yb >= 0], np.where(missed_b, base, pb)[yb >= 0]),
            "BrEaST test": (
                bpath[sel][bpath[sel] >= 0],
                np.where(res_test["missed"][sel], base, res_test["malignancy"][sel])[bpath[sel] >= 0],
            ),
            "BrEaST CV": (
                bpath[bpath >= 0],
                np.where(cv_res["missed"], base, cv_res["malignancy"])[bpath >= 0],
            ),
        },
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


def encoder_latency(out_dir: Path, cases: list[dict], records: Sequence[ManifestRecord], *,
                    runs: int = 200) -> dict:
    """p50 ms, one ONNX Runtime thread, of the EfficientNet-Lite0 encoder on one 128 px crop in FP32 and
    in INT8 (static Q/DQ, calibrated on 64 lesion crops), and of ``lesion_features`` on ``records``'
    lesions (annotated masks); with the load average, since a shared machine inflates every number."""
    import os
    import time

    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from engine.data.manifest import load_gray, load_mask
    from engine.descriptors import lesion_features

    fp32 = out_dir / "efficientnet_lite0_128.onnx"
    int8 = out_dir / "efficientnet_lite0_128.int8.onnx"
    crops = [c["ann_crop"] for c in cases[:: max(1, len(cases) // 64)]][:64]
    if not int8.is_file():

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter([{"crop": c.astype(np.float32)[None, None]} for c in crops])

            def get_next(self):
                return next(self.items, None)

        quantize_static(str(fp32), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    from engine.backends.ort import cpu_session

    sessions = {k: cpu_session(p, options) for k, p in (("fp32", fp32), ("int8", int8))}
    x = crops[0].astype(np.float32)[None, None]
    times: dict[str, list[float]] = {"fp32": [], "int8": [], "features": []}
    for session in sessions.values():
        session.run(None, {"crop": x})
    for _ in range(runs):
        for k, session in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {"crop": x})
            times[k].append((time.perf_counter() - t0) * 1e3)
    probs = np.full(5, 0.2)
    for record in records:
        gray, mask = load_gray(record.image), load_mask(record)
        if mask is None or not mask.any():
            continue
        lesion_features(gray, mask, probs)
        t0 = time.perf_counter()
        lesion_features(gray, mask, probs)
        times["features"].append((time.perf_counter() - t0) * 1e3)
    return {"fp32_encoder_ms": round(float(np.median(times["fp32"])), 2),
            "int8_encoder_ms": round(float(np.median(times["int8"])), 2),
            "features_ms": round(float(np.median(times["features"])), 2),
            "load": ", ".join(f"{v:.2f}" for v in os.getloadavg())}
