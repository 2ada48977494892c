"""The training engine: scratch, bottleneck (frozen features) and fine-tuning, as one sequence of steps.

:func:`train` takes a loaded :class:`~vitrina.data.samples.Dataset` and a resolved config and
writes one run folder: config, split lists, history (CSV/JSON), TensorBoard events, checkpoints
(``model.safetensors`` = best, ``last.safetensors`` = last, ``train_state.pt`` for ``--resume``).
Its steps: decode the splits, build the model, fit (the head on cached features and/or the
network's epoch loop), calibrate, fit the post-fit extras, save.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vitrina import config as config_lib
from vitrina.config import Config
from vitrina.data.cache import DecodedImages, decode_samples, default_cache_dir
from vitrina.data.samples import Dataset
from vitrina.description import ModelDescription, Refit
from vitrina.errors import VitrinaError
from vitrina.inference.expected_speed import PHOTOS_TIMED, PredictionSpeed, measure_prediction_speed
from vitrina.models.checkpoint import save_model
from vitrina.models.registry import create_model
from vitrina.models.runtime import predict_logits, resolve_device, resolve_precision, resolve_training_precision
from vitrina.models.unknown import MAX_BANK, bank_rows, penultimate_features, save_unknown
from vitrina.training.calibration import ACCEPT_RATE, apply_temperature, calibrate, confidence_threshold
from vitrina.training.callbacks import (
    Callback, Checkpoint, EarlyStopping, EpochHook, EpochHookCallback, StopAfter, TensorBoardLogger,
)
from vitrina.training.budget import BudgetPlan, Deadline, calibrate_speed, check_budget, plan_epochs
from vitrina.training.distributed import (
    barrier, is_main_process, local_device_name, processes_on_this_machine, world_position,
)
from vitrina.training.extras import Extras, add_validation_to_vote, fit_extras
from vitrina.training.features import BackboneFeatures
from vitrina.training.head import fit_head_on_features
from vitrina.training.augment import BatchAugment, build_augment
from vitrina.training.loop import NetworkTraining, augments_in_worker, runs_frozen_prefix, train_network
from vitrina.training.optim import chosen_epoch
from vitrina.training.plan import Plan, check_trainable, make_plan, with_recommended_settings
from vitrina.training.refit import (
    CarriedOver, carry_over, continue_from, describe_refit, held_out_photos, joined_photos, refit_seconds, settled_refit,
)
from vitrina.training.run_folder import (
    load_last_weights, load_resume_state, model_meta, open_tensorboard, read_history, run_config_digest, saved_settings,
    write_history, write_skipped, write_splits,
)

Log = Callable[[str], None]


@dataclass
class TrainResult:
    run_dir: Path
    model: nn.Module
    description: ModelDescription
    history: list[dict[str, float]]
    decoded: dict[str, DecodedImages]
    labels: dict[str, np.ndarray]
    train_seconds: float
    skipped: list[dict] = field(default_factory=list)
    # Calibrated logits of the evaluation splits where training already has them (bottleneck:
    # the head applied to cached features, the same function as the saved model).
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    before_refit: nn.Module | None = None  # with ``train.refit``: the network validation chose, before the refit


@dataclass
class _Run:
    """One training run's settings, resolved once: what every step reads."""

    dataset: Dataset
    config: Config
    plan: Plan
    run_dir: Path
    device: torch.device
    precision: str  # of inference: validation, frozen features and stages
    train_precision: str  # of the optimisation steps
    cache_dir: Path
    progress: bool
    log: Log
    main: bool = field(default_factory=is_main_process)  # rank 0 (or the only process) writes the run folder

    @property
    def num_classes(self) -> int:
        return len(self.dataset.classes)

    @property
    def model_id(self) -> str:
        """The backbone's identity in the feature cache: the network and its weights."""
        weights = self.config.model.weights or ("pretrained" if self.plan.pretrained else "random")
        return f"{self.plan.model}|{weights}"

    def backbone_features(self, model: nn.Module) -> BackboneFeatures:
        return BackboneFeatures(model, self.model_id, self.plan, self.cache_dir, self.device, self.precision,
                                self.config.train.feature_runtime, self.log)


