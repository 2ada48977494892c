"""Refit: the network trained again on the training and validation photos together, once
validation has chosen everything, with those choices carried over (``train.refit``).

Validation chooses the number of epochs, the softmax temperature, the confidence threshold,
the neighbour vote's settings and the mirror-image average. The refit network starts from the
same weights and learns from every photo the user gave, for the same epochs with the same
recipe, and keeps its last epoch (nothing is left to choose by); with ``train.refit_tail`` the
network validation chose learns on instead, for that last share of its epochs (small
grayscale images from scratch get this by default). It takes the temperature, the
thresholds, the vote's settings and the mirror average as they were chosen; what lives in
feature space is fitted again on its own features (the unknown score's bank, the vote's bank,
both of every photo).

The unknown score's threshold cannot be chosen again: the refit network has learned the
validation photos. It is carried over scaled by how far apart the photos of each network's own
bank lie (the kNN score that the accepted share, 95%, of a bank's photos stay within, each
photo left out of its own neighbours), so that about the same share of new photos stays accepted. Scores on the logits alone
(``msp``, ``energy``) are carried over as they were, since the temperature is; ``knn_energy``
and ``mahalanobis`` cannot be carried over, and a refit refuses them.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sized

import numpy as np
import torch
from torch import nn

from vitrina.config import TrainConfig
from vitrina.data.cache import DecodedImages
from vitrina.description import Refit, UnknownDetector
from vitrina.errors import ConfigError
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.network import VitrinaNet
from vitrina.models.unknown import UnknownScore, build_score
from vitrina.training.budget import validation_pass_seconds, validation_seconds_per_photo
from vitrina.training.calibration import apply_temperature
from vitrina.training.plan import REFIT_CARRIED_SCORES, Plan

Log = Callable[[str], None]
COPY_ROWS = 256  # photos copied at a time into the joined split


def check_refit(refit: bool, unknown_score: str, mode: str, processes: int) -> None:
    """Refuse a refit the run cannot carry out or carry over, and its tail without it (before any training)."""
    if not refit:
        raise ConfigError("train.refit_tail says how the refit trains: use it with --set train.refit=true")
    if mode == "bottleneck":
        raise ConfigError("train.refit trains the network again: use it with --mode finetune or scratch")
    if unknown_score not in REFIT_CARRIED_SCORES:
        raise ConfigError(f"train.refit carries the unknown score's threshold over only for {', '.join(REFIT_CARRIED_SCORES)} "
                          f"(train.unknown_score is {unknown_score!r})")
    if processes > 1:
        raise ConfigError(f"train.refit runs in one process ({processes} were started): train with one, or without the refit")


def held_out_photos(splits: Mapping[str, Sized]) -> int:
    """Photos in the splits beyond training and validation: those a refit is reported on."""
    return sum(len(photos) for name, photos in splits.items() if name not in ("train", "val"))


def check_refit_reportable(name: str, train: TrainConfig, held_out: int) -> None:
    """Refuse ranking ``name`` with a refit where no split beyond validation can report it."""
    if train.refit and not held_out:
        raise ConfigError(f"{name}: train.refit learns from the validation photos too, and the data has no split "
                          "beyond them to rank it on: give the data a test split (or --holdout), or compare it without the refit")


def recommended_refit_obstacle(unknown_score: str, processes: int, held_out_photos: int) -> str | None:
    """Why a recommended refit (one the config did not ask for) is not made in this run, or None."""
    if processes > 1:
        return f"it runs in one process ({processes} were started)"
    if unknown_score not in REFIT_CARRIED_SCORES:
        return f"it cannot carry the {unknown_score} score's threshold over"
    if not held_out_photos:
        return "the data holds no split beyond validation to report it on"
    return None


def settled_refit(plan: Plan, train: TrainConfig, held_out_photos: int, processes: int, log: Log) -> Plan:
    """``plan`` with the refit this run makes: one asked for is checked (refused where it cannot be
    made), a recommended one dropped, saying why, where the run cannot make or report it."""
    if train.refit or train.refit_tail:
        check_refit(plan.refit is not None, train.unknown_score, plan.mode, processes)
        return plan
    why = recommended_refit_obstacle(train.unknown_score, processes, held_out_photos) if plan.refit is not None else None
    if why is None:
        return plan
    log(f"no refit on the validation photos too (recommended for this data): {why}")
    return replace(plan, refit=None)


def describe_refit(tail: float) -> str:
    """The refit a plan makes, in words, from its tail (0: a whole new network)."""
    return f"the chosen network learning on for the last {tail:.0%} of its epochs" if tail > 0 else "a new network for all its epochs"


def continue_from(refitted: nn.Module, chosen: nn.Module, temperature: float) -> None:
    """Give ``refitted`` the weights of the network validation ``chosen``, its temperature taken
    back out of the head (the vote's bank is fitted again afterwards)."""
    own = refitted.state_dict()
    refitted.load_state_dict({k: v for k, v in chosen.state_dict().items() if k in own})
    apply_temperature(refitted, 1.0 / temperature)


def refit_seconds(history: list[dict[str, float]], n_train: int, n_val: int, after_photos: int) -> float:
    """The refit's expected time: its epochs (the first network's measured epochs less their
    validation passes, which a refit does not run, scaled to the photos it learns from) and
    ``after_photos`` more photos through the network beyond the evaluation reserve (at the first
    network's measured validation speed)."""
    trained = sum(float(row.get("seconds", 0.0)) - (validation_pass_seconds(row) or 0.0) for row in history)
    epochs = trained * (n_train + n_val) / max(1, n_train)
    return epochs + (validation_seconds_per_photo(history, n_val) or 0.0) * after_photos


@contextlib.contextmanager
def joined_photos(train: DecodedImages, val: DecodedImages, folder: Path) -> Iterator[DecodedImages]:
    """The training and validation photos as one split, memory-mapped in a file under ``folder``
    (removed on leaving), so no second copy of them is held in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"refit-{os.getpid()}.npy"
    n_train, n_val = len(train.images), len(val.images)
    try:
        images = np.lib.format.open_memmap(path, mode="w+", dtype=train.images.dtype, shape=(n_train + n_val, *train.images.shape[1:]))
        for offset, part in ((0, train.images), (n_train, val.images)):
            for start in range(0, len(part), COPY_ROWS):
                chunk = np.asarray(part[start : start + COPY_ROWS])
                images[offset + start : offset + start + len(chunk)] = chunk
        images.flush()
        yield DecodedImages(images, np.arange(n_train + n_val), [*train.hashes, *val.hashes], [])
    finally:
        path.unlink(missing_ok=True)


@dataclass
class CarriedOver:
    """The refit network's unknown scorer, the description fields it changes (``unknown``,
    ``neighbours``, ``refit``)."""

    scorer: UnknownScore
    fields: dict[str, Any]


def carry_over(
    model: VitrinaNet, bank: np.ndarray, bank_labels: np.ndarray, bank_validation: int, refit: Refit,
    scorer: UnknownScore, unknown: UnknownDetector, vote: NeighbourVote | None, log: Log,
) -> CarriedOver:
    """Fit the unknown score's bank and the vote's on the refit ``model``'s features ``bank``
    (labelled ``bank_labels``; the last ``bank_validation`` rows validation photos), with the
    settings chosen on validation for the first network (its ``scorer``, ``unknown`` and
    ``vote``); ``refit`` says what the refit learned from."""
    num_classes = model.num_classes
    new_scorer = build_score(unknown.score, bank, bank_labels, num_classes, scorer.k)
    if unknown.score == "knn":
        share = unknown.accept_rate
        before = float(np.quantile(scorer.bank_scores(), share))
        after = float(np.quantile(new_scorer.bank_scores(), share))
        scale = after / before if before > 0 and after > 0 else 1.0
        threshold = math.ceil(unknown.threshold * scale * 1e6) / 1e6 if math.isfinite(unknown.threshold) else unknown.threshold
        log(f"  unknown photos: threshold {unknown.threshold:.4f} -> {threshold:.4f} ({share:.0%} of each bank's photos lie "
            f"within {before:.4f} and {after:.4f} of another: x {scale:.3f})" if before > 0 and after > 0 else
            f"  unknown photos: threshold {unknown.threshold:.4f} carried over unscaled (a bank's photos lie on copies of each other)")
        unknown = replace(unknown, threshold=threshold, bank_size=int(len(new_scorer.bank)))
        refit = replace(refit, unknown_scale=round(scale, 6))
    fields: dict[str, Any] = {"unknown": unknown, "refit": refit}
    if vote is not None:
        model.vote = NeighbourVote(torch.from_numpy(np.asarray(bank, dtype=np.float32)), torch.from_numpy(bank_labels),
                                   num_classes, vote.k, vote.temperature, vote.weight).to(vote.bank.device)
        fields["neighbours"] = model.vote.describe(validation_photos=bank_validation)
        log(f"  neighbour vote: k {vote.k}, temperature {vote.temperature:g}, weight {vote.weight:g} as chosen, "
            f"on the refit network's features of {len(bank_labels)} photos")
    return CarriedOver(new_scorer, fields)

