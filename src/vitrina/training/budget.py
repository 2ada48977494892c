"""Training within a time budget (``train.budget_minutes``, ``vitrina train --budget MINUTES``).

Before the first epoch the run is calibrated on this machine: one training step (forward and
backward of the blocks that train, at the planned input size, batch and precision) and one
inference pass are timed. The plan then fits the epochs into what is left of the budget after
what has already been spent (grouping, decoding) and what remains after training (frozen
features, evaluation, the extras), prints its reasons and writes ``RUN/plan.json``. Explicit
``--epochs`` wins, with a warning when it will overrun. While training, :class:`Deadline` ends the
run cleanly after the epoch that leaves no room for another, keeping the best epoch so far.
"""
from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitrina.errors import ConfigError
from vitrina.models.runtime import autocast
from vitrina.models.stages import OnnxPrefix, split_at_trainable
from vitrina.training.augment import BatchAugment, augment_batch
from vitrina.training.callbacks import EpochEnd
from vitrina.training.loop import trainable_body
from vitrina.training.optim import freeze_batchnorm
from vitrina.training.plan import Plan

PLAN_FILE = "plan.json"
# Passes over the evaluation photos after training: the plain pass, the mirror pass and the
# neighbour vote's features are each offered once (vitrina.training.extras).
AFTER_TRAINING_PASSES = 3


@dataclass
class BudgetPlan:
    """What a run will do within its budget, and why (``RUN/plan.json``)."""

    backbone: str
    input_size: int
    unfreeze_blocks: int | None
    epochs: int
    batch_size: int
    precision: str
    budget_s: float
    estimated_s: float
    measured_s: float | None = None
    seconds_per_epoch: float = 0.0
    reserve_s: float = 0.0  # after training: evaluation, the extras, the features they need
    measured_reserve_s: float | None = None  # the same, scaled by the validation passes as timed in training
    reasons: list[str] = field(default_factory=list)
    # vitrina predict with the exported int8 model on this machine, measured before training
    expected_images_per_s: float | None = None

    def write(self, run_dir: Path) -> None:
        (run_dir / PLAN_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, run_dir: Path) -> BudgetPlan | None:
        path = run_dir / PLAN_FILE
        return cls(**json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def check_budget(minutes: Any) -> float:
    """The budget in seconds; a clear error for zero, negative or non-numbers."""
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) or minutes <= 0:
        raise ConfigError(f"the time budget must be a positive number of minutes, got {minutes!r}")
    return float(minutes) * 60.0


@dataclass
class Calibration:
    step_s_per_image: float  # a training step, per image (its batch's augmentation included where it is not in a worker)
    forward_s_per_image: float  # an inference pass, per image
    augment_s_per_image: float = 0.0  # of the step: augmenting and normalising the batch in the training process


def calibrate_speed(
    model: nn.Module, plan: Plan, unfreeze_blocks: int, device: torch.device, precision: str, *,
    prefix_cache: Path | None = None, steps: int = 2, augment: BatchAugment | None = None,
) -> Calibration:
    """Time training steps and an inference pass of a copy of ``model`` on random images.

    ``prefix_cache``: fine-tuning runs the frozen stages in ONNX Runtime as training will
    (:func:`vitrina.training.loop.frozen_prefix`; the graph is cached there for training to reuse).
    ``augment``: the augmentation that training runs between its steps (not in a worker process),
    timed on a batch of random photos and counted in the step.
    """
    net = copy.deepcopy(model).to(device)
    size, channels = plan.preprocess.input_size, plan.preprocess.channels
    batch = max(2, min(plan.batch_size, 32))
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    if plan.mode == "finetune":
        trainable_body(net, unfreeze_blocks)
    net.train()
    if plan.mode == "finetune":
        freeze_batchnorm(net)
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    parts = split_at_trainable(net, unfreeze_blocks) if prefix_cache is not None and plan.mode == "finetune" else None
    if parts is not None:
        prefix, tail = OnnxPrefix(parts[0], channels, size, prefix_cache), parts[1]
        forward = lambda images: tail(prefix(images).to(memory_format=torch.channels_last))
    timings = []
    for _ in range(steps + 1):  # the first step warms up
        started = _clock(device)
        with autocast(device, precision):
            logits = forward(x)
        F.cross_entropy(logits.float(), y).backward()
        timings.append(_clock(device) - started)
    net.eval()
    with torch.inference_mode():
        forward(x)
        started = _clock(device)
        forward(x)
        inference = _clock(device) - started
    augmenting = _time_augment(augment, plan, batch) if augment is not None else 0.0
    return Calibration(float(np.median(timings[1:])) / batch + augmenting, inference / batch, augmenting)


