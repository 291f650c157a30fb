"""The BI-RADS ultrasound lexicon (ACR, 5th edition) descriptors Sonograde reports, and the one place where
a dataset's own descriptor words are mapped onto them.

Every descriptor has a fixed, ordered tuple of values (``DESCRIPTORS``); a model's probabilities, the
JSON of ``sonograde grade``, the stream and the evaluation all use these names. The not-circumscribed
margin subtypes (``MARGIN_SUBTYPES``) are independent yes/no findings (a margin may be angular *and*
indistinct), so they are not one categorical descriptor.

BrEaST-Lesions_USG's ``manifest.csv`` labels every lesion with the columns ``shape``, ``margin``,
``echogenicity``, ``posterior_features``, ``halo`` and ``calcifications`` (in ``ManifestRecord.extra``);
:func:`manifest_descriptor_labels` turns such a row into lexicon labels. A value that is missing, "not
applicable" (normal images) or outside the lexicon (BrEaST's "indefinable" and "intraductal"
calcifications) becomes ``None``: unknown, never a negative. ``orientation`` is not a reader label in any
of our datasets; it is measured from the lesion's contour.

Pure Python (no numpy, no torch): the runtime, training and evaluation all import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DESCRIPTORS: dict[str, tuple[str, ...]] = {
    "shape": ("oval", "round", "irregular"),
    "orientation": ("parallel", "not parallel"),
    "margin": ("circumscribed", "not circumscribed"),
    "echo_pattern": ("anechoic", "hyperechoic", "complex cystic and solid", "hypoechoic", "isoechoic",
                     "heterogeneous"),
    "posterior_features": ("no posterior features", "enhancement", "shadowing", "combined pattern"),
    "calcifications": ("no calcifications", "calcifications in a mass"),
}
"""Descriptor -> its values in the order of a model's probability vector."""

MARGIN_SUBTYPES: tuple[str, ...] = ("indistinct", "angular", "microlobulated", "spiculated")
"""The not-circumscribed margin subtypes, each an independent probability."""

READER_DESCRIPTORS: tuple[str, ...] = ("shape", "margin", "echo_pattern", "posterior_features",
                                       "calcifications")
"""Descriptors that datasets label (orientation is measured, not labelled)."""

# Dataset words -> lexicon values, per descriptor. Keys are lower-case and stripped.
_NOT_APPLICABLE = ("", "not applicable", "n/a", "na", "none given")
_VALUE_WORDS: dict[str, dict[str, str]] = {
    "shape": {"oval": "oval", "round": "round", "irregular": "irregular"},
    "echo_pattern": {
        "anechoic": "anechoic", "hyperechoic": "hyperechoic", "hypoechoic": "hypoechoic",
        "isoechoic": "isoechoic", "heterogeneous": "heterogeneous",
        "complex cystic/solid": "complex cystic and solid",
        "complex cystic and solid": "complex cystic and solid",
    },
    "posterior_features": {
        "no": "no posterior features", "no posterior features": "no posterior features",
        "enhancement": "enhancement", "shadowing": "shadowing",
        "combined": "combined pattern", "combined pattern": "combined pattern",
    },
    "calcifications": {
        "no": "no calcifications", "no calcifications": "no calcifications",
        "in a mass": "calcifications in a mass", "calcifications in a mass": "calcifications in a mass",
        # "intraductal" and "indefinable" are not one of the two values reported: unknown, not a negative.
    },
}

MANIFEST_COLUMNS: dict[str, str] = {
    "shape": "shape",
    "margin": "margin",
    "echo_pattern": "echogenicity",
    "posterior_features": "posterior_features",
    "calcifications": "calcifications",
}
"""Lexicon descriptor -> the manifest column that labels it (BrEaST-Lesions_USG's names)."""


@dataclass(frozen=True, slots=True)
class DescriptorLabels:
    """A case's reader labels in lexicon names; ``None`` where the case has no (usable) label.

    values : descriptor -> lexicon value or None, for every name in ``READER_DESCRIPTORS``.
    margin_subtypes : subtype -> present, for every name in ``MARGIN_SUBTYPES``; None when the margin is
        unknown. A circumscribed margin has every subtype False (a known negative).
    halo : echogenic halo present (BrEaST's ``halo`` column; not one of the reported descriptors), or None.
    """

    values: dict[str, str | None] = field(default_factory=dict)
    margin_subtypes: dict[str, bool] | None = None
    halo: bool | None = None

    def value(self, descriptor: str) -> str | None:
        return self.values.get(descriptor)

    def index(self, descriptor: str) -> int | None:
        """Position of the label in ``DESCRIPTORS[descriptor]``, or None where unknown."""
        value = self.values.get(descriptor)
        return None if value is None else DESCRIPTORS[descriptor].index(value)

    @property
    def any_known(self) -> bool:
        return any(v is not None for v in self.values.values())


def lexicon_value(descriptor: str, word: str | None) -> str | None:
    """One dataset word for ``descriptor`` -> its lexicon value, or None when unknown / not applicable.

    >>> lexicon_value("echo_pattern", "complex cystic/solid")
    'complex cystic and solid'
    >>> lexicon_value("posterior_features", "combined")
    'combined pattern'
    """
    if descriptor not in DESCRIPTORS:
        raise KeyError(f"unknown descriptor {descriptor!r}; expected one of {', '.join(DESCRIPTORS)}")
    text = (word or "").strip().lower()
    if text in _NOT_APPLICABLE:
        return None
    if descriptor == "margin":
        return parse_margin(text)[0]
    if descriptor == "orientation":
        return text if text in DESCRIPTORS["orientation"] else None
    return _VALUE_WORDS[descriptor].get(text)


def parse_margin(word: str | None) -> tuple[str | None, dict[str, bool] | None]:
    """BrEaST's margin word -> (margin value, subtypes present).

    ``"circumscribed"`` -> ("circumscribed", all subtypes False);
    ``"not circumscribed - spiculated&angular"`` -> ("not circumscribed", spiculated and angular True);
    ``"not circumscribed"`` alone -> subtypes None (the reader named none); unknown words -> (None, None).
    """
    text = (word or "").strip().lower()
    if text in _NOT_APPLICABLE:
        return None, None
    if text == "circumscribed":
        return "circumscribed", dict.fromkeys(MARGIN_SUBTYPES, False)
    if not text.startswith("not circumscribed"):
        return None, None
    rest = text[len("not circumscribed"):].strip(" -:")
    if not rest:
        return "not circumscribed", None
    named = {part.strip() for part in rest.replace(",", "&").split("&") if part.strip()}
    unknown = named - set(MARGIN_SUBTYPES)
    if unknown:  # a subtype outside the lexicon: the margin is known, its subtypes are not
        return "not circumscribed", None
    return "not circumscribed", {subtype: subtype in named for subtype in MARGIN_SUBTYPES}


def manifest_descriptor_labels(row: Mapping[str, str | None]) -> DescriptorLabels:
    """Lexicon labels of one manifest row (a ``csv.DictReader`` row or ``ManifestRecord.extra``).

    Columns that are absent give None (BUS-BRA and BUSI have none of them).
    """
    values: dict[str, str | None] = {}
    subtypes = None
    for descriptor, column in MANIFEST_COLUMNS.items():
        word = row.get(column)
        if descriptor == "margin":
            values["margin"], subtypes = parse_margin(word)
        else:
            values[descriptor] = lexicon_value(descriptor, word)
    halo_word = (row.get("halo") or "").strip().lower()
    halo = {"yes": True, "no": False}.get(halo_word)
    return DescriptorLabels(values=values, margin_subtypes=subtypes, halo=halo)
