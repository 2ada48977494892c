"""The training engine: scratch, bottleneck (frozen features) and fine-tuning in one loop.

:func:`train` takes a loaded :class:`~vitrina.data.samples.Dataset` and a resolved config and
writes one run folder: config, split lists, history (CSV/JSON), TensorBoard events, checkpoints
(``model.safetensors`` = best, ``last.safetensors`` + ``train_state.pt`` for ``--resume``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vitrina import config as config_lib
from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.cache import DecodedImages, decode_samples, default_cache_dir
from vitrina.data.samples import Dataset
from vitrina.description import ModelDescription, Thresholds
from vitrina.errors import ConfigError, VitrinaError
from vitrina.models.checkpoint import save_model
from vitrina.models.neighbours import fit_vote
from vitrina.models.registry import HeadEnsemble, create_model
from vitrina.models.stages import OnnxPrefix, split_at_trainable
from vitrina.models.unknown import MAX_BANK, default_k, fit_unknown, penultimate_features, save_unknown
from vitrina.models.onnx_graph import OnnxFeatureExtractor
from vitrina.models.runtime import autocast, forward_uint8, mirror_images, predict_logits, resolve_device, resolve_precision
from vitrina.training.augment import augment_batch, build_augment
from vitrina.training.cache import FeatureStore
from vitrina.training.distributed import barrier, is_main_process, local_device_name, world_position
from vitrina.training.plan import Plan, check_trainable, make_plan, with_recommended_settings

Log = Callable[[str], None]
EpochHook = Callable[[dict[str, float]], None]  # sees each epoch's history row; may raise to stop


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


# ----------------------------------------------------------------------------- helpers
def _config_digest(config: Config) -> str:
    relevant = config.to_dict()
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in ("device", "workers", "cache_dir")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _label_array(dataset: Dataset, decoded: DecodedImages, split: str) -> np.ndarray:
    index = dataset.class_to_index
    samples = dataset.splits[split]
    return np.asarray([index[samples[i].label] for i in decoded.index], dtype=np.int64)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(weights, dtype=torch.float32)


def _epoch_order(labels: np.ndarray, balance: str, seed: int, epoch: int) -> np.ndarray:
    """This epoch's sample order (seeded by epoch, so a resumed run sees the same batches)."""
    rng = np.random.default_rng([seed, epoch])
    if balance == "sampler":
        counts = np.bincount(labels)
        p = 1.0 / counts[labels]
        return rng.choice(len(labels), size=len(labels), replace=True, p=p / p.sum())
    return rng.permutation(len(labels))


def _lr_lambda(total_steps: int, warmup_steps: int, schedule: str) -> Callable[[int], float]:
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "step":
            return 0.1 ** int(progress * 3)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    # Fused Adam updates all tensors in one kernel: on a CPU a small head's step took 1.5 ms
    # instead of 5.5 ms (PyTorch only picks a faster implementation by itself on CUDA).
    groups = [{**g, "params": list(g["params"])} for g in groups]
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = {"fused": True} if devices <= {"cpu", "cuda"} else {}
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(groups, weight_decay=weight_decay, **fused)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)


def _freeze_batchnorm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _loss_and_accuracy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    if len(labels) == 0:
        return float("nan"), float("nan")
    t = torch.from_numpy(logits)
    loss = F.cross_entropy(t, torch.from_numpy(labels)).item()
    accuracy = float((logits.argmax(1) == labels).mean())
    return loss, accuracy


# ----------------------------------------------------------------------------- features
FEATURE_CHUNK = 256  # images decoded, augmented and embedded at a time