def _resolve_run(dataset: Dataset, config: Config, run_dir: Path, progress: bool, log: Log) -> _Run:
    plan = make_plan(dataset, config)
    device = resolve_device(local_device_name(config.train.device))
    precision = resolve_precision(config.train.precision, device)
    # Fine-tuning the last blocks runs the frozen rest in ONNX Runtime (vitrina.training.loop.frozen_prefix).
    frozen_prefix = plan.mode == "finetune" and plan.unfreeze_blocks >= 0 and config.train.feature_runtime != "torch"
    train_precision = resolve_training_precision(config.train.precision, device, frozen_prefix=frozen_prefix)
    return _Run(dataset, config, plan, run_dir, device, precision, train_precision, default_cache_dir(config.train.cache_dir), progress, log)


def _summary(run: _Run) -> str:
    plan = run.plan
    return (
        f"training {plan.model} ({plan.mode}) on {run.num_classes} classes: "
        f"{plan.epochs} epochs, batch {plan.batch_size}, lr {plan.lr:g}, {run.device.type}, training in {run.train_precision}, "
        f"input {plan.preprocess.channels}x{plan.preprocess.input_size} {plan.preprocess.resize}"
        + ("" if plan.refit is None else f"; then a refit on the validation photos too ({describe_refit(plan.refit)}, where the budget leaves room)")
    )


def _label_array(dataset: Dataset, decoded: DecodedImages, split: str) -> np.ndarray:
    index = dataset.class_to_index
    samples = dataset.splits[split]
    return np.asarray([index[samples[i].label] for i in decoded.index], dtype=np.int64)


def _decode_splits(run: _Run) -> tuple[dict[str, DecodedImages], dict[str, np.ndarray], list[dict]]:
    """Every split's images decoded (from the cache where present), their labels, and the files skipped."""
    dataset, config = run.dataset, run.config
    workers = config.train.workers if config.train.workers >= 0 else min(4, os.cpu_count() or 1)
    decoded: dict[str, DecodedImages] = {}
    labels: dict[str, np.ndarray] = {}
    skipped: list[dict] = []
    for split in dataset.splits:
        decoded[split] = decode_samples(
            dataset.splits[split], run.plan.preprocess, run.cache_dir, max_pixels=config.data.max_pixels,
            workers=workers, progress=run.progress and run.main, desc=f"decoding {split}",
        )
        labels[split] = _label_array(dataset, decoded[split], split)
        for item in decoded[split].skipped:
            skipped.append({**item, "split": split})
            run.log(f"  skipped {item['path']}: {item['reason']}")
    if len(labels["train"]) == 0 or len(labels["val"]) == 0:
        raise VitrinaError("no readable images left in the train or validation split")
    return decoded, labels, skipped


def _build_model(run: _Run) -> nn.Module:
    plan, config = run.plan, run.config
    torch.manual_seed(config.train.seed)  # the head's (or scratch net's) initial weights
    model = create_model(
        plan.model, run.num_classes, pretrained=plan.pretrained, weights=config.model.weights,
        channels=plan.preprocess.channels, input_size=plan.preprocess.input_size,
        head=plan.head, hidden=config.model.hidden, dropout=config.model.dropout,
    )
    model.to(run.device).to(memory_format=torch.channels_last)
    return model


def _tensorboard(writer: Any, prefix: str) -> list[Callback]:
    return [TensorBoardLogger(writer, prefix)] if writer is not None else []


def _augment_between_steps(run: _Run) -> BatchAugment | None:
    """The augmentation the network's training runs in its own process, between steps (None where
    there is none, or where a worker process runs it while the model computes)."""
    transform = build_augment(run.config.augment, channels=run.plan.preprocess.channels)
    if run.plan.mode == "bottleneck" or augments_in_worker(transform, run.config.train.workers, run.device, processes_on_this_machine()):
        return None
    return transform


