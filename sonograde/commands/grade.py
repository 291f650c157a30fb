"""Grade breast-ultrasound images with the two-stage model: ROI-CNN -> refinement -> G-CNN.

Each image (any size, gray or colour; JPEG, PNG, BMP, TIFF, 8 or 16 bit; DICOM, its first frame; a
folder means every image in it, or the images its manifest.csv lists) is located, refined and graded
into BI-RADS 3, 4A, 4B, 4C or 5, and explained: the BI-RADS lexicon descriptors (shape, orientation,
margin, echo pattern, posterior features, calcifications), the lesion's size (width, height, longest
diameter) and a calibrated malignancy probability (models/descriptors.json, models/descriptors.md).
Nothing is written to disk unless --out is given. Runs on ONNX Runtime; torch is not needed.

16-bit images are scaled by the bits they use (12-bit data in a 16-bit PNG by 4095, or by the PNG's
sBIT chunk), not by 65535. An image over --max-pixels is refused from its header, before decoding.
An image the models cannot judge is reported "not gradeable" with the reason instead of a category:
too small (under 100 px a side), no tissue (blank or black), or a colour Doppler / elastography overlay.

Examples:
  sonograde grade scan.png                          # readable table
  sonograde grade scans/ --json                     # one JSON line per image
  sonograde grade a.jpg b.png --out results/        # + results/a_mask.png, results/a_overlay.png, ...
  sonograde grade scan.png --precision int8         # models/roi_cnn.int8.onnx + models/g_cnn.int8.onnx
  sonograde grade scan.png --models my_models/      # roi_cnn.onnx and g_cnn.onnx from another folder
  sonograde grade scan.png --pixel-size-mm 0.07     # size in mm (else px, or DICOM's own pixel size)
  sonograde grade DIR --json                        # DIR/manifest.csv: its images, its pixel_size_mm
  sonograde grade scan.dcm --dicom-out DIR          # + DIR/scan_sr.dcm (TID 1500 SR), DIR/scan_seg.dcm
  sonograde grade scan.png --refinement paper       # the paper's Chan-Vese on the 288 grid instead
  sonograde grade DIR --table grades.parquet        # a whole archive: one row per image, all cores
  sonograde grade DIR1 DIR2 --table grades.csv --resume              # continue a killed run
  sonograde grade DIR --table grades.parquet --engine ray --ray-address auto   # on a Ray cluster

JSON line (one per readable image):
  {"image": "scan.png", "lesion_found": true, "category": "4B",
   "probabilities": {"3": .., "4A": .., "4B": .., "4C": .., "5": ..}, "bbox": [x, y, w, h],
   "area_px": .., "timings_ms": {"roi_cnn": .., "refine": .., "g_cnn": .., "total": ..},
   "not_gradeable": null,
   "descriptors": {"shape": {"value": "irregular", "probabilities": {..}},
                   "orientation": {"value": "parallel", "angle_deg": 12.5, "height_width_ratio": ..},
                   "margin": {"value": "not circumscribed", "probabilities": {..}, "subtypes": {..}},
                   "echo_pattern": {..}, "posterior_features": {..}, "calcifications": {..}},
   "size": {"unit": "mm", "width": 14.2, "height": 9.8, "longest": 15.0, "pixel_size_mm": 0.065,
            "pixel_size_source": "manifest"},
   "malignancy_probability": 0.42, "drivers": [{"descriptor": "margin", "value": .., "contribution": ..,
   "direction": "up"}, ..], "descriptor_model": ".."}
bbox and area_px are in the input image's pixels. With no lesion: lesion_found false, category,
probabilities and bbox null, area_px 0, descriptors, size and malignancy_probability null with
assessment_absent_reason. Not gradeable: the same, "timings_ms" empty and "not_gradeable" says why
(e.g. "too small (10 x 10 px; at least 100 px a side)"). The size is in mm only when the pixel size is
known (--pixel-size-mm, a manifest's pixel_size_mm, DICOM Sequence of Ultrasound Regions or Pixel
Spacing; pixel_size_source says which); otherwise in px, never a guessed mm. drivers: the descriptors
that pushed the assessment up or down (signed log-odds contributions to a suspicion model). A descriptor
the model cannot learn is given with value null and its reason.

--out also writes <stem>_mask.png (the refined lesion mask at the input's own size, 0/255; all zero
when no lesion) and <stem>_overlay.png (the image with the ROI-CNN contour in blue, the refined
contour in red, the category and its probability; images under 360 px are enlarged
by a whole factor so the text stays legible).

--dicom-out DIR (DICOM inputs; needs the dicom extra) writes for each DICOM image what
`sonograde dicom serve` sends back: <stem>_sr.dcm, a Comprehensive 3D SR measurement report (lesion size
in mm from Pixel Spacing or the Sequence of Ultrasound Regions, BI-RADS category, descriptors,
malignancy probability, model ids, research statement), <stem>_seg.dcm, a Segmentation of the refined
lesion (when one is found), <stem>.json, and with --dicom-overlay <stem>_sc.dcm, a Secondary Capture of
the overlay. A multi-frame image is graded on up to 8 frames spread over it, reported on the one with
the largest lesion (docs/dicom.md).

--table OUT.parquet|OUT.csv grades whole archives instead (docs/batch.md): folders are searched
recursively (DICOM files also without a suffix, manifest folders by their manifest), every image or
DICOM frame becomes a row (path, id, category, probabilities, malignancy probability, descriptors, size,
bbox, model ids and file hashes, error), on a process pool over this machine's cores (--engine local,
--workers N) or on Ray Data (--engine ray [--ray-address ADDR]; the ray extra). A file that cannot be
read is an error row, never the end of the run; rows reach the disk as they finish, and --resume
continues a stopped run. Nothing goes to stdout; a progress bar and a summary go to stderr.

Exit status: 0 all graded; 1 some image could not be read or graded (named on stderr, the others are
still graded); 2 bad models or options.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from refine.stage import DEFAULT_REFINEMENT, REFINEMENTS
from sonograde import RESEARCH_USE_ONLY
from sonograde.archive.sources import unique_stem
from sonograde.image_files import IMAGE_SUFFIXES, dicom_pixel_size, read_image, write_png
from sonograde.still_overlay import render_overlay


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE",
                        help="image files or folders of images (JPEG, PNG, BMP, TIFF, DICOM)")
    parser.add_argument("--models", type=Path, default=None, metavar="DIR",
                        help="folder with roi_cnn[.PRECISION].onnx and g_cnn[.PRECISION].onnx "
                             "(default: the shipped models/)")
    parser.add_argument("--roi-model", type=Path, default=None, metavar="ONNX",
                        help="ROI-CNN file used instead of the models folder's roi_cnn[.P].onnx, e.g. "
                             "models/roi_cnn_vgg16.int8.onnx (the paper's network)")
    parser.add_argument("--precision", choices=("fp32", "int8", "fp16"), default="fp32",
                        help="which model files to use (default fp32)")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt"), default="auto",
                        help="inference backend (default auto: ONNX Runtime for .onnx)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime intra-op threads per model (default 1, see docs/inference.md)")
    parser.add_argument("--refinement", choices=REFINEMENTS, default=None, metavar="NAME",
                        help="how the lesion outline is refined (default: the product's, "
                             f"{DEFAULT_REFINEMENT}): {', '.join(REFINEMENTS)}; paper = the paper's area "
                             "filter + Chan-Vese on the 288 grid, native-* = at the image's own pixels "
                             "(docs/refine.md)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write <stem>_mask.png and <stem>_overlay.png for each image into DIR")
    parser.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    parser.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                        help="for DICOM images: write a TID 1500 SR, a SEG and a JSON summary into DIR "
                             "(sizes from the DICOM's own pixel size)")
    parser.add_argument("--dicom-overlay", action="store_true",
                        help="with --dicom-out: also a Secondary Capture with the overlay drawn in")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help="refuse images with more pixels than this (default 50,000,000, about 7000 x "
                             "7000), checked from the file's header before decoding")
    parser.add_argument("--pixel-size-mm", type=float, default=None, metavar="MM",
                        help="size of one image pixel in mm, for every image (the lesion size is then in "
                             "mm; default: the DICOM's or the manifest's own, else sizes in px)")
    archive = parser.add_argument_group("whole archives into one table (docs/batch.md)")
    archive.add_argument("--table", type=Path, default=None, metavar="OUT.parquet|OUT.csv",
                         help="grade every image the sources name (folders searched recursively, DICOM "
                              "frames each a row) into one table, in parallel; nothing on stdout")
    archive.add_argument("--engine", choices=("local", "ray"), default="local",
                         help="with --table: a process pool on this machine (default), or Ray Data on a "
                              "Ray cluster (needs the ray extra)")
    archive.add_argument("--workers", type=int, default=None, metavar="N",
                         help="with --table: worker processes / Ray actors, each with its own models and "
                              "one core (default: this machine's cores; with --ray-address the cluster's "
                              "CPUs, or its GPUs / --gpus-per-worker)")
    archive.add_argument("--ray-address", default=None, metavar="ADDR",
                         help="with --engine ray: the cluster to use (auto on a node of it, or HEAD:6379; "
                              "default: a Ray instance started on this machine for the run)")
    archive.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                         help="with --engine ray: GPUs each actor reserves (e.g. 1 or 0.25 with "
                              "--backend tensorrt; default 0)")
    archive.add_argument("--resume", action="store_true",
                         help="with --table: keep the table's rows and grade only the images it lacks "
                              "(or whose row has an error); a killed run continues where it stopped")


def expand_images(items: list[str]) -> list[Path]:
    """Files as given; folders expand to their image files (sorted, not recursive)."""
    paths: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(path)
    return paths


def expand_inputs(items: list[str]) -> list[tuple[Path, float | None]]:
    """(image, pixel size in mm from a manifest or None) per input: a folder with a manifest.csv gives the
    images it lists with their ``pixel_size_mm``; other folders their image files; files as given.
    Raises ValueError naming a bad manifest."""
    from engine.data.manifest import ManifestError, read_manifest

    out: list[tuple[Path, float | None]] = []
    for item in items:
        path = Path(item)
        if path.is_dir() and (path / "manifest.csv").is_file():
            try:
                records = read_manifest(path)
            except ManifestError as error:
                raise ValueError(str(error)) from None
            out.extend((r.image, r.pixel_size_mm) for r in records)
        else:
            out.extend((p, None) for p in expand_images([item]))
    return out


def _table_row(name: str, shape: tuple[int, ...], result, not_gradeable: str | None = None) -> str:
    size = f"{shape[1]}x{shape[0]}"
    if not_gradeable:
        return f"{name:<32.32} {size:>10} NOT GRADEABLE: {not_gradeable}"
    if not result.lesion_found:
        return f"{name:<32.32} {size:>10} {'no lesion':<9} {'-':>6} {'-':>6} {'-':<22} {0:>8} " \
               f"{result.timings_ms['total']:>8.1f}"
    p = result.probabilities[result.category]
    bbox = ",".join(str(v) for v in result.bbox)
    row = (f"{name:<32.32} {size:>10} {'yes':<9} {result.category:>6} {p:>6.2f} {bbox:<22} "
           f"{result.area_px:>8} {result.timings_ms['total']:>8.1f}")
    return row + _assessment_text(result.assessment)


def _assessment_text(assessment: dict | None) -> str:
    """The explained part of a table row: malignancy probability, size, the descriptors' values."""
    if not assessment or assessment.get("descriptors") is None:
        return ""
    lesion = assessment["size"]
    parts = [f"malignancy {assessment['malignancy_probability']:.2f}",
             f"{lesion['width']:g} x {lesion['height']:g} {lesion['unit']} (longest {lesion['longest']:g})"]
    parts += [f"{k}: {v['value']}" for k, v in assessment["descriptors"].items() if v.get("value")]
    return "\n    " + "; ".join(parts)