class BackboneFeatures:
    """Frozen-backbone features of decoded images, cached on disk by image content.

    On a CPU in fp32 the backbone runs through ONNX Runtime (``train.feature_runtime: auto``), about
    3x faster than eager PyTorch here; both compute the same function to float rounding, so they
    share the cache. The ONNX session is only built when some features are missing.
    """

    def __init__(
        self, model: nn.Module, model_id: str, plan: Plan, cache_dir: Path, device: torch.device,
        precision: str, runtime: str = "auto", log: Log = print,
    ):
        self.model, self.model_id, self.plan, self.cache_dir = model, model_id, plan, cache_dir
        self.device, self.precision, self.log = device, precision, log
        if runtime == "auto":
            runtime = "onnx" if device.type == "cpu" and precision == "fp32" else "torch"
        if runtime == "onnx" and (device.type != "cpu" or precision != "fp32"):
            raise ConfigError("train.feature_runtime=onnx runs on the CPU in fp32 (set train.device=cpu, train.precision=fp32)")
        self.runtime = runtime
        self._onnx: Any = None

    def _forward(self, images: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            if self._onnx is None:
                self._onnx = OnnxFeatureExtractor(self.model, self.plan.preprocess, self.cache_dir)
            return self._onnx(images)
        self.model.eval()
        return forward_uint8(self.model.forward_features, images, self.plan.preprocess, self.device, self.precision, batch_size=64)

    def __call__(self, decoded: DecodedImages, variant: str = "plain", transform: Any = None, seed: int = 0) -> np.ndarray:
        store = FeatureStore(self.cache_dir, f"{self.model_id}|{self.precision}", self.plan.preprocess, variant)
        feats, missing = store.lookup(decoded.hashes)
        if missing:
            started = time.perf_counter()
            torch.manual_seed(seed)
            parts = []
            # In chunks: augmentation works in float32, about 12x the uint8 images' memory.
            for start in range(0, len(missing), FEATURE_CHUNK):
                rows = missing[start : start + FEATURE_CHUNK]
                images = np.asarray(decoded.images[rows])
                if transform is not None:
                    images = augment_batch(transform, torch.from_numpy(images)).numpy()
                parts.append(self._forward(images))
            store.add([decoded.hashes[i] for i in missing], np.concatenate(parts))
            feats, _ = store.lookup(decoded.hashes)
            seconds = time.perf_counter() - started
            self.log(
                f"  features ({variant}, {self.runtime}): {len(missing)} images in {seconds:.1f} s "
                f"({len(missing) / max(seconds, 1e-9):.0f} images/s)"
            )
        assert feats is not None
        return feats


def extract_features(
    model: nn.Module,
    model_id: str,
    decoded: DecodedImages,
    plan: Plan,
    cache_dir: Path,
    device: torch.device,
    precision: str,
    variant: str = "plain",
    transform: Any = None,
    seed: int = 0,
    log: Log = print,
    runtime: str = "auto",
) -> np.ndarray:
    """Backbone features for every decoded image, from the cache where present (see :class:`BackboneFeatures`)."""
    return BackboneFeatures(model, model_id, plan, cache_dir, device, precision, runtime, log)(decoded, variant, transform, seed)


def fit_head(
    head: nn.Module,
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    plan: Plan,
    config: Config,
    num_classes: int,
    epochs: int | None = None,
    writer: Any = None,
    log: Log = print,
    on_epoch: EpochHook | None = None,
) -> list[dict[str, float]]:
    """Train a head on cached features (seconds); keeps the epoch with the best validation accuracy."""
    # A linear head's matrices are too small to gain from a second thread, and lose a lot when the cores are busy.
    threads = torch.get_num_threads()
    if not any(isinstance(m, nn.ReLU | nn.GELU) for m in head.modules()):
        torch.set_num_threads(1)
    try:
        return _fit_head(head, train_x, train_y, val_x, val_y, plan, config, num_classes, epochs, writer, log, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _fit_head(
    head: nn.Module, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, plan: Plan,
    config: Config, num_classes: int, epochs: int | None, writer: Any, log: Log, on_epoch: EpochHook | None,
) -> list[dict[str, float]]:
    t = config.train
    torch.manual_seed(t.seed)
    xs, ys = torch.from_numpy(train_x), torch.from_numpy(train_y)
    vx, vy = torch.from_numpy(val_x), torch.from_numpy(val_y)
    weight = _class_weights(train_y, num_classes) if t.balance == "weights" else None
    epochs = epochs or plan.epochs
    batch = min(plan.batch_size, len(xs))
    steps_per_epoch = math.ceil(len(xs) / batch)
    optimizer = _optimizer(t.optimizer, [{"params": head.parameters(), "lr": plan.lr}], plan.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch), t.schedule)
    )
    history: list[dict[str, float]] = []
    best = (-1.0, float("inf"))
    best_state = None
    stale = 0
    labels_for_order = train_y
    for epoch in range(epochs):
        head.train()
        order = torch.from_numpy(_epoch_order(labels_for_order, t.balance, t.seed, epoch))
        total, correct, loss_sum = 0, 0, 0.0
        for part in range(0, len(order), batch):
            idx = order[part : part + batch]
            if isinstance(head, HeadEnsemble):  # each member learns on its own, as if trained alone
                members = head.member_logits(xs[idx])
                loss = torch.stack([F.cross_entropy(m, ys[idx], weight=weight, label_smoothing=t.label_smoothing) for m in members]).mean()
                logits = torch.stack(members).mean(dim=0).detach()
            else:
                logits = head(xs[idx])
                loss = F.cross_entropy(logits, ys[idx], weight=weight, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == ys[idx]).sum())
            total += len(idx)
        head.eval()
        with torch.no_grad():
            val_logits = head(vx).numpy()
        val_loss, val_acc = _loss_and_accuracy(val_logits, val_y)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / total, "train_accuracy": correct / total, "val_loss": val_loss, "val_accuracy": val_acc, "lr": optimizer.param_groups[0]["lr"]}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if writer is not None:
            _log_scalars(writer, row, epoch + 1, prefix="head/")
        if (val_acc, -val_loss) > (best[0], -best[1]):
            best = (val_acc, val_loss)
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            stale = 0
        else:
            stale += 1
            if t.patience and stale >= max(t.patience * 3, 10):  # head epochs are short and noisy
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    log(f"  head: best validation accuracy {best[0]:.4f} (loss {best[1]:.4f}) after {len(history)} epochs")
    return history


