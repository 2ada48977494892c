"""The network's epoch loop (scratch training and fine-tuning): batches, optimisation steps,
validation and the choice of the best epoch; all else after an epoch is left to callbacks."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vitrina.config import Config
from vitrina.data.cache import DecodedImages, default_cache_dir
from vitrina.inference.predictor import default_threads
from vitrina.models.network import set_drop_path
from vitrina.models.runtime import autocast, forward_uint8
from vitrina.models.stages import OnnxPrefix, split_at_trainable
from vitrina.training.augment import augment_batch, build_augment
from vitrina.training.callbacks import Callback, EpochEnd, callback_states, restore_callbacks, run_callbacks
from vitrina.training.distributed import processes_on_this_machine, world_position
from vitrina.training.ema import WeightAverage
from vitrina.training.mixing import BatchMix, mixed_cross_entropy
from vitrina.training.optim import (
    BestEpoch, build_optimizer, class_weights, epoch_order, freeze_batchnorm, loss_and_accuracy, lr_schedule, replan_schedule,
)
from vitrina.training.plan import Plan

Log = Callable[[str], None]
Forward = Callable[[torch.Tensor], torch.Tensor]
History = list[dict[str, float]]
Weights = dict[str, torch.Tensor]


@dataclass
class NetworkTraining:
    """What the network's epoch loop needs: the model, the decoded training and validation photos
    with their labels, the plan and settings, and where it computes."""

    model: nn.Module
    train_images: DecodedImages
    train_labels: np.ndarray
    val_images: DecodedImages
    val_labels: np.ndarray
    plan: Plan
    config: Config
    device: torch.device
    precision: str
    num_classes: int
    progress: bool = True
    log: Log = print
    train_precision: str = "fp32"  # of the optimisation steps (validation and frozen parts: ``precision``)
    select_best: bool = True  # validate each epoch and keep the best; else no validation, the last epoch kept (a refit)
    first_epoch: int = 0  # the epoch it starts at, its schedule that far along (a refit that continues the chosen network)

    @property
    def freeze_bn(self) -> bool:
        return batchnorm_frozen(self.config, self.plan.mode)


def batchnorm_frozen(config: Config, mode: str) -> bool:
    """Whether BatchNorm statistics stay as they are (``train.freeze_bn``; auto: when fine-tuning)."""
    setting = config.train.freeze_bn
    return setting == "yes" or (setting == "auto" and mode == "finetune")


class AugmentedBatches(torch.utils.data.Dataset):
    """Whole training batches (augmented, normalised) from the decoded-image cache.

    Batch ``i`` of an epoch is augmented with its own seed (``seed`` + ``i``) on a forked random
    state: the same batches whether a worker process or the training process augments them, and
    the training process's own random numbers (dropout, mixing) untouched by it.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any, preprocess: Any):
        self.images, self.labels, self.transform, self.preprocess = images, labels, transform, preprocess
        self.parts: list[np.ndarray] = []
        self.seed = 0

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.parts[i]
        ordered = np.sort(idx)  # sequential reads of the memory-mapped cache
        images = torch.from_numpy(np.array(self.images[ordered]))
        images = images[torch.from_numpy(np.searchsorted(ordered, idx))]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + i)
            images = augment_batch(self.transform, images)
        return self.preprocess.normalize_torch(images), torch.from_numpy(self.labels[idx])


def augments_in_worker(transform: Any, workers: int, device: torch.device, processes: int) -> bool:
    """Whether training batches are augmented in a worker process, while the model computes, or
    in the training process between steps.

    A worker pays only on a core that the training threads leave free (or beside a GPU). Where
    every core computes, it takes turns with torch's threads and each step waits for the one it
    interrupted: freiburg on 2 cores trained at 33-34 images/s with the worker, 36 without
    (docs/benchmarks.md#training-speed).
    """
    if transform is None or workers == 0:
        return False
    return device.type != "cpu" or default_threads() > torch.get_num_threads() * processes


def trainable_blocks(model: nn.Module, unfreeze_blocks: int) -> list[list[nn.Parameter]]:
    """Freeze the backbone but its last ``unfreeze_blocks`` blocks (all of them for -1); returns
    their parameters block by block, input to output."""
    blocks = list(model.blocks())
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    chosen = blocks if unfreeze_blocks < 0 else blocks[len(blocks) - unfreeze_blocks :] if unfreeze_blocks else []
    params: list[list[nn.Parameter]] = []
    for block in chosen:
        params.append([p.requires_grad_(True) for p in block.parameters()])
    return params


def trainable_body(model: nn.Module, unfreeze_blocks: int) -> list[nn.Parameter]:
    """Freeze the backbone but its last ``unfreeze_blocks`` blocks (all of them for -1); returns theirs."""
    return [p for block in trainable_blocks(model, unfreeze_blocks) for p in block]


