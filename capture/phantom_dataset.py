"""Phantom datasets on disk: a manifest dataset for training and evaluation, and a contact sheet.

``write_dataset`` writes ``count`` samples of ``capture.phantom.PhantomScanner`` in the manifest format
(``docs/data.md``); ``contact_sheet`` draws one sample per category with its outline and descriptors.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from capture.phantom import CATEGORIES, DEFAULT_SIZE, DESCRIPTOR_CHOICES, PhantomError, PhantomScanner

MANIFEST_COLUMNS = ("id", "image", "mask", "birads", *DESCRIPTOR_CHOICES, "size_mm", "pixel_size_mm")


def write_dataset(
    out_dir: str | Path,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = DEFAULT_SIZE,
    *,
    progress: bool = False,
) -> Path:
    """Write ``count`` phantom samples as a manifest dataset; returns the folder.

    Layout: ``images/phantom_NNNNN.png`` (8-bit gray), ``masks/phantom_NNNNN.png`` (0/255) and
    ``manifest.csv`` with ``id,image,mask,birads``, the descriptor columns, ``size_mm`` and
    ``pixel_size_mm``. Categories cycle 3, 4A, 4B, 4C, 5 so every prefix is balanced. The output is
    byte-identical for the same arguments (PNG without timestamps, fixed number formatting).
    """
    if count < 1:
        raise PhantomError(f"count must be at least 1; got {count}")
    root = Path(out_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    scanner = PhantomScanner(seed, size)
    rows = []
    indices: Iterator[int] = iter(range(count))
    if progress:
        from tqdm import tqdm

        indices = iter(tqdm(range(count), desc="phantom images", unit="img"))
    for i in indices:
        sample = scanner.sample_at(i, CATEGORIES[i % len(CATEGORIES)])
        name = f"phantom_{i:05d}"
        image_rel, mask_rel = f"images/{name}.png", f"masks/{name}.png"
        _write_png(root / image_rel, sample.image)
        _write_png(root / mask_rel, sample.mask.astype(np.uint8) * 255)
        rows.append(
            {
                "id": name,
                "image": image_rel,
                "mask": mask_rel,
                "birads": sample.category,
                **sample.descriptors,
                "size_mm": f"{sample.size_mm:.2f}",
                "pixel_size_mm": f"{sample.pixel_size_mm:.6f}",
            }
        )
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return root


def _write_png(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image, [cv2.IMWRITE_PNG_COMPRESSION, 6]):
        raise OSError(f"could not write {path}")


def contact_sheet(seed: int = 0, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """One sample per category side by side (top row), the same with the mask outline (bottom row).

    Returns a BGR uint8 image with each tile labelled by category and descriptors.
    """
    scanner = PhantomScanner(seed, size)
    width, _height = scanner.size
    label_h = 58
    tiles = []
    for i, category in enumerate(CATEGORIES):
        sample = scanner.sample_at(i, category)
        plain = cv2.cvtColor(sample.image, cv2.COLOR_GRAY2BGR)
        outlined = plain.copy()
        contours, _ = cv2.findContours(sample.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (0, 220, 255), 1, cv2.LINE_AA)
        label = np.full((label_h, width, 3), 24, np.uint8)
        d = sample.descriptors
        lines = [
            f"BI-RADS {category}  {d['shape']}, {d['orientation']}",
            f"{d['margin']}, {d['echo_pattern']}",
            f"posterior {d['posterior_features']}, calc {d['calcifications']}",
        ]
        for row, text in enumerate(lines):
            cv2.putText(
                label,
                text,
                (6, 17 + 18 * row),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (235, 235, 235),
                1,
                cv2.LINE_AA,
            )
        tiles.append(np.vstack([label, plain, outlined]))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    sheet = tiles[0]
    for tile in tiles[1:]:
        sheet = np.hstack([sheet, gap, tile])
    footer = np.full((26, sheet.shape[1], 3), 24, np.uint8)
    cv2.putText(
        footer,
        "Synthetic phantom (no patient data). Bottom row: ground-truth mask outline. "
        "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
        (6, 18),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (235, 235, 235),
        1,
        cv2.LINE_AA,
    )
    return np.vstack([sheet, footer])
