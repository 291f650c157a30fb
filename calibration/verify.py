"""Step 3: the accuracy gate. Compares a candidate model (INT8, FP16, or a TensorRT engine) with the FP32
reference on the same inputs, in one run, and measures the speed of both.

ROI-CNN: the lesion mask of each frame (probability > ``threshold``, 0.5, as the area filter, on the
288 x 288 grid) from the candidate against the reference's, as a Dice similarity coefficient (DSC);
frames where both masks are empty agree (DSC 1). Also reported, for information: the DSC of the
area-filtered ROI-stage masks (what the pipeline hands to refinement). Grader: top-1 agreement (same
most probable category) and the largest absolute difference of any category probability.

Speed: every input runs through both models at batch 1, interleaved (reference then candidate, then the
other order next time) so that both see the same machine load, ``repeats`` times (3); an input's time is
the fastest of its repeats (a run preempted by another process says nothing about the model), and the
median over inputs is reported, with the thread count (the same for both) and the 1-minute load average.

The FP32 reference always runs on ONNX Runtime's CPU provider (``load_reference``), also where an
onnxruntime-gpu build offers CUDA or TensorRT providers: the reference is the CPU model the product ships,
and the report's "reference_ms" is ONNX Runtime FP32 on the CPU. ``verify`` refuses a reference that
says it ran elsewhere.

Pass rule (``GateThresholds``): mean DSC agreement >= 0.98 (ROI), top-1 agreement >= 0.97 (grader);
optional minimum-DSC and maximum-probability-difference limits. Speed does not decide the gate.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from calibration.inputs import ModelInputs
from engine.machine import MachineInfo, describe_machine

DEFAULT_DSC_MEAN = 0.98
DEFAULT_TOP1 = 0.97
REFERENCE_PROVIDERS = ("CPUExecutionProvider",)


def load_reference(path: str | os.PathLike, *, threads: int | None = None):
    """The FP32 reference model on ONNX Runtime's CPU provider only (never CUDA or TensorRT)."""
    from engine.backends import load_backend

    return load_backend(path, backend="onnxruntime", threads=threads, providers=list(REFERENCE_PROVIDERS))


def check_reference_on_cpu(reference) -> None:
    """ValueError when ``reference`` reports ONNX Runtime providers other than the CPU one."""
    used = tuple(getattr(reference, "providers_used", REFERENCE_PROVIDERS))
    if used != REFERENCE_PROVIDERS:
        raise ValueError(f"the FP32 reference must run on ONNX Runtime's CPU provider only, it runs on "
                         f"{', '.join(used)}: load it with calibration.verify.load_reference")


@dataclass(frozen=True)
class GateThresholds:
    """Pass limits. dsc_mean / top1 always apply to their model kind; dsc_min and max_prob_diff only
    when set (None: reported, not gated)."""

    dsc_mean: float = DEFAULT_DSC_MEAN
    top1: float = DEFAULT_TOP1
    dsc_min: float | None = None
    max_prob_diff: float | None = None


@dataclass(frozen=True)
class VerifyReport:
    """The gate's result. Times in milliseconds per frame (median, batch 1)."""

    model: str
    n: int
    threads: int | None
    reference_ms: float
    candidate_ms: float
    passed: bool
    reason: str = ""
    dsc_agreement_mean: float | None = None
    dsc_agreement_min: float | None = None
    roi_stage_dsc_mean: float | None = None
    top1_agreement: float | None = None
    max_prob_diff: float | None = None
    reference: str = ""
    candidate: str = ""
    data: str = ""
    skipped: int = 0
    thresholds: GateThresholds = field(default_factory=GateThresholds)
    repeats: int = 1
    load_avg_1m: float | None = None
    machine: MachineInfo | None = None  # the CPU, its ISA features and the load average after the timing

    @property
    def speedup(self) -> float:
        return self.reference_ms / self.candidate_ms if self.candidate_ms > 0 else float("nan")

    def as_dict(self) -> dict:
        """JSON-ready, with only the fields that apply to the model kind."""
        out: dict = {"model": self.model, "n": self.n}
        if self.model == "roi":
            out.update(dsc_agreement_mean=_r(self.dsc_agreement_mean),
                       dsc_agreement_min=_r(self.dsc_agreement_min),
                       roi_stage_dsc_mean=_r(self.roi_stage_dsc_mean))
        else:
            out.update(top1_agreement=_r(self.top1_agreement), max_prob_diff=_r(self.max_prob_diff))
        out.update(reference_ms=round(self.reference_ms, 3), candidate_ms=round(self.candidate_ms, 3),
                   speedup=round(self.speedup, 3), threads=self.threads, repeats=self.repeats,
                   load_avg_1m=None if self.load_avg_1m is None else round(self.load_avg_1m, 2),
                   passed=self.passed)
        if self.machine is not None:
            out["machine"] = self.machine.as_dict()
        if self.reason:
            out["reason"] = self.reason
        t = self.thresholds
        out["thresholds"] = ({"dsc_agreement_mean": t.dsc_mean, "dsc_agreement_min": t.dsc_min}
                             if self.model == "roi" else
                             {"top1_agreement": t.top1, "max_prob_diff": t.max_prob_diff})
        out.update(reference=self.reference, candidate=self.candidate, data=self.data)
        if self.skipped:
            out["skipped_no_lesion"] = self.skipped
        return out