def _fit_head_on_features(
    model: nn.Module,
    model_id: str,
    decoded: dict[str, DecodedImages],
    labels: dict[str, np.ndarray],
    plan: Plan,
    config: Config,
    cache_dir: Path,
    device: torch.device,
    precision: str,
    num_classes: int,
    writer: Any,
    on_epoch: EpochHook | None,
    log: Log,
) -> list[dict[str, float]]:
    """Bottleneck training, or the fine-tuning warm start: the head fitted on cached frozen features."""
    features = BackboneFeatures(model, model_id, plan, cache_dir, device, precision, config.train.feature_runtime, log)
    train_x = features(decoded["train"])
    train_y = labels["train"]
    if plan.mode == "bottleneck" and plan.feature_copies > 0:
        transform = build_augment(config.augment, channels=plan.preprocess.channels)
        aug_key = json.dumps(config.augment.__dict__, sort_keys=True)
        copies = [train_x]
        for copy in range(1, plan.feature_copies + 1):
            copies.append(
                features(
                    decoded["train"], variant=f"aug{copy}|seed{config.train.seed}|batch-augment-v1|{aug_key}",
                    transform=transform, seed=config.train.seed * 1000 + copy,
                )
            )
        train_x = np.concatenate(copies)
        train_y = np.tile(train_y, len(copies))
    val_x = features(decoded["val"])
    head_plan = plan
    if plan.mode == "finetune":
        head_plan = Plan(plan.mode, plan.model, plan.preprocess, plan.pretrained, **WARM_START_HEAD, head=plan.head)
    log("  fitting the head on frozen features")
    return fit_head(model.head, train_x, train_y, val_x, labels["val"], head_plan, config, num_classes, writer=writer, log=log, on_epoch=on_epoch)