def _report_not_gradeable(path: Path, image, reason: str, args: argparse.Namespace, used: set[str],
                          assessment: dict | None = None) -> None:
    """Output for an image that was not graded: the reason where the category would be (and, with a
    descriptor model, ``assessment``: its keys absent with the reason)."""
    import numpy as np
    from tqdm import tqdm

    if args.json:
        line = {"image": str(path), "lesion_found": False, "category": None, "probabilities": None,
                "bbox": None, "area_px": 0, "timings_ms": {}, "not_gradeable": reason, **(assessment or {})}
        tqdm.write(json.dumps(line), file=sys.stdout)
    else:
        tqdm.write(_table_row(path.name, image.shape, None, reason), file=sys.stdout)
    if args.out is not None:
        stem = unique_stem(path.stem, used)
        write_png(args.out / f"{stem}_mask.png", np.zeros(image.shape[:2], np.uint8))
        overlay = render_overlay(image, None, note=f"not gradeable: {reason}")
        write_png(args.out / f"{stem}_overlay.png", overlay)
    sys.stdout.flush()


def _is_dicom(path: Path) -> bool:
    from capture.sources import is_dicom_file

    return is_dicom_file(path)


def _grade_dicom(path: Path, grader, out_dir: Path, stem: str, overlay: bool):
    """Grade a DICOM file as the DICOM node does and write its SR, SEG (SC) and JSON summary.

    Returns the reported frame and its result; ValueError (one line) when it cannot be read or graded.
    """
    import pydicom

    from sonograde.dicom import grading

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises several types for damaged files
        raise ValueError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    graded = grading.grade_dataset(ds, grader, overlay=overlay)  # RefusedError is a ValueError
    grading.write_objects(graded, out_dir, stem)
    grading.write_summary(out_dir, stem, graded.summary)
    return graded.frame, graded.result