def _plan_budget(run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], resume_state: dict | None, started: float) -> Deadline | None:
    """Fit the epochs to ``train.budget_minutes`` (see :mod:`vitrina.training.budget`); the deadline to keep."""
    t = run.config.train
    if t.budget_minutes is None or world_position()[1] > 1:  # several processes would have to agree on one plan
        return None
    budget_s = check_budget(t.budget_minutes)
    if resume_state is not None:  # a resumed run keeps its plan and what is left of its budget
        previous = BudgetPlan.read(run.run_dir)
        if previous is None:
            return None
        run.plan = _with_budget_plan(run.plan, previous)
        spent = sum(float(row.get("seconds", 0.0)) for row in resume_state.get("history", []))
        reserve_s = previous.measured_reserve_s if previous.measured_reserve_s is not None else previous.reserve_s
        return Deadline(time.perf_counter() + max(0.0, previous.budget_s - spent), reserve_s, run.log)
    on_prefix = runs_frozen_prefix(run.config, run.plan.mode, run.device)
    prediction = _expected_prediction_speed(run, model, decoded["train"])
    speed = calibrate_speed(model, run.plan, run.plan.unfreeze_blocks, run.device, run.train_precision,
                            prefix_cache=run.cache_dir if on_prefix else None, augment=_augment_between_steps(run))
    n_eval = sum(len(d.index) for split, d in decoded.items() if split != "train")
    budget = plan_epochs(
        run.plan, speed, budget_s=budget_s, spent_s=time.perf_counter() - started, n_train=len(decoded["train"].index),
        n_val=len(decoded["val"].index), n_eval=n_eval, explicit_epochs=t.epochs is not None, precision=run.train_precision,
        log=run.log, warm_start=t.warm_start_head, bank_images=MAX_BANK,
        explicit_model=run.config.model.name is not None or run.config.model.input_size is not None,
        explicit_blocks=t.unfreeze_blocks is not None)
    if prediction is not None:
        budget.reasons.append(prediction.describe())
        budget.expected_images_per_s = round(prediction.images_per_second, 1)
    recommended = run.plan.epochs
    run.plan = _with_budget_plan(run.plan, budget)
    blocks = f", the last {budget.unfreeze_blocks} blocks" if budget.unfreeze_blocks is not None else ""
    run.log(f"plan for {budget_s / 60:g} minutes: {budget.epochs} epochs{blocks}, about {budget.estimated_s / 60:.1f} min in all")
    for reason in budget.reasons:
        run.log(f"  - {reason}")
    if run.main:
        budget.write(run.run_dir)
    most = None if t.epochs is not None or run.plan.mode == "bottleneck" else recommended
    timed = speed.forward_s_per_image if run.plan.mode != "bottleneck" else None  # the head's epochs pass no photo through the network
    return Deadline(started + budget_s, budget.reserve_s, run.log, most_epochs=most, record=_replanned(run, budget, started),
                    forward_s=timed, val_photos=len(decoded["val"].index))


def _replanned(run: _Run, budget: BudgetPlan, started: float) -> Callable[[int, float, float], None]:
    """What the deadline calls when training re-plans its epochs or re-measures its reserve:
    ``plan.json`` follows at once (a resumed run reads it); the run's plan takes the loop's when
    training ends."""
    def record(epochs: int, remaining_s: float, reserve_s: float) -> None:
        if epochs != budget.epochs:
            budget.reasons.append(f"re-planned while training: {epochs} epochs in all, from the epochs measured "
                                  f"(where {budget.epochs} were planned)")
        budget.epochs, budget.measured_reserve_s = epochs, round(reserve_s, 1)
        budget.estimated_s = round(time.perf_counter() - started + remaining_s + reserve_s, 1)
        if run.main:
            budget.write(run.run_dir)
    return record


def _with_budget_plan(plan: Plan, budget: BudgetPlan) -> Plan:
    """``plan`` with the epochs and (fine-tuning) the blocks of the budget's plan."""
    plan = replace(plan, epochs=budget.epochs)
    return replace(plan, unfreeze_blocks=budget.unfreeze_blocks) if budget.unfreeze_blocks is not None else plan


def _expected_prediction_speed(run: _Run, model: nn.Module, train: DecodedImages) -> PredictionSpeed | None:
    """How fast the exported model will predict here (measured); None where it cannot be measured."""
    if not run.config.train.expected_speed:
        return None
    samples = run.dataset.splits["train"]
    try:
        return measure_prediction_speed(model, run.plan.preprocess, train.images, [samples[i] for i in train.index[:PHOTOS_TIMED]],
                                        cache_dir=run.cache_dir)
    except Exception as exc:  # noqa: BLE001 - a figure for the plan: a graph ONNX cannot take must not stop training
        run.log(f"  (the exported model's speed could not be measured: {type(exc).__name__}: {exc})")
        return None


def _fit_head(run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray], callbacks: list[Callback]) -> list[dict[str, float]]:
    """The head on cached frozen features: bottleneck training, or fine-tuning's warm start (its own history file)."""
    history = fit_head_on_features(run.backbone_features(model), decoded, labels, run.config, run.num_classes, callbacks)
    if run.main:
        write_history(run.run_dir, history, "history_head" if run.plan.mode == "finetune" else "history")
    return history