def _log_scalars(writer: Any, row: dict[str, float], step: int, prefix: str = "") -> None:
    for key, value in row.items():
        if key != "epoch" and value is not None and math.isfinite(value):
            group, _, name = key.partition("_")
            writer.add_scalar(f"{prefix}{name}/{group}", value, step)


# ----------------------------------------------------------------------------- network loop
class _AugmentedBatches(torch.utils.data.Dataset):
    """Whole training batches (augmented, normalised) from the decoded-image cache."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any, preprocess: Any):
        self.images, self.labels, self.transform, self.preprocess = images, labels, transform, preprocess
        self.parts: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self.parts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.parts[i]
        ordered = np.sort(idx)  # sequential reads of the memory-mapped cache
        images = torch.from_numpy(np.array(self.images[ordered]))
        images = images[torch.from_numpy(np.searchsorted(ordered, idx))]
        images = augment_batch(self.transform, images)
        return self.preprocess.normalize_torch(images), torch.from_numpy(self.labels[idx])


def _trainable_body(model: nn.Module, unfreeze_blocks: int) -> list[nn.Parameter]:
    blocks = list(model.blocks())
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    chosen = blocks if unfreeze_blocks < 0 else blocks[len(blocks) - unfreeze_blocks :] if unfreeze_blocks else []
    params: list[nn.Parameter] = []
    for block in chosen:
        for p in block.parameters():
            p.requires_grad_(True)
            params.append(p)
    return params


def _frozen_prefix(
    model: nn.Module, plan: Plan, config: Config, device: torch.device, precision: str, freeze_bn: bool, world: int, log: Log
) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module] | None:
    """Fine-tuning's frozen stages as an ONNX Runtime session, and the trainable rest of the network.

    Only where it computes exactly what the network would: on a CPU in fp32, with BatchNorm
    statistics frozen (the frozen stages are then a fixed function), in one process (DDP wraps
    the whole network), and for backbones that :func:`split_at_trainable` can cut.
    """
    t = config.train
    if plan.mode != "finetune" or t.feature_runtime == "torch" or not freeze_bn or world > 1:
        return None
    if device.type != "cpu" or precision != "fp32":
        return None
    parts = split_at_trainable(model, t.unfreeze_blocks)
    if parts is None:
        return None
    prefix, tail = parts
    onnx_prefix = OnnxPrefix(prefix, plan.preprocess.channels, plan.preprocess.input_size, default_cache_dir(t.cache_dir))
    log(f"  frozen stem and {prefix.num_stages} stages run in ONNX Runtime; the last {t.unfreeze_blocks} blocks train")
    return onnx_prefix, tail


def train_network(
    model: nn.Module,
    decoded: DecodedImages,
    labels: np.ndarray,
    val: DecodedImages,
    val_labels: np.ndarray,
    plan: Plan,
    config: Config,
    run_dir: Path,
    device: torch.device,
    precision: str,
    num_classes: int,
    writer: Any = None,
    resume_state: dict | None = None,
    save_checkpoint: Callable[[nn.Module, dict], None] | None = None,
    progress: bool = True,
    log: Log = print,
    on_epoch: EpochHook | None = None,
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor] | None]:
    """Scratch or fine-tuning epochs with early stopping; returns (history, best state)."""
    from tqdm import tqdm

    t = config.train
    rank, world = world_position()
    if plan.mode == "finetune":
        body = _trainable_body(model, t.unfreeze_blocks)
        groups = [
            {"params": body, "lr": plan.lr * t.body_lr_scale, "name": "body"},
            {"params": list(model.head.parameters()), "lr": plan.lr, "name": "head"},
        ]
    else:
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": plan.lr, "name": "all"}]
    groups = [g for g in groups if g["params"]]
    optimizer = _optimizer(t.optimizer, groups, plan.weight_decay)
    for g in optimizer.param_groups:
        g["initial_lr"] = g["lr"]
    # The configured batch size is the global one: each of the `world` processes takes a share.
    local_batch = max(1, plan.batch_size // world)
    steps_per_epoch = math.ceil(math.ceil(len(labels) / world) / local_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(plan.epochs * steps_per_epoch, int(t.warmup_epochs * steps_per_epoch), t.schedule)
    )
    freeze_bn = t.freeze_bn == "yes" or (t.freeze_bn == "auto" and plan.mode == "finetune")
    weight = _class_weights(labels, num_classes).to(device) if t.balance == "weights" else None
    transform = build_augment(config.augment, channels=plan.preprocess.channels)

    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None
    best = (-1.0, float("inf"))
    best_val_loss, stale, start_epoch = float("inf"), 0, 0
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        history = resume_state["history"]
        best = tuple(resume_state["best"])  # type: ignore[assignment]
        best_val_loss, stale, start_epoch = resume_state["best_val_loss"], resume_state["stale"], resume_state["epoch"]
        best_state = resume_state.get("best_state")
        log(f"  resumed after epoch {start_epoch}")

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    frozen = _frozen_prefix(model, plan, config, device, precision, freeze_bn, world, log)
    if frozen is not None:
        prefix, tail = frozen
        forward = lambda x: tail(prefix(x).to(memory_format=torch.channels_last))  # noqa: E731

    # Batches are augmented in a worker process while the model computes; the worker's RNG is
    # seeded from the epoch seed, so runs (and resumed runs) are reproducible.
    batch_workers = 1 if transform is not None and t.workers != 0 else 0
    batch_source = _AugmentedBatches(decoded.images, labels, transform, plan.preprocess)

    for epoch in range(start_epoch, plan.epochs):
        started = time.perf_counter()
        torch.manual_seed(t.seed * 100_003 + epoch)
        order = _epoch_order(labels, t.balance, t.seed, epoch)
        order = order[rank::world]
        net.train()
        if freeze_bn:
            _freeze_batchnorm(model)
        parts = [order[i : i + local_batch] for i in range(0, len(order), local_batch)]
        if len(parts) > 1 and len(parts[-1]) < 2:  # a batch of one breaks BatchNorm
            parts[-2] = np.concatenate([parts[-2], parts[-1]])
            parts.pop()
        total, correct, loss_sum = 0, 0, 0.0
        batch_source.parts = parts
        loader = torch.utils.data.DataLoader(batch_source, batch_size=None, shuffle=False, num_workers=batch_workers)
        bar = tqdm(total=len(order), desc=f"epoch {epoch + 1}/{plan.epochs}", unit="img", disable=not (progress and rank == 0), leave=False)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, precision):
                logits = forward(x)
            loss = F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=t.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
            bar.update(len(y))
            bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
        bar.close()
        train_seconds = time.perf_counter() - started
        if world > 1:
            stats = torch.tensor([loss_sum, correct, total], dtype=torch.float64)
            dist.all_reduce(stats)
            loss_sum, correct, total = stats.tolist()
        model.eval()
        val_logits = forward_uint8(
            model if frozen is None else forward, val.images, plan.preprocess, device, precision, batch_size=max(64, plan.batch_size)
        )
        val_loss, val_acc = _loss_and_accuracy(val_logits, val_labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(total, 1),
            "train_accuracy": correct / max(total, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": optimizer.param_groups[-1]["lr"],
            "seconds": time.perf_counter() - started,
            "images_per_second": total / max(train_seconds, 1e-9),
        }
        history.append(row)
        if writer is not None:
            _log_scalars(writer, {k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}, epoch + 1)
        improved = (val_acc, -val_loss) > (best[0], -best[1])
        if improved:
            best = (val_acc, val_loss)
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if val_loss < best_val_loss - 1e-4:
            best_val_loss, stale = val_loss, 0
        else:
            stale += 1
        log(
            f"  epoch {epoch + 1}/{plan.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {val_loss:.4f} acc {val_acc:.4f} | {row['images_per_second']:.0f} img/s, {row['seconds']:.0f} s"
            + (" *" if improved else "")
        )
        if save_checkpoint is not None and rank == 0:
            save_checkpoint(
                model,
                {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "best": list(best),
                    "best_val_loss": best_val_loss,
                    "stale": stale,
                    "epoch": epoch + 1,
                    "best_state": best_state,
                },
            )
        if on_epoch is not None:
            on_epoch(row)
        if t.patience and stale >= t.patience:
            log(f"  early stop: validation loss has not improved for {t.patience} epochs")
            break
    return history, best_state


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The softmax temperature that minimises validation NLL (calibration; argmax unchanged)."""
    if len(labels) < 2:
        return 1.0
    x, y = torch.from_numpy(logits).double(), torch.from_numpy(labels)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(min(10.0, max(0.05, log_t.exp().item())))


