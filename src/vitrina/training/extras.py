"""What is fitted after training on top of the calibrated model: the feature bank, the
unknown-photo detector, the neighbour vote and the mirror-image average."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vitrina.config import Config
from vitrina.data.cache import DecodedImages
from vitrina.models.neighbours import fit_vote
from vitrina.models.runtime import mirror_images
from vitrina.models.unknown import MAX_BANK, UnknownScore, default_k, fit_unknown, penultimate_features
from vitrina.training.calibration import ACCEPT_RATE
from vitrina.training.features import BackboneFeatures
from vitrina.training.plan import Plan

Log = Callable[[str], None]


@dataclass
class Extras:
    """The post-fit extras: the unknown-photo scorer, the description fields they add (``unknown``,
    ``neighbours``, ``flip_average``), the validation photos' features, and the validation logits of
    the model as it now answers (after the mirror-image average, where used)."""

    scorer: UnknownScore
    val_features: np.ndarray
    val_logits: np.ndarray
    fields: dict[str, Any] = field(default_factory=dict)


def bank_features(
    model: nn.Module, plan: Plan, decoded: dict[str, DecodedImages], body: BackboneFeatures | None,
    device: torch.device, precision: str, cache_dir: Path, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, features) of the training photos kept for the unknown score and the neighbour vote
    (at most MAX_BANK, a seeded subset beyond), and the validation photos' features.

    Frozen backbone: the cached features; trained: the network's penultimate features.
    """
    n = len(decoded["train"].images)
    rows = np.arange(n) if n <= MAX_BANK else np.sort(np.random.default_rng(seed).choice(n, MAX_BANK, replace=False))
    if body is not None:
        return rows, body(decoded["train"])[rows], body(decoded["val"])
    train_images = decoded["train"].images if len(rows) == n else np.asarray(decoded["train"].images[rows])
    return (rows, penultimate_features(model, train_images, plan.preprocess, device, precision, cache_dir),
            penultimate_features(model, decoded["val"].images, plan.preprocess, device, precision, cache_dir))


def fit_neighbour_vote(
    model: nn.Module, bank: np.ndarray, bank_labels: np.ndarray, val_features: np.ndarray, val_logits: np.ndarray,
    val_labels: np.ndarray, device: torch.device, log: Log,
) -> dict[str, Any]:
    """Set ``model.vote`` where a neighbour vote beats the head alone on the validation split; returns its description field."""
    choice = fit_vote(bank, bank_labels, val_features, val_logits, val_labels, val_logits.shape[1])
    if choice.vote is None:
        log(f"  neighbour vote: not used (no setting beat the head alone on the validation split, {choice.val_accuracy_head:.4f})")
        return {}
    model.vote = choice.vote.to(device)
    log(f"  neighbour vote: k {choice.vote.k}, temperature {choice.vote.temperature:g}, weight {choice.vote.weight:g}: "
        f"validation accuracy {choice.val_accuracy_head:.4f} -> {choice.val_accuracy:.4f}")
    return {"neighbours": model.vote.describe()}


def choose_flip_average(
    model: nn.Module, plan: Plan, val_images: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
    device: torch.device, precision: str, cache_dir: Path | None, log: Log,
) -> np.ndarray:
    """Set ``model.flip_average`` when averaging each validation photo's probabilities with its
    mirror image's gets at least one more of them right; returns the validation probabilities the
    model now gives (features of the photos as given: ``val_features``).
    """
    mirrored_features = penultimate_features(model, mirror_images(val_images), plan.preprocess, device, precision, cache_dir)
    with torch.inference_mode():
        plain = model.classify(torch.from_numpy(val_features).to(device))[0].float().cpu().numpy()
        flipped = model.classify(torch.from_numpy(mirrored_features).to(device))[0].float().cpu().numpy()
    averaged = (plain + flipped) / 2
    right_plain = int((plain.argmax(1) == val_labels).sum())
    right_averaged = int((averaged.argmax(1) == val_labels).sum())
    model.flip_average = right_averaged > right_plain
    n = max(1, len(val_labels))
    log(f"  mirror-image average: {'used' if model.flip_average else 'not used'} (validation accuracy "
        f"{right_plain / n:.4f} -> {right_averaged / n:.4f})")
    return averaged if model.flip_average else plain


def fit_extras(
    model: nn.Module, plan: Plan, config: Config, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray],
    val_logits: np.ndarray, *, body: BackboneFeatures | None, device: torch.device, precision: str, cache_dir: Path, log: Log,
) -> Extras:
    """Fit the unknown-photo detector, then (as configured) the neighbour vote and the mirror-image
    average, on the calibrated ``model`` and its validation logits ``val_logits``."""
    t = config.train
    started = time.perf_counter()
    bank_rows, bank, val_features = bank_features(model, plan, decoded, body, device, precision, cache_dir, t.seed)
    bank_labels = labels["train"][bank_rows]
    k = t.unknown_k or default_k(t.unknown_score, trained_backbone=plan.mode != "bottleneck")
    num_classes = val_logits.shape[1]
    scorer, unknown = fit_unknown(bank, bank_labels, val_features, val_logits, num_classes, method=t.unknown_score, k=k, seed=t.seed)
    log(f"  unknown photos: {t.unknown_score} score, threshold {unknown.threshold:.4f} accepts "
        f"{ACCEPT_RATE:.0%} of the validation photos ({time.perf_counter() - started:.1f} s)")
    extras = Extras(scorer, val_features, val_logits, {"unknown": unknown})
    if t.neighbour_vote:
        extras.fields.update(fit_neighbour_vote(model, bank, bank_labels, val_features, val_logits, labels["val"], device, log))
    if t.flip_average:
        val_probs = choose_flip_average(model, plan, decoded["val"].images, val_features, labels["val"], device, precision, cache_dir, log)
        if model.flip_average:
            extras.fields["flip_average"] = True
            extras.val_logits = np.log(np.clip(val_probs, 1e-12, None))
    return extras
