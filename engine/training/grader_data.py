"""The G-CNN's training data: the lesions of a split (plus phantom ones, plus the pipeline's masks where
asked), the network input of each (augmented for training), and predictions on a list of lesions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from engine.augment import GraderAugment, jitter_box, perturb_mask, translate_frame
from engine.birads import CATEGORIES as GRADER_CATEGORIES
from engine.data.datasets import (
    GraderSample,
    load_grader_samples,
    load_records,
    phantom_grader_samples,
)
from engine.preprocess import grader_input, mask_bbox
from engine.splits import make_split
from engine.training.common import TrainConfig, TrainingError, write_json

FINE_CATEGORIES = (1, 2, 3)  # 4A, 4B, 4C: a dataset with any of these one-hot labels is "five-way"


def sample_input(sample: GraderSample, config: TrainConfig, rng: np.random.Generator | None) -> np.ndarray:
    """The G-CNN input for one sample: with ``rng``, randomly translated and horizontally flipped."""
    image, mask = sample.image, sample.mask
    if config.train_masks == "pipeline" and sample.pipeline_mask is not None:
        mask = sample.pipeline_mask
    if config.view == "frame":
        if rng is not None:
            if config.mask_channel:
                mask = perturb_mask(mask, rng)
            if rng.random() < GraderAugment().flip:
                image, mask = image[:, ::-1], mask[:, ::-1]
            image, mask = translate_frame(np.ascontiguousarray(image), np.ascontiguousarray(mask), rng)
        return grader_input(image, mask, size=config.input_size, mask_channel=config.mask_channel,
                            view="frame")
    box = mask_bbox(mask)
    assert box is not None
    if rng is not None:
        if config.mask_channel:
            mask = perturb_mask(mask, rng)
        if rng.random() < GraderAugment().flip:
            image, mask = image[:, ::-1], mask[:, ::-1]
            box = (image.shape[1] - box[0] - box[2], box[1], box[2], box[3])
        box = jitter_box(box, rng)
    return grader_input(np.ascontiguousarray(image), np.ascontiguousarray(mask), size=config.input_size,
                        margin=config.margin, mask_channel=config.mask_channel, box=box)


def fine_datasets(samples: list[GraderSample]) -> set[str]:
    """Names of datasets whose labels include a one-hot 4A, 4B or 4C."""
    names = set()
    for s in samples:
        if s.allowed.sum() == 1 and int(np.argmax(s.allowed)) in FINE_CATEGORIES:
            names.add(s.id.split("/")[0])
    return names


@torch.no_grad()
def predict(net: torch.nn.Module, samples: list[GraderSample], config: TrainConfig) -> np.ndarray:
    """Softmax probabilities (N, 5) for samples, no augmentation (on the network's device)."""
    net.eval()
    device = next(net.parameters()).device
    out = []
    for start in range(0, len(samples), 64):
        x = np.stack([sample_input(s, config, None) for s in samples[start:start + 64]])
        x = torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
        out.append(torch.softmax(net(x), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(GRADER_CATEGORIES)), np.float32)


def with_offset(probs: np.ndarray, rows: list[bool], offset: torch.Tensor) -> np.ndarray:
    """``probs`` with the logit ``offset`` added where ``rows`` is true: softmax(z + b) is
    softmax(z) * exp(b), renormalized."""
    out = probs.astype(np.float64, copy=True)
    selected = np.asarray(rows, bool)
    out[selected] *= np.exp(offset.detach().cpu().numpy().astype(np.float64))
    out[selected] /= out[selected].sum(axis=1, keepdims=True)
    return out.astype(probs.dtype)


def with_pipeline_masks(train: list[GraderSample], val: list[GraderSample],
                        config: TrainConfig) -> tuple[list[GraderSample], list[GraderSample], dict]:
    """``train`` and ``val`` with the pipeline's masks of ``config.roi_model`` attached, and the counts."""
    from dataclasses import asdict

    from engine.training.pipeline_masks import attach_pipeline_masks

    if config.roi_model is None:
        raise TrainingError("--train-masks pipeline needs --roi-model: the ROI-CNN ONNX model whose masks "
                            "the grader will get in use (e.g. models/roi_cnn.onnx)")
    both, stats = attach_pipeline_masks(train + val, config.roi_model, cache_dir=config.cache_dir,
                                        threads=config.threads, progress=config.progress)
    print(stats.describe(), file=sys.stderr)
    return both[:len(train)], both[len(train):], {"roi_model": config.roi_model, **asdict(stats)}


def prepare_grader_data(config: TrainConfig,
                        out: Path) -> tuple[list[GraderSample], list[GraderSample], dict]:
    """Train and validation lesions from the data folders (split by patient) plus phantom samples."""
    train: list[GraderSample] = []
    val: list[GraderSample] = []
    info: dict = {}
    if config.data:
        records = load_records(config.data)
        split = make_split(records, config.split_config())
        info = {"summary": split.summary(), "test_fold": config.test_fold, "cv_folds": config.cv_folds,
                "val_ids": [f"{r.dataset}/{r.id}" for r in split.val],
                "test_ids": [f"{r.dataset}/{r.id}" for r in split.test]}
        train = load_grader_samples(split.train, cache_dir=config.cache_dir, progress=config.progress)
        val = load_grader_samples(split.val, cache_dir=config.cache_dir, progress=config.progress)
    if config.phantom:
        phantom = phantom_grader_samples(config.phantom, seed=config.seed)
        cut = max(1, len(phantom) // 5) if not val else 0
        val += phantom[:cut]
        train += phantom[cut:]
    if not train:
        raise TrainingError("nothing to train the grader on: give --data DIR with lesion masks and BI-RADS "
                            "categories 2-5, or --phantom N")
    if config.train_masks == "pipeline":
        train, val, info["pipeline_masks"] = with_pipeline_masks(train, val, config)
    write_json(out / "split.json", info)
    return train, val, info