WARM_START_HEAD = {"epochs": 30, "batch_size": 256, "lr": 2e-3, "weight_decay": 1e-3}  # head fit before fine-tuning
ACCEPT_RATE = 0.95  # share of in-distribution (validation) photos a model answers confidently


def confidence_threshold(logits: np.ndarray, accept_rate: float) -> Thresholds:
    """The top-class probability above which ``accept_rate`` of validation photos fall.

    Below it a prediction is "uncertain": the server and `predict` say so instead of guessing.
    """
    confidence = torch.softmax(torch.from_numpy(logits).double(), dim=1).max(dim=1).values.numpy()
    value = float(np.quantile(confidence, 1.0 - accept_rate)) if len(confidence) else 0.0
    return Thresholds(confidence=round(value, 6), accept_rate=accept_rate)


def apply_temperature(model: nn.Module, temperature: float) -> None:
    """Fold 1/T into the head's last linear layer, so every runtime (torch, ONNX) is calibrated."""
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(temperature)
        if last.bias is not None:
            last.bias.div_(temperature)


# ----------------------------------------------------------------------------- entry point
def _write_history(run_dir: Path, history: list[dict[str, float]], name: str = "history") -> None:
    if not history:
        return
    write_json(run_dir / f"{name}.json", history)
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _write_splits(run_dir: Path, dataset: Dataset) -> None:
    write_json(
        run_dir / "splits.json",
        {
            "source": dataset.source,
            "classes": dataset.classes,
            "carved": {k: {kk: vv for kk, vv in v.items() if kk != "paths"} for k, v in dataset.carved.items() if isinstance(v, dict)},
            "splits": {name: [s.path for s in samples] for name, samples in dataset.splits.items()},
        },
    )