def _fit_network(
    run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray], resume_state: dict | None,
    callbacks: list[Callback],
) -> list[dict[str, float]]:
    """The network's epochs (scratch, fine-tuning); leaves the best epoch's weights in ``model``."""
    if resume_state is not None:
        load_last_weights(run.run_dir, model, resume_state)
    job = NetworkTraining(model, decoded["train"], labels["train"], decoded["val"], labels["val"], run.plan, run.config,
                          run.device, run.precision, run.num_classes, run.progress, run.log, run.train_precision)
    history, best_state = train_network(job, callbacks, resume_state)
    run.plan = job.plan  # with the epochs as training re-planned them
    if best_state is not None:
        model.load_state_dict(best_state)
    if run.main:
        write_history(run.run_dir, history)
    return history


def _fit(
    run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray],
    resume_state: dict | None, on_epoch: EpochHook | None, writer: Any, deadline: Deadline | None = None,
) -> list[dict[str, float]]:
    """The head on cached features (bottleneck, or fine-tuning's warm start), then the network's
    epochs (scratch, fine-tuning); returns the history of the epochs that chose the model."""
    plan, t = run.plan, run.config.train
    hook: list[Callback] = [EpochHookCallback(on_epoch)] if on_epoch is not None else []
    history: list[dict[str, float]] = []
    if plan.mode == "bottleneck" and run.config.model.drop_path > 0:
        run.log("  model.drop_path ignored: frozen-feature training has no blocks that train")
    if plan.mode == "bottleneck" or (plan.mode == "finetune" and t.warm_start_head and resume_state is None):
        # The caller's hook sees the epochs that choose the model: the head's in bottleneck mode only.
        history = _fit_head(run, model, decoded, labels, [*(hook if plan.mode == "bottleneck" else []), *_tensorboard(writer, "head/")])
    if run.main:
        barrier()
    if plan.mode in ("finetune", "scratch"):
        # In this order: the checkpoint saves the early-stopping counters, and the hook (which may
        # raise) comes last, after the epoch is logged and saved.
        checkpoint = ([Checkpoint(run.run_dir, model_meta(plan, run.dataset, run.config), run_config_digest(run.run_dir, run.config))]
                      if run.main else [])
        callbacks = [*_tensorboard(writer, ""), EarlyStopping(t.patience), *([deadline] if deadline else []), *checkpoint, *hook]
        history = _fit_network(run, model, decoded, labels, resume_state, callbacks)
    return history


def _validation_logits(run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], body: BackboneFeatures | None) -> np.ndarray:
    """The trained model's validation logits: from the cached features (frozen backbone) or through the network."""
    if body is not None:
        with torch.inference_mode():
            return model.head_logits(torch.from_numpy(body(decoded["val"])).to(run.device)).float().cpu().numpy()
    return predict_logits(model, decoded["val"].images, run.plan.preprocess, run.device, run.precision, run.cache_dir)


def _head_logits(run: _Run, model: nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model.forward_head(torch.from_numpy(features).to(run.device)).float().cpu().numpy()


def _split_logits(run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], body: BackboneFeatures | None,
                  mirrored: bool) -> dict[str, np.ndarray]:
    """Bottleneck without the mirror-image average: every evaluation split's logits from the cached features."""
    if body is None or mirrored:
        return {}
    return {split: _head_logits(run, model, body(decoded[split])) for split in decoded if split != "train"}


@dataclass
class _Refitted:
    model: nn.Module
    carried: CarriedOver
    seconds: float