def _time_augment(augment: BatchAugment, plan: Plan, batch: int) -> float:
    """Seconds per image to augment and normalise a batch of decoded photos (the second of two tries)."""
    size, channels = plan.preprocess.input_size, plan.preprocess.channels
    photos = torch.randint(0, 256, (batch, size, size, channels), dtype=torch.uint8)
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        plan.preprocess.normalize_torch(augment_batch(augment, photos))
        seconds = time.perf_counter() - started
    return seconds / batch


def _clock(device: torch.device) -> float:
    """Now, after the device finished its queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plan_epochs(
    plan: Plan, calibration: Calibration, *, budget_s: float, spent_s: float, n_train: int, n_val: int, n_eval: int,
    explicit_epochs: bool, precision: str, log: Callable[[str], None],
    warm_start: bool = True, bank_images: int | None = None, explicit_model: bool = False, explicit_blocks: bool = False,
) -> BudgetPlan:
    """The epochs that fit the budget (at most the recommended ones) and the plan's reasons.

    Counted besides the epochs: frozen features before them (bottleneck, with its augmented
    copies; fine-tuning's warm start), and after them the evaluation passes and the features of
    up to ``bank_images`` training photos for the neighbour vote and the unknown score (the
    network changed, so scratch and fine-tuning compute them anew).
    """
    forward = calibration.forward_s_per_image
    features_s = 0.0
    if plan.mode == "bottleneck":
        features_s = (n_train * (1 + plan.feature_copies) + n_val) * forward
    elif plan.mode == "finetune" and warm_start:
        features_s = (n_train + n_val) * forward
    bank = min(n_train, bank_images if bank_images is not None else n_train)
    after_s = n_eval * forward * AFTER_TRAINING_PASSES + (bank * forward if plan.mode != "bottleneck" else 0.0)
    if plan.mode == "bottleneck":
        per_epoch = 0.0  # the head on cached features: seconds for all its epochs together
    else:
        per_epoch = n_train * calibration.step_s_per_image + n_val * forward
    fixed = spent_s + features_s + after_s
    reasons = [
        f"already spent {spent_s:.0f} s (grouping near copies, decoding, timing the exported model)",
        (f"calibrated here: a training step {1000 * calibration.step_s_per_image:.1f} ms"
         + (f" (augmenting its photos {1000 * calibration.augment_s_per_image:.2g} ms of it)" if calibration.augment_s_per_image else "")
         + f" and an inference pass {1000 * forward:.1f} ms per image ({precision} training)"),
        f"frozen features about {features_s:.0f} s, evaluation and extras about {after_s:.0f} s",
    ]
    epochs = plan.epochs
    if per_epoch > 0:
        fit = int((budget_s - fixed) // per_epoch)
        reasons.append(f"an epoch about {per_epoch:.0f} s: {max(fit, 0)} fit in the budget of {budget_s / 60:g} min")
        if explicit_epochs:
            if fit < plan.epochs:
                log(f"warning: --epochs {plan.epochs} will overrun the {budget_s / 60:g}-minute budget "
                    f"(about {(fixed + plan.epochs * per_epoch) / 60:.0f} min); training stops at the budget")
            reasons.append(f"{plan.epochs} epochs as asked")
        elif fit < 1:
            needed = (fixed + per_epoch) / 60
            raise ConfigError(f"a budget of {budget_s / 60:g} minutes is too small for this data: the smallest plan "
                              f"(one epoch) needs about {math.ceil(needed * 1.1)} minutes; give --budget {math.ceil(needed * 1.1)} or more")
        elif fit < plan.epochs:
            epochs = fit
            reasons.append(f"{fit} epochs instead of the recommended {plan.epochs}, to stay within the budget")
        else:
            reasons.append(f"the recommended {plan.epochs} epochs fit")
    elif fixed > budget_s:
        needed = fixed / 60
        raise ConfigError(f"a budget of {budget_s / 60:g} minutes is too small for this data: it needs about "
                          f"{math.ceil(needed * 1.1)} minutes; give --budget {math.ceil(needed * 1.1)} or more")
    if plan.mode == "finetune":
        reasons.append(f"the last {plan.unfreeze_blocks} blocks train: {'as asked' if explicit_blocks else 'the measured default'}")
    heavier = " (efficientnet_lite2 measured no better for its cost; --model picks another)"
    why = "as asked" if explicit_model else "the measured default for this data" + (heavier if plan.pretrained else "")
    reasons.append(f"{plan.model} at {plan.preprocess.input_size} px: {why}")
    return BudgetPlan(plan.model, plan.preprocess.input_size, plan.unfreeze_blocks if plan.mode == "finetune" else None, epochs,
                      plan.batch_size, precision, budget_s, round(fixed + epochs * per_epoch, 1),
                      seconds_per_epoch=round(per_epoch, 2), reserve_s=round(after_s, 1), reasons=reasons)


# Fewest validation photos whose pass times the network well enough to re-estimate the reserve
# (below a batch, the pass's fixed costs would weigh as photos).
FEWEST_TIMED_PHOTOS = 64


def validation_pass_seconds(row: dict[str, Any]) -> float | None:
    """An epoch's validation pass in seconds, where it was timed (``val_seconds``; a history read
    back from JSON holds None for an epoch without one)."""
    value = row.get("val_seconds")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else None


def validation_seconds_per_photo(history: list[dict[str, Any]], n_val: int) -> float | None:
    """The median over ``history``'s epochs of their validation pass's seconds per photo; None
    where no pass was timed."""
    passes = [seconds for row in history if (seconds := validation_pass_seconds(row)) is not None]
    return float(np.median(passes)) / n_val if passes and n_val > 0 else None


class Deadline:
    """Ends training after an epoch when another one would not finish before ``deadline``
    (a ``time.perf_counter()`` value) less ``reserve_s`` for what follows training.

    With ``most_epochs`` it also re-plans from the epochs measured so far, which a calibration
    taken while the machine was busy (or idle) cannot foresee: it grows the epochs up to
    ``most_epochs`` (the recommended ones) when more fit than were planned, and shrinks them when
    fewer do, so the learning rate still decays to its end within the budget. It judges by the
    epochs' mean and the last one's time, growing by the slower and shrinking by the faster of
    the two, and hands each new count with the seconds its remaining epochs need and the reserve
    to ``record``.

    With ``forward_s`` (the calibrated inference seconds per photo the reserve was estimated
    from) and ``val_photos`` (at least :data:`FEWEST_TIMED_PHOTOS`), the reserve follows the
    validation passes as timed: it is scaled by their median seconds per photo over
    ``forward_s`` (re-planning grows by the slower and shrinks by the faster of the median and
    the last pass, as with the epochs), so a calibration taken on a busy (or idle) machine does
    not hold back (or overrun) the rest of the run. A change of more than a tenth is printed and
    handed to ``record`` too.
    """

    def __init__(self, deadline: float, reserve_s: float, log: Callable[[str], None] = print, *,
                 most_epochs: int | None = None, record: Callable[[int, float, float], None] | None = None,
                 forward_s: float | None = None, val_photos: int = 0):
        self.deadline, self.reserve_s, self.log = deadline, reserve_s, log
        self.most_epochs, self.record = most_epochs, record
        self._planned_reserve_s, self._reported_reserve_s = reserve_s, reserve_s
        self._forward_s = forward_s if val_photos >= FEWEST_TIMED_PHOTOS else None
        self._val_photos = val_photos
        self._last = time.perf_counter()
        self._seconds: list[float] = []  # each epoch's, with what the callbacks took after the one before
        self._per_photo: list[float] = []  # each timed validation pass's seconds per photo
        self.stopped = False

    def stop_replanning(self) -> None:
        """Keep the epochs as they are from now on (a refit repeats the first network's)."""
        self.most_epochs = None

    def seconds_left(self) -> float:
        """Seconds left for training before the deadline, ``reserve_s`` kept for what follows."""
        return self.deadline - self.reserve_s - time.perf_counter()

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        now = time.perf_counter()
        epoch_s = float(row.get("seconds", now - self._last))
        self._seconds.append(epoch_s if not self._seconds else max(epoch_s, now - self._last))
        self._last = now
        reserve_moved = self._remeasure_reserve(row)
        if now + epoch_s + self.reserve_s > self.deadline:
            self.stopped = True
            state.stop(f"the time budget: another epoch (about {epoch_s:.0f} s) would not finish in time")
            self.log(f"  stopping after epoch {state.epoch} at the time budget; the best epoch so far is kept")
            return
        replanned = False
        if self.most_epochs is not None and state.planned_epochs is not None and state.stop_reason is None:
            replanned = self._replan(state, self._seconds[-1])
        if reserve_moved and not replanned and self.record is not None and state.planned_epochs is not None:
            self.record(state.planned_epochs, (state.planned_epochs - state.epoch) * float(np.mean(self._seconds)), self.reserve_s)

    def _remeasure_reserve(self, row: dict[str, float]) -> bool:
        """Scale the reserve by the validation passes' median speed over the calibrated one;
        whether it moved by more than a tenth since it was last said."""
        seconds = validation_pass_seconds(row)
        if self._forward_s is None or seconds is None:
            return False
        self._per_photo.append(seconds / self._val_photos)
        median = float(np.median(self._per_photo))
        self.reserve_s = self._reserve_at(median)
        if abs(self.reserve_s - self._reported_reserve_s) <= 0.1 * self._reported_reserve_s:
            return False
        self._reported_reserve_s = self.reserve_s
        self.log(f"  the work after training should take about {self.reserve_s:.0f} s: validation passes take "
                 f"{1000 * median:.1f} ms a photo here where the calibration gave {1000 * self._forward_s:.1f}")
        return True

    def _reserve_at(self, per_photo_s: float) -> float:
        return self._planned_reserve_s * per_photo_s / (self._forward_s or per_photo_s)

    def _reserves(self) -> tuple[float, float]:
        """(the larger, the smaller) reserve by the median pass and the last one."""
        if not self._per_photo:
            return self.reserve_s, self.reserve_s
        median, last = float(np.median(self._per_photo)), self._per_photo[-1]
        return self._reserve_at(max(median, last)), self._reserve_at(min(median, last))

    def _replan(self, state: EpochEnd, last_s: float) -> bool:
        planned, most, mean_s = state.planned_epochs or 0, self.most_epochs or 0, float(np.mean(self._seconds))
        larger, smaller = self._reserves()
        now = time.perf_counter()
        surely = state.epoch + int(max(0.0, self.deadline - larger - now) // max(mean_s, last_s, 1e-9))  # by the slower
        perhaps = state.epoch + int(max(0.0, self.deadline - smaller - now) // max(min(mean_s, last_s), 1e-9))  # by the faster
        if planned < min(surely, most):
            epochs = min(surely, most)
        elif planned > perhaps:
            epochs = max(state.epoch + 1, perhaps)
        else:
            return False
        self.log(f"  re-planned after epoch {state.epoch}: epochs take about {mean_s:.0f} s here (the last {last_s:.0f} s) "
                 f"and the work after training about {self.reserve_s:.0f} s, so {epochs} epochs in all fit the budget "
                 f"where {planned} were planned")
        state.replan(epochs)
        if self.record is not None:
            self.record(epochs, (epochs - state.epoch) * mean_s, self.reserve_s)
        return True
