"""What is fitted after training on top of the calibrated model: the feature bank, the
unknown-photo detector, the neighbour vote and the mirror-image average."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vitrina.config import Config
from vitrina.data.cache import DecodedImages
from vitrina.description import MirrorAverage, top_margin
from vitrina.models.neighbours import fit_vote
from vitrina.models.unknown import MAX_BANK, UnknownScore, bank_rows, default_k, fit_unknown, penultimate_features
from vitrina.training.calibration import ACCEPT_RATE
from vitrina.training.features import BackboneFeatures
from vitrina.preprocess import mirror_images
from vitrina.training.plan import Plan

Log = Callable[[str], None]


@dataclass
class Extras:
    """The post-fit extras: the unknown-photo scorer, the description fields they add (``unknown``,
    ``neighbours``, ``mirror``), the validation photos' features, and the validation logits of
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
    rows = bank_rows(n, seed)
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


# The rule every extra that multiplies prediction cost must pass: costing c passes of the network
# per photo, it must gain at least 0.5 x (c - 1) points of validation accuracy and at least 3 photos.
POINTS_PER_EXTRA_PASS = 0.5
MIN_GAIN_PHOTOS = 3
UNSURE_SHARES = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)  # the mirror pass for this share of the least sure photos


def pays_for_itself(gain_photos: int, n_photos: int, passes: float) -> bool:
    """Whether an extra costing ``passes`` network passes per photo gains enough validation photos."""
    return gain_photos >= MIN_GAIN_PHOTOS and 100.0 * gain_photos / max(1, n_photos) >= POINTS_PER_EXTRA_PASS * (passes - 1.0)


@dataclass(frozen=True)
class MirrorOption:
    policy: MirrorAverage
    probs: np.ndarray
    gain_photos: int

    def net_points(self, n_photos: int) -> float:
        return 100.0 * self.gain_photos / max(1, n_photos) - POINTS_PER_EXTRA_PASS * ((self.policy.passes or 1.0) - 1.0)


def unsure_cuts(plain: np.ndarray) -> list[float]:
    """The margins below which the UNSURE_SHARES of the least sure rows of ``plain`` lie, then
    infinity (every row): the second-pass settings training tries."""
    n = len(plain)
    margins = np.sort(top_margin(plain))
    cuts = sorted({float(margins[min(n - 1, int(np.ceil(share * n)))]) for share in UNSURE_SHARES}) if n else []
    return [*cuts, math.inf]


def mirror_options(plain: np.ndarray, flipped: np.ndarray, labels: np.ndarray) -> list[MirrorOption]:
    """The mirror average for every photo, and for the least sure shares of them (margin thresholds)."""
    n = len(labels)
    right_plain = int((plain.argmax(1) == labels).sum())
    options = []
    for margin in unsure_cuts(plain):
        probs, mirrored = MirrorAverage(margin).apply(plain, lambda rows: flipped[rows])
        gain = int((probs.argmax(1) == labels).sum()) - right_plain
        options.append(MirrorOption(MirrorAverage(margin, passes=1.0 + mirrored / max(1, n), gain_points=100.0 * gain / max(1, n)), probs, gain))
    full = options[-1].policy.gain_points
    return [MirrorOption(replace(o.policy, full_gain_points=full), o.probs, o.gain_photos) for o in options]


def choose_mirror_average(
    model: nn.Module, plan: Plan, val_images: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
    device: torch.device, precision: str, cache_dir: Path | None, log: Log,
) -> tuple[MirrorAverage | None, np.ndarray]:
    """The mirror average that pays for itself best on the validation photos (or none), and the
    validation probabilities the model then gives (features of the photos as given: ``val_features``)."""
    mirrored_features = penultimate_features(model, mirror_images(val_images), plan.preprocess, device, precision, cache_dir)
    with torch.inference_mode():
        plain = model.classify(torch.from_numpy(val_features).to(device))[0].float().cpu().numpy()
        flipped = model.classify(torch.from_numpy(mirrored_features).to(device))[0].float().cpu().numpy()
    n = len(val_labels)
    options = mirror_options(plain, flipped, val_labels)
    kept = [o for o in options if pays_for_itself(o.gain_photos, n, o.policy.passes or 1.0)]
    best = max(kept, key=lambda o: (o.net_points(n), -(o.policy.passes or 1.0)), default=None)
    log(f"  mirror-image average (kept only if it gains >= {POINTS_PER_EXTRA_PASS:g} x (passes - 1) points and >= "
        f"{MIN_GAIN_PHOTOS} validation photos): " + "; ".join(
            f"{'every photo' if not math.isfinite(o.policy.margin) else f'margin < {o.policy.margin:.3f}'} "
            f"{o.policy.passes:.2f} passes {o.gain_photos:+d} photos" for o in options))
    if best is None:
        log(f"  mirror-image average: not used (validation accuracy {(plain.argmax(1) == val_labels).mean():.4f})")
        return None, plain
    log(f"  mirror-image average: {best.policy.passes:.2f} passes per photo, validation accuracy "
        f"{(plain.argmax(1) == val_labels).mean():.4f} -> {(best.probs.argmax(1) == val_labels).mean():.4f} "
        f"({best.policy.gain_points:+.2f} points; every photo mirrored: {best.policy.full_gain_points:+.2f})")
    return best.policy, best.probs


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
        mirror, val_probs = choose_mirror_average(model, plan, decoded["val"].images, val_features, labels["val"], device, precision, cache_dir, log)
        if mirror is not None:
            extras.fields["mirror"] = mirror
            extras.val_logits = np.log(np.clip(val_probs, 1e-12, None))
    return extras


def add_validation_to_vote(model: nn.Module, val_features: np.ndarray, val_labels: np.ndarray, seed: int, log: Log) -> dict[str, Any]:
    """Put the validation photos into the neighbour vote's bank, once every choice made on them
    is made (the vote's k, temperature and weight, the mirror average, the thresholds), so the
    vote learns from every photo the user gave; returns the vote's new description field.

    They are appended after the training photos, centred and normalised as those were, so the
    chosen vote is the grown one without its last rows (``NeighbourVote.without_last``). The bank
    keeps at most MAX_BANK photos (a seeded subset of the validation photos beyond). Measured in
    docs/benchmarks.md#neighbour-vote.
    """
    vote = model.vote
    if vote is None or len(val_labels) == 0:
        return {}
    before = len(vote.bank)
    model.vote, added = vote.with_added(val_features, val_labels, MAX_BANK, seed)
    log(f"  neighbour vote: {added} validation photos join its bank ({before} -> {before + added} photos)")
    return {"neighbours": model.vote.describe(validation_photos=added)} if added else {}