def _refit(run: _Run, model: nn.Module, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray],
           history: list[dict[str, float]], deadline: Deadline | None, extras: Extras, temperature: float) -> _Refitted | None:
    """``train.refit``: the network trained again on the training and validation photos, for the
    epochs the first one ran on its schedule, with its choices carried over
    (:mod:`vitrina.training.refit`); None where the budget has no room for it or it fails."""
    n_train, n_val = len(labels["train"]), len(labels["val"])
    held_out = held_out_photos(labels)
    epochs, tail = len(history), run.plan.refit or 0.0
    steps = min(epochs, max(1, math.ceil(round(tail * epochs, 9)))) if tail > 0 else epochs  # round: 0.28 x 25 is 7.000000000000001
    estimate = refit_seconds(history[epochs - steps :], n_train, n_val, held_out + min(MAX_BANK, n_train + n_val))
    if deadline is not None and estimate > deadline.seconds_left():
        run.log(f"  refit on the validation photos too: not done, it would take about {estimate:.0f} s of the "
                f"{max(0.0, deadline.seconds_left()):.0f} s the budget has left")
        return None
    started = time.perf_counter()
    how = f"the network validation chose goes on for the last {steps} of its {epochs} epochs" if tail > 0 else f"{epochs} epochs"
    run.log(f"refit: {how} on the {n_train + n_val} training and validation photos (about {estimate:.0f} s)")
    try:
        refitted = _train_refit(run, model if tail > 0 else None, decoded, labels, (epochs - steps, epochs), deadline, temperature)
    except (OSError, RuntimeError, VitrinaError) as exc:
        run.log(f"  refit: failed ({type(exc).__name__}: {exc}); the network validation chose is kept")
        return None
    if refitted is None:
        run.log("  refit: stopped at the time budget; the network validation chose is kept")
        return None
    refitted_model, rows, bank, bank_labels, bank_validation = refitted
    write_history(run.run_dir, [{k: v for k, v in row.items() if not k.startswith("val_")} for row in rows], "history_refit")
    carried = carry_over(refitted_model, bank, bank_labels, bank_validation, Refit(steps, n_train + n_val, n_val, continued=tail > 0),
                         extras.scorer, extras.fields["unknown"], model.vote, run.log)
    return _Refitted(refitted_model, carried, time.perf_counter() - started)


def _warm_start_epochs(run: _Run) -> int:
    """The epochs validation chose for the first network's warm-start head, for the refit's to
    repeat; 0 (its whole schedule) where ``history_head.json`` cannot tell."""
    try:
        epochs = chosen_epoch(read_history(run.run_dir, "history_head"))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        run.log(f"  head: history_head.json unreadable ({type(exc).__name__}: {exc})")
        epochs = 0
    if epochs:
        run.log(f"  head: the {epochs} epochs validation chose for the first network's, keeping the last")
    else:
        run.log("  head: no record of the epochs validation chose for the first network's: its whole schedule, keeping the last")
    return epochs


def _train_refit(run: _Run, chosen: nn.Module | None, decoded: dict[str, DecodedImages], labels: dict[str, np.ndarray],
                 epochs: tuple[int, int], deadline: Deadline | None,
                 temperature: float) -> tuple[nn.Module, list[dict[str, float]], np.ndarray, np.ndarray, int] | None:
    """The refit network trained on the joined photos through ``epochs`` (first, end) of the
    schedule and calibrated, its history, and its features of the bank photos with their labels
    and how many of them are validation photos; None where the budget ended it. It starts as
    the first network did, or from the network validation ``chosen``."""
    n_train = len(labels["train"])
    all_labels = np.concatenate([labels["train"], labels["val"]])
    with joined_photos(decoded["train"], decoded["val"], run.cache_dir) as joined:
        refitted = _build_model(run)
        splits, split_labels = {"train": joined, "val": decoded["val"]}, {"train": all_labels, "val": labels["val"]}
        if chosen is not None:
            continue_from(refitted, chosen, temperature)
        elif run.plan.mode == "finetune" and run.config.train.warm_start_head:
            fit_head_on_features(run.backbone_features(refitted), splits, split_labels, run.config, run.num_classes,
                                 repeat_epochs=_warm_start_epochs(run))
        job = NetworkTraining(refitted, joined, all_labels, decoded["val"], labels["val"], run.plan, run.config, run.device,
                              run.precision, run.num_classes, run.progress, run.log, run.train_precision, select_best=False,
                              first_epoch=epochs[0])
        rows, state = train_network(job, [StopAfter(epochs[1]), *([deadline] if deadline is not None else [])])
        if len(rows) < epochs[1] - epochs[0] or state is None:
            return None
        refitted.load_state_dict(state)
        refitted.eval()
        apply_temperature(refitted, temperature)
        rows_kept = bank_rows(len(all_labels), run.config.train.seed)
        images = joined.images if len(rows_kept) == len(all_labels) else np.asarray(joined.images[rows_kept])
        bank = penultimate_features(refitted, images, run.plan.preprocess, run.device, run.precision, run.cache_dir)
    return refitted, rows, bank, all_labels[rows_kept], int((rows_kept >= n_train).sum())


