"""The checks every export passes: real reference images, parity with PyTorch, int8 accuracy and speed.

Every export is checked against PyTorch on real images of the run's validation split (or of a
dataset given for the purpose); int8 quantisation is calibrated on training images and its
accuracy change on the validation split is measured.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrina import config as config_lib
from vitrina.data.cache import decode_samples
from vitrina.data.samples import Sample
from vitrina.data.sources import load_dataset
from vitrina.data.splits import recorded_val, restore_carve
from vitrina.description import ModelDescription
from vitrina.errors import DataError, ModelError
from vitrina.inference.predictor import OnnxBackend, TorchBackend
from vitrina.preprocess import Preprocess

PARITY_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-3  # the unknown score is 1 - a cosine similarity; its threshold has 6 decimals
PARITY_IMAGES = 64
CALIBRATION_IMAGES = 128
MAX_EVALUATION_IMAGES = 2000


class NoReferenceImages(ModelError):
    """Neither the run's data nor a given dataset has images for the export checks."""


@dataclass
class ReferenceImages:
    """Decoded real images for the export checks (uint8 N x H x W x C at the input size)."""

    validation: np.ndarray
    validation_labels: np.ndarray | None  # None when the run's data can no longer be loaded
    calibration: np.ndarray
    source: str


def _evenly(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over ``items`` (deterministic)."""
    if len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _decode(samples: list, preprocess: Preprocess, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of the readable samples and the positions they came from."""
    decoded = decode_samples(samples, preprocess, None, max_pixels=max_pixels, workers=1, progress=False)
    return np.asarray(decoded.images), decoded.index


def reference_images(run_dir: Path, meta: ModelDescription, calibration: str | Path | None = None, *, int8: bool = False) -> ReferenceImages:
    """Validation images (with labels where known) and calibration images for the export checks.

    ``calibration``: a dataset (any form vitrina reads) to use instead of the run's own data;
    its validation split (carved from train when absent) is checked, its training split calibrates.
    Without ``int8`` only the few images of the parity check are decoded.
    """
    limit = MAX_EVALUATION_IMAGES if int8 else PARITY_IMAGES
    preprocess = meta.preprocess
    config_path = run_dir / "config.yaml"
    cfg = config_lib.resolve(config_path if config_path.is_file() else None)
    splits_path = run_dir / "splits.json"
    listed = json.loads(splits_path.read_text(encoding="utf-8")) if splits_path.is_file() else {}
    source = str(calibration) if calibration is not None else listed.get("source")
    try:
        if source is None:
            raise DataError("the run folder does not say which data it was trained on")
        recorded = recorded_val(run_dir) if calibration is None else None
        dataset = load_dataset(source, cfg.data, carve_val=recorded is None)
        if recorded is not None and "val" not in dataset.splits:
            # The run's own carve: validation checked, the rest of train calibrates.
            dataset = replace(dataset, splits=restore_carve(dataset.splits, recorded))
    except DataError:
        if calibration is not None:
            raise
        # The data moved: the file paths listed in splits.json still give real images, unlabelled.
        paths = [p for p in listed.get("splits", {}).get("val", []) if Path(p).is_file()]
        if not paths:
            raise NoReferenceImages(
                f"{run_dir}: the images it was trained on are no longer readable; "
                "pass a dataset for the export checks (--calibration DATA)"
            ) from None
        images, _ = _decode(_evenly([Sample(p, "") for p in paths], limit), preprocess, cfg.data.max_pixels)
        return ReferenceImages(images, None, images[:CALIBRATION_IMAGES], f"{source} (unlabelled)")

    index = {name: i for i, name in enumerate(meta.classes)}
    validation = [s for s in dataset.split("val") if s.label in index]
    if calibration is None and listed.get("splits", {}).get("val"):
        # The run's own validation files (a group carve depends on the photos, not only the seed).
        wanted = set(listed["splits"]["val"])
        pool = dataset.splits.get("val", []) + dataset.splits.get("train", [])
        validation = [s for s in pool if s.path in wanted and s.label in index] or validation
    validation = _evenly(validation, limit)
    images, kept = _decode(validation, preprocess, cfg.data.max_pixels)
    if len(images) == 0:
        raise NoReferenceImages(f"{source}: no readable validation images for the export checks")
    labels = np.asarray([index[validation[i].label] for i in kept], dtype=np.int64)
    calibration_images = images
    if int8:
        calibration_images, _ = _decode(_evenly(dataset.split("train"), CALIBRATION_IMAGES), preprocess, cfg.data.max_pixels)
    return ReferenceImages(images, labels, calibration_images if len(calibration_images) else images, source)


def parity_check(model: Any, run: OnnxBackend, images: np.ndarray, preprocess: Preprocess,
                 scorer: Any = None) -> dict[str, Any]:
    """Largest probability (and unknown-score) difference and top-1 agreement of ``run`` against PyTorch fp32."""
    reference = TorchBackend(model.float().eval(), scorer)
    diffs, score_diffs, agree = [], [], []
    for start in range(0, len(images), 32):
        batch = preprocess.normalize(images[start : start + 32])
        (expected, expected_scores), (got, got_scores) = reference.scored(batch), run.scored(batch)
        diffs.append(float(np.abs(expected - got).max()))
        agree.append(expected.argmax(1) == got.argmax(1))
        if scorer is not None:
            if got_scores is None:
                raise ModelError("the exported graph lacks the unknown-photo score output")
            score_diffs.append(float(np.abs(expected_scores - got_scores).max()))
    top1 = np.concatenate(agree)
    report = {
        "n_images": int(len(top1)),
        "max_abs_diff": max(diffs),
        "top1_identical": bool(top1.all()),
        "top1_agreement": float(top1.mean()),
        "tolerance": PARITY_TOLERANCE,
    }
    if score_diffs:
        report.update(score_max_abs_diff=max(score_diffs), score_tolerance=SCORE_TOLERANCE)
    return report


def images_per_second(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, min_seconds: float = 1.0) -> float:
    """Model-only throughput on one normalised batch, after a warm-up run."""
    run(batch)
    done, started = 0, time.perf_counter()
    while True:
        run(batch)
        done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and done >= 3 * len(batch):
            return done / elapsed


def top1_predictions(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    return np.concatenate([run(preprocess.normalize(images[i : i + 64])).argmax(1) for i in range(0, len(images), 64)])