def run_table(args: argparse.Namespace) -> int:
    """``--table``: the archive grader (``sonograde.archive``)."""
    from engine.backends import ModelLoadError
    from sonograde.archive.runner import run_archive
    from sonograde.archive.worker import GradeSettings

    if args.json or args.dicom_out is not None:
        print("sonograde grade: --table writes one table; it does not go with --json or --dicom-out",
              file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"sonograde grade: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.engine != "ray" and (args.ray_address or args.gpus_per_worker):
        print("sonograde grade: --ray-address and --gpus-per-worker need --engine ray", file=sys.stderr)
        return 2
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"sonograde grade: cannot create output folder {args.out}: {exc}", file=sys.stderr)
            return 2
    settings = GradeSettings(models_dir=str(args.models) if args.models else None, precision=args.precision,
                             backend=args.backend, threads=args.threads or 1,
                             pixel_size_mm=args.pixel_size_mm, max_pixels=args.max_pixels,
                             out_dir=str(args.out.resolve()) if args.out else None,
                             refinement=args.refinement)
    try:
        summary = run_archive(args.images, args.table, settings, engine=args.engine, workers=args.workers,
                              ray_address=args.ray_address, resume=args.resume,
                              gpus_per_worker=args.gpus_per_worker)
    except KeyboardInterrupt:
        print("sonograde grade: interrupted; the finished rows are kept: continue with the same command "
              "and --resume", file=sys.stderr)
        return 130
    except (ModelLoadError, ValueError, RuntimeError) as exc:
        lines = str(exc).strip().splitlines()
        print(f"sonograde grade: {lines[0] if lines else type(exc).__name__}", file=sys.stderr)
        return 2
    print(f"{RESEARCH_USE_ONLY}. {summary.images} image(s) graded into {args.table} ({summary.rows} rows, "
          f"{summary.not_gradeable} not gradeable, {summary.errors} error(s)); {summary.skipped} already "
          f"there; {summary.table_rows} rows in the table", file=sys.stderr)
    return 1 if summary.errors else 0


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from engine.backends import ModelLoadError
    from engine.descriptors import absent
    from engine.gradeability import check_gradeable
    from engine.grader import GraderConfig, TwoStageGrader

    if args.threads is not None and args.threads < 1:
        print(f"sonograde grade: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.max_pixels is not None and args.max_pixels < 1:
        print(f"sonograde grade: --max-pixels must be >= 1, got {args.max_pixels}", file=sys.stderr)
        return 2
    if args.pixel_size_mm is not None and not (0 < args.pixel_size_mm < 100):
        print(f"sonograde grade: --pixel-size-mm must be a positive size of one pixel in mm (e.g. 0.07), "
              f"got {args.pixel_size_mm}", file=sys.stderr)
        return 2
    if args.table is not None:
        return run_table(args)
    try:
        config = GraderConfig(refinement=args.refinement) if args.refinement else None
        grader = TwoStageGrader.from_models_dir(args.models, precision=args.precision, backend=args.backend,
                                                threads=args.threads, config=config, roi_model=args.roi_model)
        grader.warm_up()
    except (ModelLoadError, ValueError) as exc:
        print(f"sonograde grade: {exc}", file=sys.stderr)
        return 2
    for folder in (args.out, args.dicom_out):
        if folder is None:
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"sonograde grade: cannot create output folder {folder}: {exc}", file=sys.stderr)
            return 2
    if args.dicom_out is not None:
        try:
            import sonograde.dicom.objects  # noqa: F401 - needs highdicom
        except ImportError as exc:
            print(f"sonograde grade: --dicom-out needs the dicom extra ({exc.name} is missing); "
                  "pip install 'sonograde[dicom]'", file=sys.stderr)
            return 2

    try:
        inputs = expand_inputs(args.images)
    except ValueError as exc:
        print(f"sonograde grade: {exc}", file=sys.stderr)
        return 2
    paths = [path for path, _ in inputs]
    if not paths:
        print("sonograde grade: no images found in " + ", ".join(args.images)
              + f" (looked for {', '.join(IMAGE_SUFFIXES)})", file=sys.stderr)
        return 1
    if not args.json:
        print(RESEARCH_USE_ONLY)
        print(f"models: {grader.model_ids['roi']} + {grader.model_ids['grader']} ({args.precision}, "
              f"{grader.roi.name})")
        print(f"{'image':<32} {'size':>10} {'lesion':<9} {'BI-RADS':>6} {'p':>6} {'bbox x,y,w,h':<22} "
              f"{'area_px':>8} {'ms':>8}")
    failures = 0
    used_stems: set[str] = set()
    dicom_stems: set[str] = set()  # --dicom-out names, apart from --out's
    for path, manifest_size in tqdm(inputs, desc="grading", unit="image", file=sys.stderr, disable=None,
                                    leave=False):
        if args.dicom_out is not None and path.is_file() and _is_dicom(path):
            # graded as the DICOM node grades it: frame choice and pixel size from the DICOM itself
            try:
                image, result = _grade_dicom(path, grader, args.dicom_out,
                                             unique_stem(path.stem, dicom_stems), args.dicom_overlay)
            except ValueError as exc:
                tqdm.write(f"sonograde grade: cannot grade DICOM image {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
        else:
            if args.dicom_out is not None:
                tqdm.write(f"sonograde grade: {path} is not a DICOM file: no DICOM objects written for it",
                           file=sys.stderr)
            try:
                image = read_image(path, args.max_pixels)
            except (ValueError, OSError) as exc:
                tqdm.write(f"sonograde grade: cannot read image {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
            verdict = check_gradeable(image)
            if not verdict.gradeable:  # an answer, not a failure: say why instead of a category
                absent_assessment = (absent(f"not gradeable: {verdict.reason}") if grader.descriptors
                                     else None)
                _report_not_gradeable(path, image, verdict.reason, args, used_stems, absent_assessment)
                continue
            # pixel size: the user's --pixel-size-mm, else the DICOM's own, else the manifest's, else none
            if args.pixel_size_mm is not None:
                pixel_size, source = args.pixel_size_mm, "cli"
            else:
                pixel_size, source = dicom_pixel_size(path)
                if pixel_size is None and manifest_size:
                    pixel_size, source = manifest_size, "manifest"
            try:
                result = grader.grade(image, pixel_size_mm=pixel_size, pixel_size_source=source)
            except ValueError as exc:  # e.g. an image too odd for the preprocessing; the others still run
                tqdm.write(f"sonograde grade: cannot grade image {path}: {exc}", file=sys.stderr)
                failures += 1
                continue
        if args.json:
            line = {"image": str(path), **result.as_dict(), "not_gradeable": None}
            tqdm.write(json.dumps(line), file=sys.stdout)
        else:
            tqdm.write(_table_row(path.name, image.shape, result), file=sys.stdout)
        if args.out is not None:
            stem = unique_stem(path.stem, used_stems)
            write_png(args.out / f"{stem}_mask.png", result.refined_mask.astype(np.uint8) * 255)
            write_png(args.out / f"{stem}_overlay.png", render_overlay(image, result))
        sys.stdout.flush()
    if not args.json:
        print(RESEARCH_USE_ONLY)
    if failures:
        print(f"sonograde grade: {failures} of {len(paths)} image(s) could not be read or graded",
              file=sys.stderr)
        return 1
    return 0