def _save(run: _Run, model: nn.Module, description: ModelDescription, extras: Extras, skipped: list[dict]) -> None:
    save_unknown(run.run_dir, extras.scorer)
    save_model(run.run_dir, model, description)
    write_skipped(run.run_dir, skipped)


def train(
    dataset: Dataset,
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    on_epoch: EpochHook | None = None,
    started_at: float | None = None,
) -> TrainResult:
    """Train a classifier on ``dataset`` as ``config`` says, writing everything into ``run_dir``.

    ``on_epoch`` receives the history row of every epoch that selects the model (the head's on
    cached features in bottleneck mode, the network's otherwise); an exception it raises stops
    training (hyperparameter search prunes trials so). ``started_at`` (a ``time.perf_counter()``
    value) is when the run began, for the time budget (default: now).
    """
    check_trainable(dataset)
    config = with_recommended_settings(dataset, config)
    run = _resolve_run(dataset, config, run_dir, progress, log)
    plan = run.plan
    run.plan = plan = settled_refit(plan, config.train, held_out_photos(dataset.splits), world_position()[1], log)
    resume_state = load_resume_state(run_dir, config, dataset, log) if resume else None
    started = time.perf_counter()
    if not run.main:
        barrier()  # rank 0 fills the decoded-image and feature caches first; the others then read them
    decoded, labels, skipped = _decode_splits(run)
    model = _build_model(run)
    deadline = _plan_budget(run, model, decoded, resume_state, started_at if started_at is not None else started)
    plan = run.plan
    if run.main:  # after the plan: a budget too small for it leaves no half-written run behind
        if resume_state is None or saved_settings(run_dir) is None:  # a resumed run keeps the settings it started with
            config_lib.save(config, run_dir)
        write_splits(run_dir, dataset)
    log(_summary(run))
    writer = open_tensorboard(run_dir) if run.main else None
    try:
        history = _fit(run, model, decoded, labels, resume_state, on_epoch, writer, deadline)
    finally:
        if writer is not None:
            writer.close()
    plan = run.plan  # the epochs as training re-planned them
    if deadline is not None:
        deadline.stop_replanning()
    train_seconds = time.perf_counter() - started

    model.eval()
    body = run.backbone_features(model) if plan.mode == "bottleneck" else None
    temperature, val_logits = calibrate(model, _validation_logits(run, model, decoded, body), labels["val"], log)
    fields: dict[str, Any] = {"train_seconds": round(train_seconds, 2), "precision": run.train_precision, "temperature": round(temperature, 4)}
    extras = None
    if run.main:
        extras = fit_extras(model, plan, config, decoded, labels, val_logits, body=body, device=run.device,
                            precision=run.precision, cache_dir=run.cache_dir, log=log)
        fields.update(extras.fields)
        val_logits = extras.val_logits
    mirrored = "mirror" in fields
    if extras is not None and model.vote is not None and not mirrored:
        val_logits = _head_logits(run, model, extras.val_features)  # what the model now answers: head and vote
    fields["thresholds"] = confidence_threshold(val_logits, ACCEPT_RATE)
    grown: dict[str, Any] = {}
    if extras is not None and config.train.vote_includes_validation:
        grown = add_validation_to_vote(model, extras.val_features, labels["val"], config.train.seed, log)
        fields.update(grown)
    split_logits = _split_logits(run, model, decoded, body, mirrored)
    if grown:
        split_logits["val"] = val_logits  # the validation figures from before its photos joined the vote
    before = None
    refitted = _refit(run, model, decoded, labels, history, deadline, extras, temperature) if plan.refit is not None and extras else None
    if refitted is not None and extras is not None:
        before, model, extras = model, refitted.model, replace(extras, scorer=refitted.carried.scorer)
        train_seconds += refitted.seconds
        fields.update(refitted.carried.fields, train_seconds=round(train_seconds, 2))
        split_logits["val"] = val_logits  # the validation figures of the network validation chose
    learned_from = ("train", "val") if before is not None else ("train",)  # a refit learned the validation photos too
    description = model_meta(plan, dataset, config, learned_from, **fields)
    if extras is not None:
        _save(run, model, description, extras, skipped)
    return TrainResult(run_dir, model, description, history, decoded, labels, train_seconds, skipped, split_logits, before)