def runs_frozen_prefix(config: Config, mode: str, device: torch.device, world: int = 1) -> bool:
    """Whether fine-tuning runs its frozen stages in ONNX Runtime (see :func:`frozen_prefix`)."""
    frozen_bn = batchnorm_frozen(config, mode)
    return mode == "finetune" and config.train.feature_runtime != "torch" and frozen_bn and world == 1 and device.type == "cpu"


def frozen_prefix(job: NetworkTraining, world: int) -> tuple[Forward, nn.Module] | None:
    """Fine-tuning's frozen stages as an ONNX Runtime session, and the trainable rest of the network.

    Only where it computes exactly what the network would: on a CPU (in fp32 whatever the trained
    blocks' precision), with BatchNorm
    statistics frozen (the frozen stages are then a fixed function), in one process (DDP wraps
    the whole network), and for backbones that :func:`split_at_trainable` can cut.
    """
    t, plan = job.config.train, job.plan
    if not runs_frozen_prefix(job.config, plan.mode, job.device, world):
        return None
    parts = split_at_trainable(job.model, plan.unfreeze_blocks)
    if parts is None:
        return None
    prefix, tail = parts
    onnx_prefix = OnnxPrefix(prefix, plan.preprocess.channels, plan.preprocess.input_size, default_cache_dir(t.cache_dir))
    job.log(f"  frozen stem and {prefix.num_stages} stages run in ONNX Runtime; the last {plan.unfreeze_blocks} blocks train")
    return onnx_prefix, tail


def _parameter_groups(job: NetworkTraining) -> list[dict]:
    """Fine-tuning: the unfrozen blocks at a scaled learning rate (each block ``layer_decay`` times
    the next one's) and the head; else every trainable parameter."""
    t, plan, model = job.config.train, job.plan, job.model
    if plan.mode == "finetune":
        blocks = trainable_blocks(model, plan.unfreeze_blocks)
        body_lr = plan.lr * t.body_lr_scale
        if t.layer_decay == 1.0:
            body = [{"params": [p for block in blocks for p in block], "lr": body_lr, "name": "body"}]
        else:
            body = [{"params": params, "lr": body_lr * t.layer_decay ** (len(blocks) - 1 - i), "name": f"body{i}"}
                    for i, params in enumerate(blocks)]
        groups = [*body, {"params": list(model.head.parameters()), "lr": plan.lr, "name": "head"}]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": plan.lr, "name": "all"}]
    return [g for g in groups if g["params"]]


@dataclass
class _Optimisation:
    """One optimisation step: the forward pass, the loss and its class weights, optimizer and schedule."""

    forward: Forward
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    weight: torch.Tensor | None
    label_smoothing: float
    device: torch.device
    precision: str
    mix: BatchMix | None = None
    average: WeightAverage | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """Learn from one batch; returns (summed loss, correct predictions: of the first label where mixed)."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        mixed = self.mix(x, y) if self.mix is not None else None
        with autocast(self.device, self.precision):
            logits = self.forward(mixed.images if mixed is not None else x)
        if mixed is not None:
            loss = mixed_cross_entropy(logits.float(), mixed, self.weight, self.label_smoothing)
        else:
            loss = F.cross_entropy(logits.float(), y, weight=self.weight, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update()
        return loss.item() * len(y), int((logits.argmax(1) == y).sum())


def _batches(order: np.ndarray, size: int) -> list[np.ndarray]:
    parts = [order[i : i + size] for i in range(0, len(order), size)]
    if len(parts) > 1 and len(parts[-1]) < 2:  # a batch of one breaks BatchNorm
        parts[-2] = np.concatenate([parts[-2], parts[-1]])
        parts.pop()
    return parts


def _train_epoch(
    job: NetworkTraining, net: nn.Module, optimisation: _Optimisation, source: AugmentedBatches, workers: int,
    local_batch: int, epoch: int,
) -> tuple[float, float, float]:
    """One pass over this process's share of the training photos; returns its (summed loss, correct, seen)."""
    t = job.config.train
    rank, world = world_position()
    order = epoch_order(job.train_labels, t.balance, t.seed, epoch)
    order = order[rank::world]
    net.train()
    if job.freeze_bn:
        freeze_batchnorm(job.model)
    source.parts = _batches(order, local_batch)
    source.seed = (t.seed * 100_003 + epoch) * 1_000_003 + rank * 100_003  # each batch adds its index
    total, correct, loss_sum = 0, 0, 0.0
    loader = torch.utils.data.DataLoader(source, batch_size=None, shuffle=False, num_workers=workers)
    bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{job.plan.epochs}", unit="img", disable=not (job.progress and rank == 0), leave=False)
    for x, y in loader:
        batch_loss, batch_correct = optimisation.step(x, y)
        loss_sum += batch_loss
        correct += batch_correct
        total += len(y)
        bar.update(len(y))
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    bar.close()
    return loss_sum, correct, total


