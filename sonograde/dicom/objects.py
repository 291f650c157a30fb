"""The DICOM objects Sonograde writes about one graded ultrasound image, built with highdicom.

- ``build_measurement_report``: a Comprehensive 3D SR holding a TID 1500 Imaging Measurement Report. One
  planar ROI measurement group (TID 1410) for the lesion: its refined outline as a closed polyline on the
  source image (frame), width, height and longest diameter in mm (UCUM ``mm``), the BI-RADS assessment
  category, the lexicon descriptors the grader gives, the malignancy probability, and the algorithm's
  identification (name, version, the two models' ids). A Qualitative Evaluations container holds the
  research-use statement. With no lesion found the group has no outline and says so.
- ``build_segmentation``: a binary Segmentation (SEG) of the refined lesion mask on the source image.
- ``build_overlay_capture``: a Secondary Capture of the overlay (outline, category, research banner).

Patient and study identity come from the source image (highdicom copies them), so a PACS files the
objects with their study. UIDs are derived from the source's UIDs and the models' ids, so grading the
same image with the same models again makes the same objects (a PACS replaces instead of duplicating,
and a retried forward cannot make two copies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from sonograde import RESEARCH_USE_ONLY, __version__

MANUFACTURER = "Sonograde (open source)"
MODEL_NAME = "Sonograde two-stage grader"
# Codes DICOM has no concept for (the BI-RADS 4 subcategories, our own findings) use this private scheme.
PRIVATE_SCHEME = "99SONOGRADE"
UNITLESS = Code("1", "UCUM", "no units")
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"

BIRADS_CONCEPT = codes.DCM.AssessmentCategory  # (111005, DCM, "Assessment Category")
BIRADS_MEANINGS = {
    "2": "BI-RADS 2: benign",
    "3": "BI-RADS 3: probably benign",
    "4A": "BI-RADS 4A: low suspicion for malignancy",
    "4B": "BI-RADS 4B: moderate suspicion for malignancy",
    "4C": "BI-RADS 4C: high suspicion for malignancy",
    "5": "BI-RADS 5: highly suggestive of malignancy",
}
NO_LESION = Code("NO-LESION", PRIVATE_SCHEME, "No lesion found by the ROI-CNN")
STATEMENT_CONCEPT = codes.DCM.Comment
QUALITATIVE_EVALUATIONS = Code("126010", "DCM", "Qualitative Evaluations")  # TID 1500 row 12

# BI-RADS ultrasound lexicon (5th edition) -> DICOM concept names and values (CIDs 6151-6157, 6335-6342)
# where DICOM has them; any other descriptor or value is written in the private scheme with its own words.
DESCRIPTOR_CONCEPTS: dict[str, Code] = {
    "shape": codes.SCT.Shape,
    "margin": codes.DCM.Margins,
    "orientation": codes.DCM.Orientation,
    "echo_pattern": codes.DCM.EchoPattern,
    "echogenicity": codes.DCM.EchoPattern,
    "posterior_features": codes.DCM.PosteriorAcousticFeatures,
    "posterior_acoustic_features": codes.DCM.PosteriorAcousticFeatures,
}
DESCRIPTOR_VALUES: dict[str, Code] = {
    "oval": codes.SCT.OvoidShape,
    "round": codes.SCT.Round,
    "irregular": codes.SCT.Irregular,
    "circumscribed": codes.SCT.CircumscribedLesion,
    "indistinct": codes.SCT.IndistinctLesion,
    "microlobulated": Code("129739004", "SCT", "Microlobulated lesion"),
    "spiculated": codes.SCT.SpiculatedLesion,
    "parallel": codes.DCM.Parallel,
    "not parallel": codes.DCM.NotParallel,
    "anechoic": codes.DCM.Anechoic,
    "hyperechoic": codes.DCM.Hyperechoic,
    "complex": codes.DCM.Complex,
    "complex cystic and solid": codes.DCM.Complex,
    "hypoechoic": codes.DCM.Hypoechoic,
    "isoechoic": codes.DCM.Isoechoic,
    "no posterior features": codes.DCM.NoPosteriorAcousticFeatures,
    "none": codes.DCM.NoPosteriorAcousticFeatures,
    "enhancement": codes.DCM.PosteriorEnhancement,
    "shadowing": codes.DCM.PosteriorShadowing,
    "combined": codes.DCM.CombinedPosteriorEnhancementAndShadowing,
    "combined pattern": codes.DCM.CombinedPosteriorEnhancementAndShadowing,
    "not circumscribed": codes.RADLEX.NonCircumscribedMargin,
    "heterogeneous": codes.RADLEX.Heterogeneous,
}
SIZE_CONCEPTS = {
    "width": codes.SCT.Width,
    "height": codes.DCM.Height,
    "longest": codes.SCT.LongAxis,
}


@dataclass(frozen=True)
class Assessment:
    """What the report says about one image, independent of how it was computed.

    category : BI-RADS category ("3", "4A", ...), None when no lesion was found.
    probabilities : {category: probability} of the grader, None without a lesion.
    contour : (N, 2) (x, y) refined outline in the source frame's pixels; empty without a lesion.
    mask : bool (H, W) refined lesion mask at the source frame's pixels.
    size : ``refine.measure.lesion_size`` dict, or None (no lesion).
    descriptors : {descriptor: value} BI-RADS lexicon descriptors, or None when the grader gives none.
        A value may be a string or a dict with a ``"value"`` key (as ``lesion_orientation`` returns).
    malignancy_probability : probability of malignancy in [0, 1], or None.
    model_ids : {"roi": .., "grader": ..}.
    frame_number : 1-based frame of a multi-frame source the assessment is about, None for one frame.
    """

    category: str | None
    probabilities: Mapping[str, float] | None
    contour: np.ndarray
    mask: np.ndarray
    size: Mapping | None
    model_ids: Mapping[str, str]
    descriptors: Mapping[str, object] | None = None
    malignancy_probability: float | None = None
    frame_number: int | None = None

    @property
    def lesion_found(self) -> bool:
        return self.category is not None and bool(np.asarray(self.mask).any())


def derived_uid(source: Dataset, kind: str, assessment: Assessment) -> str:
    """A UID fixed by the source instance, the object kind and the models (same input -> same UID)."""
    models = f"{assessment.model_ids.get('roi', '')}|{assessment.model_ids.get('grader', '')}"
    return generate_uid(entropy_srcs=[str(source.SOPInstanceUID), kind, models, __version__])


def derived_series_uid(source: Dataset, kind: str) -> str:
    """One series per study and object kind (all Sonograde SRs of a study in one series)."""
    return generate_uid(entropy_srcs=[str(source.StudyInstanceUID), "sonograde", kind])


SERIES_NUMBERS = {"sr": 9901, "seg": 9902, "sc": 9903}


MODEL_LABELS = {"roi": "ROI-CNN", "grader": "G-CNN", "descriptors": "descriptor model"}


def model_parameters(model_ids: Mapping[str, str]) -> dict[str, str]:
    """{"ROI-CNN": id, "G-CNN": id, ("descriptor model": id)}: the models behind a result."""
    return {label: str(model_ids.get(key, "unknown")) for key, label in MODEL_LABELS.items()
            if key != "descriptors" or key in model_ids}


def algorithm_identification(model_ids: Mapping[str, str]) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=MODEL_NAME, version=__version__,
        parameters=[f"{label} {value}" for label, value in model_parameters(model_ids).items()],
    )


def _descriptor_item(name: str, value: object) -> hd.sr.QualitativeEvaluation | None:
    if isinstance(value, Mapping):
        value = value.get("value")
    if value is None:
        return None
    text = str(value).strip()
    key = name.strip().lower().replace(" ", "_")
    concept = DESCRIPTOR_CONCEPTS.get(key) or Code(
        f"DESC-{key.upper()[:10]}", PRIVATE_SCHEME, name.replace("_", " ")[:64])
    coded = DESCRIPTOR_VALUES.get(text.lower()) or Code(
        f"V-{text.upper().replace(' ', '-')[:14]}", PRIVATE_SCHEME, text[:64])
    return hd.sr.QualitativeEvaluation(name=concept, value=coded)


def _size_measurements(size: Mapping) -> list[hd.sr.Measurement]:
    if size.get("unit") != "mm":
        return []  # a pixel count is never written as mm; the statement says why sizes are missing
    # The algorithm is identified once, on the measurement group: repeating it on every measurement
    # (TID 300 allows both) made the report's content tree, and highdicom's time to build it, twice as big.
    return [hd.sr.Measurement(name=concept, value=float(size[key]), unit=codes.UCUM.Millimeter)
            for key, concept in SIZE_CONCEPTS.items()]


def _closed_polyline(contour: np.ndarray) -> np.ndarray:
    points = np.asarray(contour, dtype=np.float32).reshape(-1, 2)
    if len(points) < 3:  # a one- or two-pixel lesion: a box around it keeps a valid closed polyline
        x0, y0 = points.min(0) - 0.5
        x1, y1 = points.max(0) + 0.5
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)
    return np.vstack([points, points[:1]])  # closed: the last point repeats the first


def statement(assessment: Assessment) -> str:
    """The free-text comment of the report: research use, and why sizes are missing if they are."""
    parts = [f"{RESEARCH_USE_ONLY}. Sonograde is research software, not a medical device; its categories "
             "come from models trained on small public datasets and must never guide patient care."]
    if assessment.lesion_found and (assessment.size is None or assessment.size.get("unit") != "mm"):
        parts.append("Lesion size not reported: the image carries no physical pixel size (neither Pixel "
                     "Spacing nor a Sequence of Ultrasound Regions calibrated in cm).")
    return " ".join(parts)


def build_measurement_report(source: Dataset, assessment: Assessment, *,
                             instance_number: int | None = None) -> hd.sr.Comprehensive3DSR:
    """Comprehensive 3D SR (TID 1500) about ``assessment`` of the image ``source``.

    Parameters
    ----------
    source : the ultrasound image dataset (its patient, study and image UIDs are referenced).
    assessment : the grader's result for it (see ``Assessment``).
    instance_number : Instance Number of the SR (default: the source's, else 1).
    """
    algorithm = algorithm_identification(assessment.model_ids)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["sonograde-device", MODEL_NAME]), name="Sonograde",
        manufacturer_name=MANUFACTURER, model_name=MODEL_NAME)
    observation_context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(observer_type=codes.DCM.Device,
                                                      observer_identifying_attributes=device))
    frames = [assessment.frame_number] if assessment.frame_number is not None else None
    source_image = hd.sr.SourceImageForRegion(str(source.SOPClassUID), str(source.SOPInstanceUID),
                                              referenced_frame_numbers=frames)
    tracking = hd.sr.TrackingIdentifier(uid=derived_uid(source, "lesion", assessment), identifier="lesion 1")
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    measurements: list[hd.sr.Measurement] = []
    if assessment.lesion_found:
        category = str(assessment.category)
        evaluations.append(hd.sr.QualitativeEvaluation(
            name=BIRADS_CONCEPT,
            value=Code(f"BIRADS-{category}", PRIVATE_SCHEME,
                       BIRADS_MEANINGS.get(category, f"BI-RADS {category}"))))
        for name, value in (assessment.descriptors or {}).items():
            item = _descriptor_item(name, value)
            if item is not None:
                evaluations.append(item)
        if assessment.size is not None:
            measurements.extend(_size_measurements(assessment.size))
        if assessment.malignancy_probability is not None:
            measurements.append(hd.sr.Measurement(
                name=codes.DCM.ProbabilityOfCancer, value=float(assessment.malignancy_probability),
                unit=UNITLESS))
        region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                                   graphic_data=_closed_polyline(assessment.contour),
                                   source_image=source_image)
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, referenced_region=region, finding_type=codes.SCT.Lesion,
            finding_category=codes.SCT.MorphologicallyAbnormalStructure, algorithm_id=algorithm,
            measurements=measurements or None, qualitative_evaluations=evaluations)
    else:
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=NO_LESION, algorithm_id=algorithm,
            source_images=[hd.sr.SourceImageForMeasurementGroup(
                str(source.SOPClassUID), str(source.SOPInstanceUID), referenced_frame_numbers=frames)])
    report = hd.sr.MeasurementReport(
        observation_context=observation_context, procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=[group])
    # TID 1500 row "Qualitative Evaluations" (DCM 126010) may hold free text: the research-use statement.
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(
        name=STATEMENT_CONCEPT, value=statement(assessment),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    report[0].ContentSequence.append(container)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_without_pixels(source)], content=report[0],
        series_instance_uid=derived_series_uid(source, "sr"), series_number=SERIES_NUMBERS["sr"],
        sop_instance_uid=derived_uid(source, "sr", assessment),
        instance_number=instance_number or int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=f"Sonograde measurement report - {RESEARCH_USE_ONLY}"[:64],
    )
    return sr


def _without_pixels(source: Dataset) -> Dataset:
    """The source's attributes without Pixel Data: the report needs its identity and UIDs, and highdicom
    copies its evidence (a cine's pixels would be copied for nothing)."""
    header = Dataset()
    for element in source:
        if element.keyword != "PixelData":
            header.add(element)
    header.file_meta = getattr(source, "file_meta", Dataset())
    return header


def build_segmentation(source: Dataset, assessment: Assessment, *,
                       instance_number: int | None = None) -> hd.seg.Segmentation:
    """Binary SEG of the refined lesion mask on ``source`` (on its ``frame_number`` for a multi-frame).

    Raises ValueError when there is no lesion (an empty segmentation says nothing a SR does not).
    """
    if not assessment.lesion_found:
        raise ValueError("no lesion: nothing to segment")
    mask = np.asarray(assessment.mask, dtype=bool)
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    pixels = mask[None].astype(np.uint8)
    # highdicom segments frames of a multi-frame source only through enhanced functional groups, which an
    # ultrasound cine does not have: the SEG is built on the reported frame alone (the same instance seen
    # as one frame) and its references then name that frame.
    reference = _single_frame_view(source) if frames > 1 else source
    algorithm = hd.AlgorithmIdentificationSequence(
        name=MODEL_NAME, family=codes.DCM.ArtificialIntelligence, version=__version__,
        parameters=model_parameters(assessment.model_ids))
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion (refined)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=derived_uid(source, "lesion", assessment),
        tracking_id="lesion 1")
    seg = hd.seg.Segmentation(
        source_images=[reference], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description], series_instance_uid=derived_series_uid(source, "seg"),
        series_number=SERIES_NUMBERS["seg"], sop_instance_uid=derived_uid(source, "seg", assessment),
        instance_number=instance_number or int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME, software_versions=__version__,
        device_serial_number="none", content_label="LESION",
        content_description=f"Refined lesion - {RESEARCH_USE_ONLY}"[:64],
        series_description=f"Sonograde lesion segmentation - {RESEARCH_USE_ONLY}"[:64],
    )
    if reference is not source:
        _name_source_frame(seg, source, assessment.frame_number or 1)
    return seg