def _writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; an unusual install may lack it
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def model_meta(plan: Plan, dataset: Dataset, config: Config, **extra: Any) -> ModelDescription:
    """The description saved with the weights: architecture, classes, preprocessing, then ``extra`` fields."""
    return ModelDescription(
        model=plan.model, mode=plan.mode, classes=tuple(dataset.classes), coarse_of=dict(dataset.coarse_of),
        preprocess=plan.preprocess, head=plan.head, hidden=config.model.hidden, dropout=config.model.dropout,
        trained_on=dataset.source, **extra,
    )


def _bank_features(
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


def _choose_flip_average(
    model: nn.Module, plan: Plan, val_images: np.ndarray, val_features: np.ndarray, val_labels: np.ndarray,
    device: torch.device, precision: str, cache_dir: Path, log: Log,
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


def train(
    dataset: Dataset,
    config: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    log: Log = print,
    on_epoch: EpochHook | None = None,
) -> TrainResult:
    """Train a classifier on ``dataset`` as ``config`` says, writing everything into ``run_dir``.

    ``on_epoch`` receives the history row of every epoch that selects the model (the head's on
    cached features in bottleneck mode, the network's otherwise); an exception it raises stops
    training (hyperparameter search prunes trials so).
    """
    check_trainable(dataset)
    config = with_recommended_settings(dataset, config)
    plan = make_plan(dataset, config)
    device = resolve_device(local_device_name(config.train.device))
    precision = resolve_precision(config.train.precision, device)
    cache_dir = default_cache_dir(config.train.cache_dir)
    workers = config.train.workers if config.train.workers >= 0 else min(4, os.cpu_count() or 1)
    num_classes = len(dataset.classes)
    digest = _config_digest(config)
    main = is_main_process()

    state_path = run_dir / "train_state.pt"
    resume_state = None
    if resume:
        if not state_path.is_file():
            raise VitrinaError(f"{run_dir}: nothing to resume (no train_state.pt); start a new run instead")
        resume_state = torch.load(state_path, map_location="cpu", weights_only=True)
        if resume_state.get("config_digest") != digest:
            raise ConfigError(
                f"{run_dir}: --resume with a different config than the interrupted run; "
                "resume with the same settings (see its config.yaml) or start a new run"
            )
    if main:
        config_lib.save(config, run_dir)
        _write_splits(run_dir, dataset)
    log(
        f"training {plan.model} ({plan.mode}) on {num_classes} classes: "
        f"{plan.epochs} epochs, batch {plan.batch_size}, lr {plan.lr:g}, {device.type} {precision}, "
        f"input {plan.preprocess.channels}x{plan.preprocess.input_size} {plan.preprocess.resize}"
    )

    started = time.perf_counter()
    if not main:
        barrier()  # rank 0 fills the decoded-image and feature caches first; the others then read them
    decoded: dict[str, DecodedImages] = {}
    labels: dict[str, np.ndarray] = {}
    skipped: list[dict] = []
    for split in dataset.splits:
        decoded[split] = decode_samples(
            dataset.splits[split], plan.preprocess, cache_dir, max_pixels=config.data.max_pixels,
            workers=workers, progress=progress and main, desc=f"decoding {split}",
        )
        labels[split] = _label_array(dataset, decoded[split], split)
        for item in decoded[split].skipped:
            skipped.append({**item, "split": split})
            log(f"  skipped {item['path']}: {item['reason']}")
    if len(labels["train"]) == 0 or len(labels["val"]) == 0:
        raise VitrinaError("no readable images left in the train or validation split")

    torch.manual_seed(config.train.seed)  # the head's (or scratch net's) initial weights
    model = create_model(
        plan.model, num_classes, pretrained=plan.pretrained, weights=config.model.weights,
        channels=plan.preprocess.channels, input_size=plan.preprocess.input_size,
        head=plan.head, hidden=config.model.hidden, dropout=config.model.dropout,
    )
    model_id = f"{plan.model}|{config.model.weights or ('pretrained' if plan.pretrained else 'random')}"
    model.to(device).to(memory_format=torch.channels_last)
    writer = _writer(run_dir) if main else None
    history: list[dict[str, float]] = []

    def save_checkpoint(net: nn.Module, state: dict) -> None:
        save_model(run_dir, net, model_meta(plan, dataset, config), stem="last")
        tmp = run_dir / "train_state.pt.tmp"
        torch.save({**state, "config_digest": digest}, tmp)
        os.replace(tmp, state_path)

    try:
        if plan.mode == "bottleneck" or (plan.mode == "finetune" and config.train.warm_start_head and resume_state is None):
            history = _fit_head_on_features(
                model, model_id, decoded, labels, plan, config, cache_dir, device, precision, num_classes,
                writer, on_epoch if plan.mode == "bottleneck" else None, log,
            )
            if main:
                _write_history(run_dir, history, "history_head" if plan.mode == "finetune" else "history")
        if main:
            barrier()
        if plan.mode in ("finetune", "scratch"):
            if resume_state is not None:
                from safetensors.torch import load_file

                model.load_state_dict(load_file(str(run_dir / "last.safetensors")))
            history, best_state = train_network(
                model, decoded["train"], labels["train"], decoded["val"], labels["val"], plan, config, run_dir,
                device, precision, num_classes, writer=writer, resume_state=resume_state,
                save_checkpoint=save_checkpoint, progress=progress, log=log, on_epoch=on_epoch,
            )
            if best_state is not None:
                model.load_state_dict(best_state)
            if main:
                _write_history(run_dir, history)
    finally:
        if writer is not None:
            writer.close()
    train_seconds = time.perf_counter() - started

    model.eval()
    features = None
    if plan.mode == "bottleneck":
        features = BackboneFeatures(model, model_id, plan, cache_dir, device, precision, config.train.feature_runtime, log)
        with torch.inference_mode():
            val_logits = model.head_logits(torch.from_numpy(features(decoded["val"])).to(device)).float().cpu().numpy()
    else:
        val_logits = predict_logits(model, decoded["val"].images, plan.preprocess, device, precision, cache_dir)
    temperature = fit_temperature(val_logits, labels["val"])
    apply_temperature(model, temperature)
    val_logits = val_logits / temperature
    log(f"  calibration: softmax temperature {temperature:.3f} fitted on the validation split")
    extra: dict[str, Any] = {"train_seconds": round(train_seconds, 2), "precision": precision, "temperature": round(temperature, 4)}
    scorer, val_features = None, None
    if main:
        started_bank = time.perf_counter()
        bank_rows, train_features, val_features = _bank_features(model, plan, decoded, features, device, precision, cache_dir, config.train.seed)
        bank_labels = labels["train"][bank_rows]
        method = config.train.unknown_score
        k = config.train.unknown_k or default_k(method, trained_backbone=plan.mode != "bottleneck")
        scorer, extra["unknown"] = fit_unknown(train_features, bank_labels, val_features, val_logits, num_classes,
                                               method=method, k=k, seed=config.train.seed)
        log(f"  unknown photos: {method} score, threshold {extra['unknown'].threshold:.4f} accepts "
            f"{ACCEPT_RATE:.0%} of the validation photos ({time.perf_counter() - started_bank:.1f} s)")
        if config.train.neighbour_vote:
            choice = fit_vote(train_features, bank_labels, val_features, val_logits, labels["val"], num_classes)
            if choice.vote is not None:
                model.vote = choice.vote.to(device)
                extra["neighbours"] = model.vote.describe()
                log(f"  neighbour vote: k {choice.vote.k}, temperature {choice.vote.temperature:g}, weight {choice.vote.weight:g}: "
                    f"validation accuracy {choice.val_accuracy_head:.4f} -> {choice.val_accuracy:.4f}")
            else:
                log(f"  neighbour vote: not used (no setting beat the head alone on the validation split, {choice.val_accuracy_head:.4f})")
        if config.train.flip_average:
            val_probs = _choose_flip_average(model, plan, decoded["val"].images, val_features, labels["val"], device, precision, cache_dir, log)
            if model.flip_average:
                extra["flip_average"] = True
                val_logits = np.log(np.clip(val_probs, 1e-12, None))
    split_logits: dict[str, np.ndarray] = {}
    if features is not None and not model.flip_average:  # bottleneck: every split's logits from the cached features
        with torch.inference_mode():
            for split in decoded:
                if split != "train":
                    split_logits[split] = model.forward_head(torch.from_numpy(features(decoded[split])).to(device)).float().cpu().numpy()
    if model.vote is not None and not model.flip_average:  # the confidence threshold of what the model now answers: head and vote
        with torch.inference_mode():
            val_logits = model.forward_head(torch.from_numpy(val_features).to(device)).float().cpu().numpy()
    extra["thresholds"] = confidence_threshold(val_logits, ACCEPT_RATE)
    meta = model_meta(plan, dataset, config, **extra)
    if main:
        assert scorer is not None
        save_unknown(run_dir, scorer)
        save_model(run_dir, model, meta)
        if skipped:
            with open(run_dir / "skipped.csv", "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=["split", "path", "reason"])
                w.writeheader()
                w.writerows(skipped)
    return TrainResult(run_dir, model, meta, history, decoded, labels, train_seconds, skipped, split_logits)
