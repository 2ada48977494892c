"""Frozen backbone features of every readable image, computed as training does (the same caches),
and the ImageNet concepts of backbones that keep their ImageNet classifier."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vitrina.config import Config
from vitrina.data.cache import decode_samples
from vitrina.data.samples import Dataset, Sample
from vitrina.errors import ConfigError, DataError
from vitrina.models.efficientnet_lite import imagenet_classifier
from vitrina.models.registry import create_model, get_spec
from vitrina.models.runtime import resolve_device, resolve_precision
from vitrina.quality.settings import Log, model_and_size
from vitrina.training.plan import make_plan
from vitrina.training.features import BackboneFeatures

DUPLICATE_SIDE = 128  # letterboxed datasets: the side of the whole, squashed photos duplicates are compared on


@dataclass
class Item:
    """One readable image of the dataset."""

    path: str
    split: str
    label: str
    sample: Sample


@dataclass
class DatasetFeatures:
    """What the backbones make of a dataset: its readable images and everything computed from them."""

    items: list[Item]  # every readable image, split by split
    hashes: list[str]  # their content hashes
    images: np.ndarray  # their decoded images (whole photos where the dataset is letterboxed)
    features: np.ndarray  # N x D float32: each backbone's L2-normalised features, concatenated, scaled to unit length
    unreadable: list[dict]  # the files that do not decode, with the reason
    concepts: list[np.ndarray]  # per backbone with its ImageNet classifier: N x 1000 concept probabilities


def dataset_features(
    dataset: Dataset, config: Config, models: list[str], use_concepts: bool, cache_dir: Path, workers: int,
    progress: bool, log: Log,
) -> DatasetFeatures:
    """Features of every backbone in ``models`` (``NAME`` or ``NAME@SIZE``), and their ImageNet concepts
    when ``use_concepts`` (and the backbones keep their own ImageNet weights)."""
    blocks, where, hashes, images, skipped = [], None, None, None, []
    concept_parts: list[np.ndarray] = []
    for name in models:
        w, h, imgs, feats, skipped_here = backbone_features(
            dataset, config, name, cache_dir, workers, progress, log, keep_images=where is None
        )
        if where is None:
            where, hashes, images, skipped = w, h, imgs, skipped_here
        elif w != where:  # pragma: no cover - the same files decode (or fail) whatever the size
            raise DataError("backbones disagree on which images are readable; clean with one backbone")
        blocks.append(normalise(feats))
        if use_concepts and not config.model.weights and len(feats):
            probs = imagenet_concepts(model_and_size(name)[0], feats)
            if probs is not None:
                concept_parts.append(probs)
    assert where is not None and hashes is not None and images is not None
    features = np.concatenate(blocks, axis=1) / np.sqrt(len(blocks)) if where else np.zeros((0, 1), np.float32)
    items = [Item(dataset.splits[split][pos].path, split, dataset.splits[split][pos].label, dataset.splits[split][pos]) for split, pos in where]
    return DatasetFeatures(items, hashes, images, features.astype(np.float32), skipped, concept_parts)


def backbone_features(
    dataset: Dataset, config: Config, model_name: str, cache_dir: Path, workers: int, progress: bool, log: Log,
    keep_images: bool = True,
) -> tuple[list[tuple[str, int]], list[str], np.ndarray, np.ndarray, list[dict]]:
    """Decode every split for one backbone and compute its features as training does (same cache).

    Returns (split, position) of every readable sample, their content hashes, their decoded
    images (for the perceptual hash; empty unless ``keep_images``), the features, and the
    unreadable files.
    """
    cfg = copy.deepcopy(config)
    model_name, size = model_and_size(model_name)
    cfg.model.name = model_name
    cfg.train.mode = "bottleneck"
    if size is not None:
        cfg.model.input_size = size
    elif cfg.model.input_size is None:
        # The backbone's own input size (bottleneck training upscales, by 9/7), which is also what
        # fine-tuning's warm start caches.
        cfg.model.input_size = get_spec(model_name).preprocess.input_size
    plan = make_plan(dataset, cfg)
    if not plan.pretrained:
        raise ConfigError(f"clean needs a pretrained backbone; {model_name} has no pretrained weights here")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)
    model = create_model(
        plan.model, max(1, len(dataset.classes)), pretrained=True, weights=cfg.model.weights,
        channels=plan.preprocess.channels, input_size=plan.preprocess.input_size,
    ).to(device)
    model.eval()
    # The same identity train() gives the backbone, so training and cleaning share cached features.
    model_id = f"{plan.model}|{cfg.model.weights or 'pretrained'}"
    backbone = BackboneFeatures(model, model_id, plan, cache_dir, device, precision, cfg.train.feature_runtime, log)
    where, hashes, images, feats, skipped = [], [], [], [], []
    for split, samples in dataset.splits.items():
        decoded = decode_samples(
            samples, plan.preprocess, cache_dir, max_pixels=cfg.data.max_pixels, workers=workers,
            progress=progress, desc=f"decoding {split}",
        )
        skipped += [{**item, "split": split, "label": _label_of(samples, item["path"])} for item in decoded.skipped]
        if len(decoded.index) == 0:
            continue
        feats.append(backbone(decoded))
        where += [(split, int(i)) for i in decoded.index]
        hashes += list(decoded.hashes)
        if not keep_images:
            continue
        if plan.preprocess.resize == "letterbox":
            # Duplicates are compared on whole photos without the letterbox's padding: two photos of
            # one shape share their padded bands, which would make them look alike.
            whole = decode_samples(
                [samples[int(i)] for i in decoded.index], plan.preprocess.with_overrides(resize="squash", input_size=DUPLICATE_SIDE),
                cache_dir, max_pixels=cfg.data.max_pixels, workers=workers, progress=False,
            )
            if len(whole.index) != len(decoded.index):  # pragma: no cover - the same files decode at any size
                raise DataError(f"{split}: some images decode at one size and not at another")
            images.append(whole.images)
        else:
            images.append(decoded.images)
    if not where:
        return [], [], np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1), np.float32), skipped
    return where, hashes, _concat_images(images), np.concatenate(feats).astype(np.float32), skipped


def _label_of(samples: list[Sample], path: str) -> str:
    return next((s.label for s in samples if s.path == path), "")


def _concat_images(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate([np.asarray(p) for p in parts])


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length (all-zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def imagenet_concepts(model_name: str, features: np.ndarray) -> np.ndarray | None:
    """N x 1000 ImageNet class probabilities from the backbone's own classifier (None without one)."""
    head = imagenet_classifier(model_name)
    if head is None:
        return None
    logits = features.astype(np.float32) @ head[0].T + head[1]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)