def _sum_over_processes(loss_sum: float, correct: float, total: float) -> tuple[float, float, float]:
    """The epoch's figures summed over every process of a multi-process run."""
    if world_position()[1] == 1:
        return loss_sum, correct, total
    stats = torch.tensor([loss_sum, correct, total], dtype=torch.float64)
    dist.all_reduce(stats)
    loss_sum, correct, total = stats.tolist()
    return loss_sum, correct, total


def _log_epoch(job: NetworkTraining, row: dict[str, float], improved: bool) -> None:
    validation = f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}" if job.select_best else "no validation"
    job.log(
        f"  epoch {row['epoch']}/{job.plan.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
        f"{validation} | {row['images_per_second']:.0f} img/s, {row['seconds']:.0f} s" + (" *" if improved and job.select_best else "")
    )


def _steps_per_epoch(job: NetworkTraining, world: int) -> tuple[int, int]:
    """(optimisation steps an epoch, this process's batch size)."""
    # The configured batch size is the global one: each of the `world` processes takes a share.
    local_batch = max(1, job.plan.batch_size // world)
    return math.ceil(math.ceil(len(job.train_labels) / world) / local_batch), local_batch


def _optimizer_and_schedule(job: NetworkTraining, world: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int]:
    """The optimizer over the trainable parameters, its per-step schedule, and this process's batch size."""
    t, plan = job.config.train, job.plan
    optimizer = build_optimizer(t.optimizer, _parameter_groups(job), plan.weight_decay)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    steps_per_epoch, local_batch = _steps_per_epoch(job, world)
    return optimizer, lr_schedule(optimizer, plan.epochs, steps_per_epoch, t.warmup_epochs, t.schedule, job.first_epoch), local_batch


def _replan(job: NetworkTraining, scheduler: torch.optim.lr_scheduler.LambdaLR, epochs: int, world: int) -> None:
    """Plan the rest of training for ``epochs`` epochs in all (a callback asked: the time budget)."""
    if job.first_epoch:  # a schedule started epochs along (a refit's tail) is never re-planned: the budget stops re-planning before it
        raise RuntimeError("a schedule started epochs along cannot be re-planned")
    job.plan = replace(job.plan, epochs=epochs)
    replan_schedule(scheduler, epochs, _steps_per_epoch(job, world)[0], job.config.train.warmup_epochs, job.config.train.schedule)


def _restore(
    resume_state: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
    chosen: BestEpoch, callbacks: Sequence[Callback],
) -> int:
    """Continue from an interrupted run's ``train_state.pt``; returns the epochs it had finished."""
    optimizer.load_state_dict(resume_state["optimizer"])
    scheduler.load_state_dict(resume_state["scheduler"])
    restore_callbacks(callbacks, resume_state)
    chosen.history, chosen.best, chosen.state = resume_state["history"], tuple(resume_state["best"]), resume_state.get("best_state")
    return resume_state["epoch"]


def _resume_point(
    optimisation: _Optimisation, chosen: BestEpoch, callbacks: Sequence[Callback], epoch: int,
) -> dict[str, Any]:
    """What ``train_state.pt`` holds for ``--resume`` to continue after ``epoch``."""
    average = optimisation.average.state_dict() if optimisation.average is not None else {}
    return {"optimizer": optimisation.optimizer.state_dict(), "scheduler": optimisation.scheduler.state_dict(),
            "history": chosen.history, "best": list(chosen.best), **callback_states(callbacks), **average,
            "epoch": epoch, "best_state": chosen.state}


def _validate(job: NetworkTraining, validate: Forward) -> tuple[float, float]:
    """Validation loss and accuracy of the model as it is now."""
    job.model.eval()
    batch_size = max(64, job.plan.batch_size)
    val_logits = forward_uint8(validate, job.val_images.images, job.plan.preprocess, job.device, job.precision, batch_size=batch_size)
    return loss_and_accuracy(val_logits, job.val_labels)


def _stochastic_depth(job: NetworkTraining) -> None:
    """``model.drop_path`` on the blocks that train (after freezing: frozen blocks never drop)."""
    rate = job.config.model.drop_path
    dropping = set_drop_path(job.model, rate)
    if rate > 0:
        job.log(f"  stochastic depth ({rate:g} x depth) in {dropping} residual blocks that train" if dropping else
                f"  model.drop_path={rate:g} ignored: {job.plan.model} has no blocks with a drop_path branch that train")


def train_network(
    job: NetworkTraining, callbacks: Sequence[Callback] = (), resume_state: dict | None = None,
) -> tuple[History, Weights | None]:
    """Scratch or fine-tuning epochs; returns (history, the best epoch's weights).

    After each epoch the callbacks run in order; one that calls ``state.stop`` ends training after it.
    ``resume_state`` (a ``train_state.pt``) continues an interrupted run after its last epoch.
    """
    t, plan, model = job.config.train, job.plan, job.model
    _, world = world_position()
    optimizer, scheduler, local_batch = _optimizer_and_schedule(job, world)  # also freezes what does not train
    _stochastic_depth(job)
    weight = class_weights(job.train_labels, job.num_classes).to(job.device) if t.balance == "weights" else None
    transform = build_augment(job.config.augment, channels=plan.preprocess.channels)
    chosen, start_epoch = BestEpoch(to_cpu=True), job.first_epoch
    if resume_state:
        start_epoch = _restore(resume_state, optimizer, scheduler, chosen, callbacks)
        job.log(f"  resumed after epoch {start_epoch}")
    net, forward, validate = _forward_passes(job, world)
    average = WeightAverage(model, t.ema_decay) if t.ema_decay > 0 else None
    if average is not None and resume_state:
        average.load_state_dict(resume_state)
    mix = BatchMix.build(job.config.augment.mixup, job.config.augment.cutmix) if job.config.augment.enabled else None
    optimisation = _Optimisation(forward, optimizer, scheduler, weight, t.label_smoothing, job.device, job.train_precision, mix, average)
    # Batches are augmented in a worker process while the model computes where a core is free for
    # it, else between steps: the same batches either way (AugmentedBatches seeds each one), so
    # runs, and resumed runs, are reproducible.
    batch_workers = 1 if augments_in_worker(transform, t.workers, job.device, processes_on_this_machine()) else 0
    batch_source = AugmentedBatches(job.train_images.images, job.train_labels, transform, plan.preprocess)

    epoch = start_epoch
    while epoch < job.plan.epochs:
        started = time.perf_counter()
        torch.manual_seed(t.seed * 100_003 + epoch)
        loss_sum, correct, total = _train_epoch(job, net, optimisation, batch_source, batch_workers, local_batch, epoch)
        train_seconds = time.perf_counter() - started
        loss_sum, correct, total = _sum_over_processes(loss_sum, correct, total)
        with average.applied() if average is not None else nullcontext():
            val_started = time.perf_counter()
            val_loss, val_acc = _validate(job, validate) if job.select_best else (math.nan, math.nan)
            val_seconds = time.perf_counter() - val_started if job.select_best else math.nan
            row = _history_row(epoch, (loss_sum, correct, total), (val_loss, val_acc, val_seconds), optimizer, started, train_seconds)
            improved = chosen.record(row, model, job.select_best)  # the averaged weights, where they are averaged
        _log_epoch(job, row, improved)
        state = EpochEnd(epoch + 1, model, improved, partial(_resume_point, optimisation, chosen, callbacks, epoch + 1),
                         planned_epochs=job.plan.epochs)
        run_callbacks(callbacks, row, state)
        if state.stop_reason:
            job.log(f"  early stop: {state.stop_reason}")
            break
        if state.planned_epochs != job.plan.epochs:
            _replan(job, scheduler, int(state.planned_epochs or job.plan.epochs), world)
        epoch += 1
    return chosen.history, chosen.state


def _history_row(
    epoch: int, training: tuple[float, float, float], validation: tuple[float, float, float],
    optimizer: torch.optim.Optimizer, started: float, train_seconds: float,
) -> dict[str, float]:
    """An epoch's row of the history: ``training`` (loss sum, correct, photos), ``validation``
    (loss, accuracy, seconds its pass took; NaN without validation)."""
    loss_sum, correct, total = training
    val_loss, val_acc, val_seconds = validation
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / max(total, 1),
        "train_accuracy": correct / max(total, 1),
        "val_loss": val_loss,
        "val_accuracy": val_acc,
        "lr": optimizer.param_groups[-1]["lr"],
        "seconds": time.perf_counter() - started,
        "images_per_second": total / max(train_seconds, 1e-9),
        "val_seconds": val_seconds,
    }


def _forward_passes(job: NetworkTraining, world: int) -> tuple[nn.Module, Forward, Forward]:
    """(the network in training mode, DDP-wrapped across processes; its training forward pass, through
    the frozen stages' ONNX session where it applies; the validation forward pass)."""
    model = job.model
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[job.device.index] if job.device.type == "cuda" else None)
    frozen = frozen_prefix(job, world)
    if frozen is None:
        return net, net, model
    prefix, tail = frozen

    def forward(x: torch.Tensor) -> torch.Tensor:
        return tail(prefix(x).to(memory_format=torch.channels_last))

    return net, forward, forward
