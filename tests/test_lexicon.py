"""The lexicon mapping of dataset descriptor words (engine.lexicon)."""

from __future__ import annotations

import csv

import pytest

from engine.lexicon import (
    DESCRIPTORS,
    MARGIN_SUBTYPES,
    lexicon_value,
    manifest_descriptor_labels,
    parse_margin,
)


def test_breast_words_map_to_lexicon_values():
    assert lexicon_value("echo_pattern", "complex cystic/solid") == "complex cystic and solid"
    assert lexicon_value("posterior_features", "no") == "no posterior features"
    assert lexicon_value("posterior_features", "combined") == "combined pattern"
    assert lexicon_value("calcifications", "in a mass") == "calcifications in a mass"
    assert lexicon_value("shape", " Oval ") == "oval"
    # Outside the two reported values, or not applicable: unknown, never a negative.
    for word in ("intraductal", "indefinable", "not applicable", "", None):
        assert lexicon_value("calcifications", word) is None
    with pytest.raises(KeyError):
        lexicon_value("colour", "red")


def test_margin_subtypes_are_independent_and_circumscribed_is_a_known_negative():
    value, subtypes = parse_margin("not circumscribed - spiculated&angular&indistinct")
    assert value == "not circumscribed"
    assert subtypes == {"indistinct": True, "angular": True, "microlobulated": False, "spiculated": True}
    assert parse_margin("circumscribed") == ("circumscribed", dict.fromkeys(MARGIN_SUBTYPES, False))
    assert parse_margin("not circumscribed") == ("not circumscribed", None)
    assert parse_margin("not applicable") == (None, None)
    assert parse_margin("not circumscribed - wavy") == ("not circumscribed", None)


def test_row_without_columns_is_all_unknown():
    labels = manifest_descriptor_labels({"id": "x", "birads": "4"})
    assert not labels.any_known and labels.margin_subtypes is None and labels.halo is None
    assert labels.index("shape") is None


def test_every_breast_manifest_value_is_mapped_or_deliberately_unknown(shared_data):
    path = shared_data / "breast_lesions_usg" / "manifest.csv"
    if not path.exists():
        pytest.skip("BrEaST-Lesions_USG not present")
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
    deliberate = {"not applicable", "indefinable", "intraductal"}
    for row in rows:
        labels = manifest_descriptor_labels(row)
        for descriptor, value in labels.values.items():
            if value is None:
                column = {"echo_pattern": "echogenicity"}.get(descriptor, descriptor)
                assert row[column].strip().lower() in deliberate, (row["id"], descriptor, row[column])
            else:
                assert value in DESCRIPTORS[descriptor]
        if labels.values["margin"] is not None:
            assert labels.margin_subtypes is not None  # every BrEaST margin names its subtypes
    known = sum(manifest_descriptor_labels(r).values["shape"] is not None for r in rows)
    assert known == sum(r["shape"] != "not applicable" for r in rows) > 100
