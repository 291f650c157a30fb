"""The two-stage grader of the paper: frame -> ROI-CNN -> area filter + refinement -> G-CNN -> result.

>>> grader = TwoStageGrader.from_models_dir()          # the shipped models, ONNX Runtime, FP32
>>> grader.warm_up()
>>> result = grader.grade(gray_u8_frame)               # any size, gray or BGR uint8
>>> result.category, result.probabilities, result.bbox

The live pipeline runs the three stages in separate threads, so they are exposed separately:
``locate`` (ROI-CNN + area filter on the 288 x 288 grid), ``refine`` (``refine.stage.refine_lesion``: at
the frame's own pixels on a bounded crop around the lesion, or the paper's Chan–Vese on the grid; masks,
contours, bbox and area in the frame's pixels) and ``classify`` (G-CNN on the frame at
its own resolution with the refined mask). Each returns a small frozen dataclass (``engine.results``) and
keeps no per-frame state, so the stages may run concurrently on different frames. No torch here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from engine import contract
from engine.backends import InferenceBackend, ModelLoadError, load_backend
from engine.descriptors import DESCRIPTOR_MODEL_FILE, DescriptorModel, absent
from engine.model_files import DEFAULT_MODELS_DIR as DEFAULT_MODELS_DIR  # the shipped models' folder
from engine.preprocess import GRADER_VIEWS, ROI_INPUT_SIZE, grader_input, roi_input, to_gray_u8
from engine.results import (
    EMPTY_CONTOUR,
    ClassifyStageResult,
    GradeResult,
    RefineStageResult,
    RoiStageResult,
)
from refine import area_filter as area_filtering
from refine import contours
from refine import stage as refine_stage

PRECISIONS = ("fp32", "int8", "fp16")
MODEL_STEMS = {"roi": "roi_cnn", "grader": "g_cnn"}


@dataclass(frozen=True, slots=True)
class GraderConfig:
    """Refinement parameters (the paper's values by default, the product's refinement).

    threshold : ROI probability threshold of the area filter (0.5).
    min_fraction : components smaller than this fraction of the largest are dropped (0.4).
    refinement : how the ROI is refined, one of ``refine.stage.REFINEMENTS`` (``"paper"``: Chan–Vese on
        the 288 grid; ``"native-..."``: at the frame's own pixels on a bounded crop; ``"none"``).
    cv_margin : ``paper``: Chan–Vese crop margin around the raw ROI, in pixels of the 288 grid (16).
    cv_max_iterations : Chan–Vese iterations at most (50).
    mu1, mu2, alpha : Chan–Vese inside / outside data weights and contour-length weight (1, 1, 1).
    native_max_side : native refinements: longest side of the refined crop in px (None: 256,
        ``refine.native.DEFAULT_MAX_SIDE``).
    native_level : native refinements: probability level of the outline on the crop (0.4; None:
        ``threshold``).
    """

    threshold: float = 0.5
    min_fraction: float = 0.4
    refinement: str = refine_stage.DEFAULT_REFINEMENT
    cv_margin: int = 16
    cv_max_iterations: int = 50
    mu1: float = 1.0
    mu2: float = 1.0
    alpha: float = 1.0
    native_max_side: int | None = None
    native_level: float | None = refine_stage.DEFAULT_NATIVE_LEVEL

    def __post_init__(self) -> None:
        refine_stage.check_refinement(self.refinement)

    def refine_parameters(self) -> refine_stage.RefineParameters:
        """The refine stage's parameters (``refine.stage.refine_lesion``)."""
        return refine_stage.RefineParameters(
            refinement=self.refinement, cv_margin=self.cv_margin, cv_max_iterations=self.cv_max_iterations,
            mu1=self.mu1, mu2=self.mu2, alpha=self.alpha, native_max_side=self.native_max_side,
            threshold=self.threshold, native_level=self.native_level)


def model_path(models_dir: str | os.PathLike, kind: str, precision: str = "fp32",
               backend: str = "auto") -> Path:
    """File name convention: ``roi_cnn.onnx`` / ``g_cnn.onnx`` (fp32), ``roi_cnn.int8.onnx``,
    ``g_cnn.fp16.onnx``, ...; for the TensorRT backend the same stems with ``.plan``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    stem = MODEL_STEMS[kind] + ("" if precision == "fp32" else f".{precision}")
    return Path(models_dir) / (stem + (".plan" if backend == "tensorrt" else ".onnx"))


def _how_to_make(path: Path, kind: str, precision: str, backend: str) -> str:
    """The command that creates a missing model file."""
    fp32 = model_path(path.parent, kind, "fp32")
    if backend == "tensorrt":
        # INT8 engines come from the symmetric (TensorRT-target) Q/DQ model, FP16 ones from the FP16 ONNX
        stem = MODEL_STEMS[kind] + {"fp32": "", "fp16": ".fp16", "int8": ".int8.trt"}[precision]
        return f"build it with `sonograde build-engine --onnx {path.parent / (stem + '.onnx')} --out {path}`"
    if precision == "int8":
        return f"make it with `sonograde calibrate int8 --model {fp32} --data DATA_DIR --out {path}`"
    if precision == "fp16":
        return f"make it with `sonograde calibrate fp16 --model {fp32} --out {path}`"
    return ("the shipped models come with the repository's models/ folder (reinstall, or "
            "`git checkout models/`), or export your own with `sonograde export`")


class ModelOutputError(ValueError):
    """A model gave output the grader cannot use: the wrong shape (found at warm-up) or NaN/infinity
    (refused per frame and counted by the caller, never passed on as a grade)."""


def _parse_number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


class TwoStageGrader:
    """ROI-CNN + refinement + G-CNN on one frame at a time.

    Parameters
    ----------
    roi : backend of the ROI-CNN: float32 (N, 1, 288, 288) standardized frame -> (N, 1, 288, 288) sigmoid.
    grader : backend of the G-CNN: float32 (N, C, S, S) from ``engine.preprocess.grader_input`` -> (N, 5)
        softmax. Its metadata gives S (``sonograde.input_size``), the ROI margin
        (``sonograde.roi_margin``), whether the mask is a second channel (``sonograde.mask_channel``),
        what it sees (``sonograde.grader_view``: "crop" around the lesion, the default, or the whole
        "frame") and the category order (``sonograde.categories``).
    config : refinement parameters.

    Raises ValueError when the two models are swapped or their inputs do not fit these contracts.
    """

    def __init__(self, roi: InferenceBackend, grader: InferenceBackend,
                 config: GraderConfig | None = None, descriptors: DescriptorModel | None = None) -> None:
        self.roi = roi
        self.grader = grader
        self.config = config or GraderConfig()
        # The explained assessment (lexicon descriptors, size, malignancy probability) computed in the
        # classify stage; None: results carry only the category (and say why the rest is absent).
        self.descriptors = descriptors
        for backend, kind in ((roi, "roi"), (grader, "grader")):
            declared = backend.metadata.get(contract.MODEL)
            if declared is not None and declared != kind:
                raise ValueError(
                    f"{backend.path} is a {declared!r} model but was given as the {kind!r} model "
                    "(are the ROI-CNN and G-CNN files swapped?)"
                )
        if len(roi.input_shape) != 4 or roi.input_shape[1] != 1:
            raise ValueError(f"{roi.path}: ROI-CNN input must be (N, 1, S, S), got {roi.input_shape}")
        self.roi_size = int(roi.input_shape[-1] or roi.metadata.get(contract.INPUT_SIZE, ROI_INPUT_SIZE))

        meta = grader.metadata
        if len(grader.input_shape) != 4:
            raise ValueError(f"{grader.path}: G-CNN input must be (N, C, S, S), got {grader.input_shape}")
        self.grader_size = int(grader.input_shape[-1] or meta.get(contract.INPUT_SIZE, 0))
        if self.grader_size <= 0:
            raise ValueError(f"{grader.path}: input size unknown (no static shape, no sonograde.input_size)")
        self.grader_channels = int(grader.input_shape[1] or meta.get(contract.INPUT_CHANNELS, 1))
        self.grader_margin = _parse_number(meta.get(contract.ROI_MARGIN, "0"))
        default_mask_channel = "1" if self.grader_channels == 2 else "0"
        self.mask_channel = meta.get(contract.MASK_CHANNEL, default_mask_channel) == "1"
        if self.grader_channels != (2 if self.mask_channel else 1):
            raise ValueError(
                f"{grader.path}: input has {self.grader_channels} channel(s) but sonograde.mask_channel is "
                f"{meta.get(contract.MASK_CHANNEL)!r}; expected 2 channels with the mask, 1 without"
            )
        self.grader_view = meta.get(contract.GRADER_VIEW, "crop")
        if self.grader_view not in GRADER_VIEWS:
            raise ValueError(f"{grader.path}: sonograde.grader_view is {self.grader_view!r}; this version "
                             f"knows {GRADER_VIEWS} (is the model newer than the software?)")
        self.categories = contract.parse_categories(meta.get(contract.CATEGORY_ORDER))
        self.model_ids = {
            "roi": roi.metadata.get(contract.MODEL_ID, roi.path.name),
            "grader": meta.get(contract.MODEL_ID, grader.path.name),
        }
        if descriptors is not None:
            self.model_ids["descriptors"] = descriptors.model_id

    # ------------------------------------------------------------------------------------------ loading

    @classmethod
    def from_models_dir(cls, models_dir: str | os.PathLike | None = None, *, precision: str = "fp32",
                        backend: str = "auto", threads: int | None = None,
                        config: GraderConfig | None = None, descriptors: bool = True,
                        roi_model: str | os.PathLike | None = None) -> TwoStageGrader:
        """Load ``roi_cnn[.PRECISION].onnx`` and ``g_cnn[.PRECISION].onnx`` from ``models_dir``.

        ``models_dir`` defaults to the repository's shipped ``models/``; ``precision`` is fp32, int8 or
        fp16; ``backend`` auto / onnxruntime / tensorrt (``.plan`` files); ``threads`` per ONNX Runtime
        session. A missing file raises ModelLoadError naming it and the command that makes it.
        With ``descriptors`` (default) the folder's ``descriptors.json`` (the explained assessment's model)
        is loaded too where it exists; a damaged one raises ModelLoadError. ``roi_model``: a ROI-CNN file
        used instead of the folder's (e.g. ``models/roi_cnn_vgg16.int8.onnx``, the paper's network); its
        input size comes from the file.
        """
        directory = Path(models_dir) if models_dir is not None else DEFAULT_MODELS_DIR
        backends: dict[str, InferenceBackend] = {}
        for kind in ("roi", "grader"):
            path = model_path(directory, kind, precision, backend)
            if kind == "roi" and roi_model is not None:
                path = Path(roi_model)
                if not path.is_file():
                    raise ModelLoadError(f"ROI-CNN model not found: {path}; give an exported ROI-CNN .onnx "
                                         f"(e.g. {directory / 'roi_cnn_vgg16.onnx'})")
            if not path.exists():
                how = _how_to_make(path, kind, precision, backend)
                raise ModelLoadError(f"{precision} {kind} model not found: {path}; {how}")
            backends[kind] = load_backend(path, backend=backend, threads=threads)
        descriptor_model = None
        if descriptors and (directory / DESCRIPTOR_MODEL_FILE).is_file():
            try:
                descriptor_model = DescriptorModel.load(directory / DESCRIPTOR_MODEL_FILE)
            except ValueError as error:
                raise ModelLoadError(str(error)) from error
        return cls(backends["roi"], backends["grader"], config, descriptor_model)

    def warm_up(self) -> None:
        """Run each model once on zeros and compile the refinements' kernels, so the first frame is not slow.

        Also checks what the models give back: ModelOutputError (one line, naming the file) for an
        output shape other than (1, 1, S, S) from the ROI-CNN or (1, number of categories) from the G-CNN.
        """
        size = self.roi_size
        prob = self.roi.run(np.zeros((1, 1, size, size), np.float32))
        if prob.ndim != 4 or prob.shape[:2] != (1, 1) or prob.shape[2] < 2 or prob.shape[3] < 2:
            raise ModelOutputError(f"{self.roi.path.name}: ROI-CNN output has shape {tuple(prob.shape)}, "
                                   f"expected (1, 1, {size}, {size}) (a probability map); is it a ROI-CNN?")
        probs = self.grader.run(np.zeros((1, self.grader_channels, self.grader_size, self.grader_size),
                                         np.float32))
        if probs.shape != (1, len(self.categories)):
            raise ModelOutputError(
                f"{self.grader.path.name}: G-CNN output has shape {tuple(probs.shape)}, expected "
                f"(1, {len(self.categories)}) (one probability per category {', '.join(self.categories)})")
        refine_stage.warm_up()

    # ------------------------------------------------------------------------------------------- stages

    def locate(self, image: np.ndarray) -> RoiStageResult:
        """Stage 1: ROI-CNN on the frame resized to the ROI grid, then the area filter.

        ``image``: uint8 H x W gray (or H x W x 3 BGR). The network input is exactly
        ``engine.preprocess.roi_input(image)`` (tests check this).
        """
        t0 = time.perf_counter()
        gray = to_gray_u8(image)
        size = self.roi_size
        # Resize once and keep the small image for refinement; roi_input on an image already at the grid
        # size only standardizes it, so the network sees what roi_input(gray) would give.
        interpolation = cv2.INTER_AREA if min(gray.shape) > size else cv2.INTER_LINEAR
        small = cv2.resize(gray, (size, size), interpolation=interpolation)
        prob = self.roi.run(roi_input(small, size)[None])[0, 0]
        if not np.isfinite(prob).all():  # NaN > 0.5 is False: a broken model would read as "no lesion"
            raise ModelOutputError(f"{self.roi.path.name}: ROI-CNN output has NaN or infinite values")
        raw = area_filtering.area_filter(prob, threshold=self.config.threshold,
                                         min_fraction=self.config.min_fraction)
        lesion = bool(raw.any())
        return RoiStageResult(frame_shape=(int(gray.shape[0]), int(gray.shape[1])), image_288=small,
                              prob=prob, raw_mask=raw, lesion_found=lesion,
                              ms=(time.perf_counter() - t0) * 1e3)

    def refine(self, image: np.ndarray, roi: RoiStageResult) -> RefineStageResult:
        """Stage 2: ``refine.stage.refine_lesion`` with this grader's refinement (``config.refinement``:
        at the frame's own pixels on a bounded crop, or the paper's Chan–Vese on the ROI grid); masks,
        contours, bbox and area in frame px.

        ``image`` is the frame that was located (uint8 gray or BGR, its own size).
        """
        t0 = time.perf_counter()
        height, width = roi.frame_shape
        if not roi.lesion_found:
            empty = np.zeros((height, width), bool)
            return RefineStageResult(
                lesion_found=False, refined_mask_288=roi.raw_mask, iterations=0, converged=False,
                fell_back_to_raw=False, raw_mask=empty, refined_mask=empty, raw_contour=EMPTY_CONTOUR,
                refined_contour=EMPTY_CONTOUR, bbox=None, area_px=0, ms=(time.perf_counter() - t0) * 1e3,
            )
        gray = to_gray_u8(image)
        if gray.shape != (height, width):
            raise ValueError(f"frame shape {gray.shape} differs from the located frame's {(height, width)}: "
                             "refine the same frame that was located")
        lesion = refine_stage.refine_lesion(gray, roi.image_288, roi.prob, roi.raw_mask,
                                            self.config.refine_parameters())
        raw_full = _upsample(roi.raw_mask, height, width)
        refined_full = lesion.mask
        x, y, w, h = cv2.boundingRect(refined_full.view(np.uint8))
        area = int(np.count_nonzero(refined_full))
        return RefineStageResult(
            lesion_found=area > 0, refined_mask_288=lesion.mask_grid, iterations=lesion.iterations,
            converged=lesion.converged, fell_back_to_raw=lesion.fell_back, raw_mask=raw_full,
            refined_mask=refined_full, raw_contour=_polygon(raw_full), refined_contour=_polygon(refined_full),
            bbox=(int(x), int(y), int(w), int(h)) if area else None, area_px=area,
            ms=(time.perf_counter() - t0) * 1e3,
        )

    def grader_input(self, gray: np.ndarray, mask: np.ndarray,
                     box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The G-CNN's (C, S, S) input for a lesion ``mask`` on the frame ``gray``, as this grader's model
        wants it (its size, margin, mask channel and view; ``engine.preprocess.grader_input``)."""
        return grader_input(gray, mask, size=self.grader_size, margin=self.grader_margin,
                            mask_channel=self.mask_channel, box=box, view=self.grader_view)

    def classify(self, image: np.ndarray, refined: RefineStageResult, *,
                 pixel_size_mm: float | tuple[float, float] | None = None,
                 pixel_size_source: str | None = None) -> ClassifyStageResult:
        """Stage 3: G-CNN on ``grader_input`` of the frame at its own size with the refined mask, then
        (with a descriptor model) the explained assessment: descriptors, size (mm with ``pixel_size_mm``
        and its ``pixel_size_source``, else px), malignancy probability, drivers.

        Skipped (probabilities None, category None, 0 ms) when there is no lesion.
        """
        if not refined.lesion_found:
            return ClassifyStageResult(probabilities=None, category=None, categories=self.categories,
                                       assessment=self._absent_assessment("no lesion found"))
        t0 = time.perf_counter()
        gray = to_gray_u8(image)
        if gray.shape != refined.refined_mask.shape:
            raise ValueError(
                f"frame shape {gray.shape} differs from the refined mask's {refined.refined_mask.shape}: "
                "classify the same frame that was located and refined"
            )
        # The box from the mask itself (callers may pass a stand-in with another mask, e.g. the raw ROI);
        # cv2.boundingRect is several times faster than grader_input's own np.nonzero on large frames.
        mask = np.ascontiguousarray(refined.refined_mask, dtype=bool)
        box = cv2.boundingRect(mask.view(np.uint8))
        if box[2] == 0:
            raise ValueError("classify: the refined mask is empty although lesion_found is True")
        batch = self.grader_input(gray, mask, box)[None]
        probs = self.grader.run(batch)[0]
        if probs.shape != (len(self.categories),):
            raise ValueError(f"{self.grader.path}: output shape {probs.shape}, expected "
                             f"({len(self.categories)},) for categories {self.categories}")
        if not np.isfinite(probs).all():  # argmax of NaN is a category; refuse it instead
            raise ModelOutputError(f"{self.grader.path.name}: G-CNN output has NaN or infinite values")
        category = self.categories[int(np.argmax(probs))]
        assessment = None
        descriptor_ms = None
        if self.descriptors is not None:
            t_descriptors = time.perf_counter()
            assessment = self.descriptors.assess(gray, mask, probs, pixel_size_mm=pixel_size_mm,
                                                 pixel_size_source=pixel_size_source)
            descriptor_ms = (time.perf_counter() - t_descriptors) * 1e3
        return ClassifyStageResult(probabilities=probs, category=category, categories=self.categories,
                                   ms=(time.perf_counter() - t0) * 1e3, assessment=assessment,
                                   descriptor_ms=descriptor_ms)

    def _absent_assessment(self, reason: str) -> dict | None:
        """The assessment keys set to None with the reason; None without a descriptor model."""
        return absent(reason) if self.descriptors is not None else None

    def grade(self, image: np.ndarray, *, pixel_size_mm: float | tuple[float, float] | None = None,
              pixel_size_source: str | None = None) -> GradeResult:
        """All three stages on one frame (uint8 gray or BGR, any size); the pixel size (mm, and where it
        came from: ``refine.measure.PIXEL_SIZE_SOURCES``) only sets the size's unit."""
        t0 = time.perf_counter()
        gray = to_gray_u8(image)
        roi = self.locate(gray)
        refined = self.refine(gray, roi)
        classified = self.classify(gray, refined, pixel_size_mm=pixel_size_mm,
                                   pixel_size_source=pixel_size_source)
        total = (time.perf_counter() - t0) * 1e3
        probabilities = None
        if classified.probabilities is not None:
            pairs = zip(self.categories, classified.probabilities, strict=True)
            probabilities = {c: float(p) for c, p in pairs}
        return GradeResult(
            lesion_found=refined.lesion_found, raw_mask=refined.raw_mask, refined_mask=refined.refined_mask,
            raw_contour=refined.raw_contour, refined_contour=refined.refined_contour, bbox=refined.bbox,
            area_px=refined.area_px, category=classified.category, probabilities=probabilities,
            timings_ms={"roi_cnn": roi.ms, "refine": refined.ms, "g_cnn": classified.ms, "total": total},
            model_ids=dict(self.model_ids), iterations=refined.iterations, converged=refined.converged,
            assessment=classified.assessment,
        )


def _upsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bool mask to (height, width), nearest neighbour (no new labels, no blur)."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.view(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).view(bool)


def _polygon(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return EMPTY_CONTOUR
    return np.asarray(contours.mask_to_polygon(mask), dtype=np.int32).reshape(-1, 2)