def _single_frame_view(source: Dataset) -> Dataset:
    """The source's attributes as a single-frame ultrasound image (no pixel data: highdicom needs only the
    shape); ``_name_source_frame`` turns the references back to the multi-frame instance afterwards."""
    view = Dataset()
    for element in source:
        if element.keyword not in ("PixelData", "NumberOfFrames", "FrameIncrementPointer"):
            view.add(element)
    view.SOPClassUID = US_IMAGE_STORAGE
    view.file_meta = getattr(source, "file_meta", Dataset())
    return view


def _name_source_frame(seg: Dataset, source: Dataset, frame_number: int) -> None:
    """Every reference of ``seg`` to ``source`` gets the source's SOP class back; image references
    (Source Image Sequence items) also name ``frame_number``."""
    uid = str(source.SOPInstanceUID)

    def walk(dataset: Dataset, in_source_images: bool) -> None:
        if str(dataset.get("ReferencedSOPInstanceUID", "")) == uid:
            dataset.ReferencedSOPClassUID = source.SOPClassUID
            if in_source_images:
                dataset.ReferencedFrameNumber = frame_number
        for element in dataset:
            if element.VR == "SQ":
                for item in element.value:
                    walk(item, element.keyword == "SourceImageSequence")

    walk(seg, False)


