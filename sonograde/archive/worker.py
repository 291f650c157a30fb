"""One archive worker: the models loaded once, then one image file in, its table rows out.

``ArchiveWorker.grade`` never raises for a bad file: a file that cannot be read, decoded or graded gives
one row with its ``error``, so one corrupt image in a hundred thousand loses nothing else. Every engine
(in process, the local pool, Ray actors) runs this class with one ONNX Runtime intra-op thread, so an
image gets the same row whichever engine graded it. Writes nothing unless ``out_dir`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonograde.archive.rows import empty_row, error_row, graded_row
from sonograde.archive.sources import ArchiveItem


@dataclass(frozen=True, slots=True)
class GradeSettings:
    """What every worker needs to load the same models and grade the same way (picklable, so it travels
    to worker processes and Ray actors).

    models_dir : folder with roi_cnn/g_cnn[.PRECISION].onnx (None: the shipped models).
    precision, backend : as ``sonograde grade``. threads : ONNX Runtime intra-op threads per model.
    pixel_size_mm : one pixel size for every image (None: the DICOM's own, else the manifest's).
    max_pixels : refuse images over this many pixels (None: the default cap).
    out_dir : write ``<stem>_mask.png`` and ``<stem>_overlay.png`` here (None: write nothing).
    """

    models_dir: str | None = None
    precision: str = "fp32"
    backend: str = "auto"
    threads: int = 1
    pixel_size_mm: float | None = None
    max_pixels: int | None = None
    out_dir: str | None = None
    refinement: str | None = None  # engine.grader.GraderConfig.refinement (None: the grader's default)


def load_grader(settings: GradeSettings):
    """The two-stage grader of ``settings``, warmed up. Raises ModelLoadError / ValueError."""
    from engine.grader import GraderConfig, TwoStageGrader

    config = GraderConfig(refinement=settings.refinement) if settings.refinement else None
    grader = TwoStageGrader.from_models_dir(settings.models_dir, precision=settings.precision,
                                            backend=settings.backend, threads=settings.threads, config=config)
    grader.warm_up()
    return grader


class ArchiveWorker:
    """The models of ``settings`` (loaded once) and what each row says about them: ids and file hashes."""

    def __init__(self, settings: GradeSettings) -> None:
        from engine.checksums import sha256_file

        self.settings = settings
        self.grader = load_grader(settings)
        descriptors = self.grader.descriptors
        descriptor_path = getattr(descriptors, "path", None)
        if descriptors is not None and descriptor_path is None:
            from engine.descriptors import DESCRIPTOR_MODEL_FILE
            from engine.model_files import DEFAULT_MODELS_DIR

            descriptor_path = Path(settings.models_dir or DEFAULT_MODELS_DIR) / DESCRIPTOR_MODEL_FILE
        self.model_columns: dict[str, Any] = {
            "roi_model": self.grader.model_ids.get("roi"),
            "grader_model": self.grader.model_ids.get("grader"),
            "descriptor_model": self.grader.model_ids.get("descriptors"),
            "roi_model_sha256": sha256_file(self.grader.roi.path),
            "grader_model_sha256": sha256_file(self.grader.grader.path),
            "descriptor_model_sha256": sha256_file(descriptor_path) if descriptor_path else None,
        }

    def grade_many(self, items: list[ArchiveItem]) -> list[dict[str, Any]]:
        """The rows of several files, in order."""
        return [row for item in items for row in self.grade(item)]

    def grade(self, item: ArchiveItem) -> list[dict[str, Any]]:
        """The rows of one file: one per image, one per frame of a multi-frame DICOM, or one error row."""
        try:
            return self._grade(item)
        except Exception as exc:  # never let one file end the run: its row says what went wrong
            return [error_row(item.path, item.id, f"{type(exc).__name__}: {exc}")]

    # --------------------------------------------------------------------------------------------- parts

    def _grade(self, item: ArchiveItem) -> list[dict[str, Any]]:
        from capture.sources import is_dicom_file
        from engine.checksums import sha256_file
        from sonograde.dicom.grading import (
            STATUS_NOT_ULTRASOUND,
            STATUS_SOP_CLASS_NOT_SUPPORTED,
            RefusedError,
            check_dataset,
        )
        from sonograde.image_files import dataset_pixel_size, read_dicom_frames, read_image

        path = Path(item.path)
        if not path.is_file():
            return [error_row(item.path, item.id, "no such file" if not path.exists() else "not a file")]
        try:
            file_hash = sha256_file(path)
        except OSError as exc:
            return [error_row(item.path, item.id, f"cannot read the file: {exc.strerror or exc}")]
        item_id = item.id
        pixel_size, source = self.settings.pixel_size_mm, "cli" if self.settings.pixel_size_mm else None
        try:
            if is_dicom_file(path):
                # what the DICOM node refuses (a CT, a structured report) is refused here too
                frames, dataset = read_dicom_frames(path, self.settings.max_pixels, check=check_dataset)
                item_id = item_id or str(getattr(dataset, "SOPInstanceUID", "") or "") or None
                if pixel_size is None:
                    pixel_size, source = dataset_pixel_size(dataset)
                images = list(frames)
            else:
                images = [read_image(path, self.settings.max_pixels)]
        except RefusedError as exc:  # not an ultrasound image: an answer (not gradeable), not an error
            if exc.status not in (STATUS_SOP_CLASS_NOT_SUPPORTED, STATUS_NOT_ULTRASOUND):
                return [error_row(item.path, item.id, f"cannot read the image: {exc}")]
            row = empty_row(item.path, item_id or path.stem)
            row.update(self.model_columns, frame=0, file_sha256=file_hash, not_gradeable=str(exc))
            return [row]
        except (ValueError, OSError) as exc:
            return [error_row(item.path, item.id, f"cannot read the image: {exc}")]
        if pixel_size is None and item.pixel_size_mm:
            pixel_size, source = item.pixel_size_mm, "manifest"
        rows = []
        for index, image in enumerate(images):
            base = empty_row(item.path, item_id or path.stem)
            base.update(self.model_columns)
            base.update(frame=index, frames=len(images), file_sha256=file_hash, width=int(image.shape[1]),
                        height=int(image.shape[0]), pixel_size_mm=pixel_size,
                        pixel_size_source=source if pixel_size else None)
            stem = item.out_stem or path.stem
            rows.append(self._grade_frame(image, base, stem if len(images) == 1 else f"{stem}_f{index:04d}"))
        return rows

    def _grade_frame(self, image, base: dict[str, Any], stem: str) -> dict[str, Any]:
        from engine.gradeability import check_gradeable

        verdict = check_gradeable(image)
        if not verdict.gradeable:  # an answer, not an error: the reason instead of a category
            row = dict(base, lesion_found=False, not_gradeable=verdict.reason, area_px=0)
            self._write_outputs(image, None, stem, f"not gradeable: {verdict.reason}")
            return row
        try:
            result = self.grader.grade(image, pixel_size_mm=base["pixel_size_mm"],
                                       pixel_size_source=base["pixel_size_source"])
        except ValueError as exc:  # e.g. a model output refused for NaN
            return error_row(base["path"], base["id"], f"cannot grade the image: {exc}", base["frame"])
        row = graded_row(base, result)
        self._write_outputs(image, result, stem)
        return row

    def _write_outputs(self, image, result, stem: str, note: str | None = None) -> None:
        """``--out``: the refined mask (0/255, all zero without a lesion) and the overlay."""
        if self.settings.out_dir is None:
            return
        import numpy as np

        from sonograde.image_files import write_png
        from sonograde.still_overlay import render_overlay

        out = Path(self.settings.out_dir)
        mask = (result.refined_mask.astype(np.uint8) * 255 if result is not None
                else np.zeros(image.shape[:2], np.uint8))
        write_png(out / f"{stem}_mask.png", mask)
        overlay = render_overlay(image, result) if note is None else render_overlay(image, None, note=note)
        write_png(out / f"{stem}_overlay.png", overlay)