def _r(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def dice_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """DSC of two bool masks; 1.0 when both are empty (they agree that there is no lesion)."""
    from refine.metrics import dice

    return float(dice(a, b))


def run_interleaved(reference, candidate, batch: np.ndarray, *, warmup: int = 3, repeats: int = 3
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run every row of ``batch`` through both backends (``run(batch) -> array``) at batch 1, alternating
    which goes first, ``repeats`` times each; a row's time is the fastest of its repeats (a run that the
    OS preempted for another process says nothing about the model). Returns (reference outputs,
    candidate outputs, reference ms per row, candidate ms per row)."""
    for _ in range(warmup):
        reference.run(batch[:1])
        candidate.run(batch[:1])
    ref_out, cand_out, ref_ms, cand_ms = [], [], [], []

    def timed(backend, row):
        t0 = time.perf_counter()
        out = backend.run(row)
        return out, (time.perf_counter() - t0) * 1e3

    for index in range(len(batch)):
        row = batch[index:index + 1]
        best_r = best_c = float("inf")
        for repeat in range(max(1, repeats)):
            if (index + repeat) % 2 == 0:
                (r, tr), (c, tc) = timed(reference, row), timed(candidate, row)
            else:
                (c, tc), (r, tr) = timed(candidate, row), timed(reference, row)
            best_r, best_c = min(best_r, tr), min(best_c, tc)
        ref_out.append(np.asarray(r, dtype=np.float32)[0])
        cand_out.append(np.asarray(c, dtype=np.float32)[0])
        ref_ms.append(best_r)
        cand_ms.append(best_c)
    return np.stack(ref_out), np.stack(cand_out), np.asarray(ref_ms), np.asarray(cand_ms)


def roi_stage_masks(probs: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Area-filtered masks (the pipeline's ROI stage) of (N, 1, S, S) or (N, S, S) probability maps."""
    from refine.area_filter import area_filter

    maps = probs.reshape(len(probs), probs.shape[-2], probs.shape[-1])
    return [np.asarray(area_filter(p, threshold=threshold), dtype=bool) for p in maps]


def verify(kind: str, reference, candidate, inputs: ModelInputs, *, thresholds: GateThresholds | None = None,
           threshold: float = 0.5, threads: int | None = None, warmup: int = 3, repeats: int = 3,
           reference_name: str = "", candidate_name: str = "", data: str = "") -> VerifyReport:
    """Compare ``candidate`` with ``reference`` (backends with ``run``) on ``inputs``; see module docstring.

    kind: "roi" or "grader". threshold: ROI probability threshold (0.5, as the pipeline).
    """
    thresholds = thresholds or GateThresholds()
    if kind not in ("roi", "grader"):
        raise ValueError(f"model kind must be 'roi' or 'grader', got {kind!r}")
    check_reference_on_cpu(reference)
    ref, cand, ref_ms, cand_ms = run_interleaved(reference, candidate, inputs.batch, warmup=warmup,
                                                 repeats=repeats)
    machine = describe_machine()  # right after the timing: its load average is the one the times saw
    if ref.shape != cand.shape:
        raise ValueError(f"reference output {ref.shape} and candidate output {cand.shape} differ in shape: "
                         "are these two versions of the same model?")
    common = dict(model=kind, n=len(inputs), threads=threads, reference_ms=float(np.median(ref_ms)),
                  candidate_ms=float(np.median(cand_ms)), reference=reference_name, candidate=candidate_name,
                  data=data, skipped=len(inputs.skipped), thresholds=thresholds, repeats=repeats,
                  load_avg_1m=machine.load_avg[0] if machine.load_avg else None, machine=machine)
    reasons = []
    if kind == "roi":
        # One probability map per frame, (H, W), whatever the channel layout of the output.
        ref = ref.reshape(len(ref), ref.shape[-2], ref.shape[-1])
        cand = cand.reshape(len(cand), cand.shape[-2], cand.shape[-1])
        dsc = np.array([dice_agreement(r > threshold, c > threshold)
                        for r, c in zip(ref, cand, strict=True)])
        stage = [dice_agreement(a, b) for a, b in zip(roi_stage_masks(ref, threshold),
                                                         roi_stage_masks(cand, threshold), strict=True)]
        stage_mean = float(np.mean(stage))
        mean, low = float(dsc.mean()), float(dsc.min())
        if mean < thresholds.dsc_mean:
            reasons.append(f"mean mask DSC agreement {mean:.4f} < {thresholds.dsc_mean}")
        if thresholds.dsc_min is not None and low < thresholds.dsc_min:
            reasons.append(f"minimum mask DSC agreement {low:.4f} < {thresholds.dsc_min}")
        return VerifyReport(passed=not reasons, reason="; ".join(reasons), dsc_agreement_mean=mean,
                            dsc_agreement_min=low, roi_stage_dsc_mean=stage_mean, **common)
    top1 = float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1)))
    diff = float(np.abs(ref - cand).max())
    if top1 < thresholds.top1:
        reasons.append(f"top-1 agreement {top1:.4f} < {thresholds.top1}")
    if thresholds.max_prob_diff is not None and diff > thresholds.max_prob_diff:
        reasons.append(f"maximum probability difference {diff:.4f} > {thresholds.max_prob_diff}")
    return VerifyReport(passed=not reasons, reason="; ".join(reasons), top1_agreement=top1,
                        max_prob_diff=diff, **common)