def build_overlay_capture(source: Dataset, assessment: Assessment, overlay_bgr: np.ndarray, *,
                          instance_number: int | None = None) -> hd.sc.SCImage:
    """Secondary Capture (RGB) of the overlay image ``overlay_bgr`` (uint8 H x W x 3, OpenCV's BGR)."""
    rgb = np.ascontiguousarray(np.asarray(overlay_bgr, dtype=np.uint8)[..., ::-1])
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        # highdicom insists on an orientation for the patient coordinate system; ultrasound images rarely
        # have one, so the source's own (usually empty) Patient Orientation replaces this placeholder below.
        coordinate_system="PATIENT", patient_orientation=("A", "F"),
        series_instance_uid=derived_series_uid(source, "sc"),
        series_number=SERIES_NUMBERS["sc"], sop_instance_uid=derived_uid(source, "sc", assessment),
        instance_number=instance_number or int(getattr(source, "InstanceNumber", None) or 1),
        manufacturer=MANUFACTURER, series_description=f"Sonograde overlay - {RESEARCH_USE_ONLY}"[:64],
    )
    sc.PatientOrientation = source.get("PatientOrientation", "")
    sc.BurnedInAnnotation = "YES"  # the category, outline and research banner are drawn into the pixels
    sc.ImageComments = RESEARCH_USE_ONLY
    return sc
