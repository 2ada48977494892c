"""Choosing what to train: mode, model, preprocessing and the recommended hyperparameters.

``vitrina train DATA`` with no other flag must be a good setting, so every ``None`` in the
config is filled here from the recommended values for the chosen mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vitrina.config import Config
from vitrina.data.images import ImageError, probe
from vitrina.data.samples import Dataset
from vitrina.errors import ConfigError, DataError
from vitrina.models.registry import get_spec
from vitrina.preprocess import Preprocess

# Recommended hyperparameters per mode (measured on the benchmark datasets, see bench/).
RECOMMENDED: dict[str, dict[str, float | int]] = {
    "scratch": {"epochs": 20, "batch_size": 128, "lr": 3e-3, "weight_decay": 5e-4},
    "bottleneck": {"epochs": 80, "batch_size": 256, "lr": 2e-3, "weight_decay": 1e-3},
    "finetune": {"epochs": 8, "batch_size": 32, "lr": 1e-3, "weight_decay": 1e-4},
}
# On frozen features an MLP head measured about 2 points above a linear one (freiburg split 0).
# Three MLPs of half the width averaged (an ensemble): 83.7-83.8% over three ensembles, where
# single MLPs gave 82.0-85.2% (mean 83.4%) with the seed (freiburg split 0 at 288 px).
RECOMMENDED_HEAD = {"scratch": "linear", "bottleneck": "mlp_ensemble", "finetune": "linear"}
RECOMMENDED_FEATURE_COPIES = {"scratch": 0, "bottleneck": 0, "finetune": 0}
# Fine-tuning trains the last 3 blocks. The last 4 (efficientnet_lite0 at 288 px, the weight
# average, the neighbour vote with the validation photos in its bank, 30-minute budget) against
# the last 3: freiburg split 0 +0.88 points (92.24% against 91.36%), clothing-small +0.27 over
# two seeds, avito -0.23 over three seeds (SE 0.16, -6 photos): it hurts avito by more than one
# standard error, so by the protocol's rule it is not the default. See docs/benchmarks.md
# (Fine-tuning).
RECOMMENDED_UNFREEZE_BLOCKS = 3
# Pretrained backbones see a larger input than they were trained at: ImageNet training with
# random-resized crops shows objects larger than a centre crop at the same size does (Touvron et
# al., "Fixing the train-test resolution discrepancy", 2019).
# - Frozen features, freiburg split 0, efficientnet_lite0, MLP head: 224 px 80.5% / 288 px 84.1%
#   test accuracy (mean of two seeds); at 288 px an augmented feature copy no longer helps (83.9%),
#   so none is made by default.
# - Fine-tuning (last 4 blocks, 8 epochs), freiburg split 0: 224 px 86.6% / 288 px 88.8%
#   test accuracy; testing the 224 px model at 288 px gave 87.5%.
TRANSFER_INPUT_SCALE = 9 / 7  # 224 -> 288
DEFAULT_PRETRAINED = "efficientnet_lite0"
# Resizing when the config leaves it open: letterbox (the whole photo, padded to a square) when
# most training photos are not square, since a centre crop cuts off the ends of a 3:4 photo, often
# part of the product; otherwise the backbone's own (centre crop). Frozen efficientnet_lite0
# features at 288 px, 5-fold logistic regression over every photo of the dataset: avito
# 94.8 -> 96.1%, clothing-small 87.5 -> 89.4%; freiburg (square photos) 79.0 / 78.6%.
NON_SQUARE_ASPECT = 1.15  # median longer/shorter side above which the photos count as non-square
ASPECT_SAMPLE = 256  # training photos whose file headers are read to decide
# Augmentation and label smoothing by kind of data. On Fashion-MNIST (fmnist_cnn, 10 epochs) a
# horizontal flip alone reached 93.7-93.8% test accuracy over three seeds where the photo setting
# (rotation, shift, shear, zoom, colour, label smoothing 0.1) reached 92.1-92.9%. Label smoothing
# 0.1 alone (20 epochs, the defaults otherwise): 94.44% -> 94.48% (seed 0) and 94.02% -> 94.53%
# (seed 1), see docs/benchmarks.md (Regularisation).
RECOMMENDED_AUGMENT: dict[str, dict[str, float]] = {
    "photo": {"rotation": 10.0, "shift": 0.08, "shear": 5.0, "zoom": 0.15, "color_jitter": 0.2},
    "small_grayscale": {"rotation": 0.0, "shift": 0.0, "shear": 0.0, "zoom": 0.0, "color_jitter": 0.0},
}
RECOMMENDED_LABEL_SMOOTHING = {"photo": 0.1, "small_grayscale": 0.1}
# From scratch on small grayscale images: 20 epochs with AdamW's decoupled weight decay at 0.05
# (5e-4 barely restrains a network that reaches 98% training accuracy). Fashion-MNIST, fmnist_cnn,
# seed 0, test accuracy: 10 epochs at 5e-4 93.78% (334 s); 24 epochs at 5e-4, stopped at 16 by
# validation loss, 94.11%; 20 epochs at 0.05 94.43% (559 s), at 0.1 94.26%; 28 epochs at 0.05
# 94.10% (823 s, overfits); 20 epochs at 0.05 with random erasing 94.01% (each with patience 0;
# the default's patience of 5 stopped the 20-epoch run at epoch 19: 94.38%). The decay is AdamW's:
# Adam and SGD add it to the gradient, where 0.05 would be far too strong, so they keep 5e-4.
SMALL_GRAYSCALE_SCRATCH: dict[str, float | int] = {"epochs": 20, "weight_decay": 0.05}
# The refit (train.refit) where the config leaves it open: on small grayscale images from scratch
# the network validation chose learns on for the last half of its epochs on every photo
# (Fashion-MNIST, docs/benchmarks.md#refit: +77 photos over three seeds; the last quarter gained
# +15 on seed 0 where the half gained +37); elsewhere none, it has not shown a gain on photos.
SMALL_GRAYSCALE_REFIT_TAIL = 0.5
REFIT_CARRIED_SCORES = ("knn", "msp", "energy")  # the unknown scores whose threshold a refit can carry over
DECOUPLED_DECAY_OPTIMIZERS = ("adamw",)


@dataclass
class Plan:
    mode: str
    model: str
    preprocess: Preprocess
    pretrained: bool
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    head: str = "linear"
    feature_copies: int = 0
    # Fine-tuning: the last N backbone blocks train (-1 = all).
    unfreeze_blocks: int = RECOMMENDED_UNFREEZE_BLOCKS
    # The refit on every photo once validation has chosen: None none; else its tail (0 = a whole new network).
    refit: float | None = None


def looks_like_small_grayscale(dataset: Dataset) -> tuple[bool, int]:
    train = dataset.splits.get("train") or next(iter(dataset.splits.values()), [])
    first = next((s for s in train if s.pixels is not None), None)
    if first is None:
        return False, 0
    return True, int(max(first.pixels.shape))


def median_aspect(dataset: Dataset, limit: int = ASPECT_SAMPLE) -> float | None:
    """Median longer/shorter side of up to ``limit`` evenly spaced training photos (headers only).

    ``None`` when no file could be read (in-memory pixel rows count as square).
    """
    train = dataset.splits.get("train") or next(iter(dataset.splits.values()), [])
    step = max(1, len(train) // limit)
    ratios = []
    for sample in train[::step][:limit]:
        if sample.pixels is not None:
            ratios.append(max(sample.pixels.shape[:2]) / max(1, min(sample.pixels.shape[:2])))
            continue
        try:
            header = probe(sample.path)
        except ImageError:
            continue  # decoding reports it later
        ratios.append(max(header["width"], header["height"]) / max(1, min(header["width"], header["height"])))
    return float(np.median(ratios)) if ratios else None


def auto_resize(dataset: Dataset, default: str) -> str:
    """Letterbox for mostly non-square photos, else ``default`` (see NON_SQUARE_ASPECT)."""
    aspect = median_aspect(dataset)
    return "letterbox" if aspect is not None and aspect > NON_SQUARE_ASPECT else default


def check_trainable(dataset: Dataset) -> None:
    """Refuse data that cannot train a classifier, with a clear reason."""
    train = dataset.splits.get("train", [])
    counts: dict[str, int] = {c: 0 for c in dataset.classes}
    for s in train:
        counts[s.label] = counts.get(s.label, 0) + 1
    present = [c for c, n in counts.items() if n > 0]
    if len(present) < 2:
        raise DataError(
            f"{dataset.source}: training needs at least 2 classes, found {len(present)}"
            + (f" ({present[0]})" if present else "")
        )
    thin = [f"{c} ({n})" for c, n in counts.items() if n < 2]
    if thin:
        raise DataError(
            f"{dataset.source}: every class needs at least 2 training images; too few in: {', '.join(thin)}"
        )
    if "val" not in dataset.splits or not dataset.splits["val"]:
        raise DataError(f"{dataset.source}: no validation images for model selection")


def with_recommended_settings(dataset: Dataset, config: Config) -> Config:
    """``config`` with its data-dependent ``None`` settings (augmentation, label smoothing) filled in."""
    import copy

    kind = "small_grayscale" if looks_like_small_grayscale(dataset)[0] else "photo"
    filled = copy.deepcopy(config)
    for name, value in RECOMMENDED_AUGMENT[kind].items():
        if getattr(filled.augment, name) is None:
            setattr(filled.augment, name, value)
    if filled.train.label_smoothing is None:
        filled.train.label_smoothing = RECOMMENDED_LABEL_SMOOTHING[kind]
    return filled


def transfer_input_size(native: int) -> int:
    """The input size for transfer learning from a backbone trained at ``native`` px (a multiple of 32)."""
    return max(native, int(round(native * TRANSFER_INPUT_SCALE / 32)) * 32)


def make_plan(dataset: Dataset, config: Config) -> Plan:
    small_gray, side = looks_like_small_grayscale(dataset)
    mode = config.train.mode
    if mode == "auto":
        mode = "scratch" if small_gray and config.model.name is None else ("finetune" if config.model.name is None else None)
        if mode is None:
            spec = get_spec(config.model.name)
            mode = "scratch" if spec.family == "scratch" else "finetune"
    name = config.model.name
    if name is None:
        if mode == "scratch":
            name = "fmnist_cnn" if small_gray and side <= 32 else "cnn3"
        else:
            name = DEFAULT_PRETRAINED
    spec = get_spec(name)
    if mode in ("bottleneck", "finetune") and spec.family == "scratch":
        raise ConfigError(f"--mode {mode} needs a pretrained backbone; {name} is a from-scratch CNN (use --mode scratch)")
    channels = 1 if (small_gray and spec.family == "scratch") else spec.preprocess.channels
    input_size = config.model.input_size
    if input_size is None and mode in ("bottleneck", "finetune"):
        input_size = transfer_input_size(spec.preprocess.input_size)
    resize = config.model.resize or auto_resize(dataset, spec.preprocess.resize)
    preprocess = spec.preprocess.with_overrides(input_size=input_size, resize=resize)
    if channels != preprocess.channels:
        preprocess = preprocess.with_overrides(channels=channels, mean=(0.5,) * channels, std=(0.5,) * channels)
    if small_gray and spec.family == "scratch" and config.model.input_size is None:
        preprocess = preprocess.with_overrides(input_size=side)
    rec = dict(RECOMMENDED[mode])
    if small_gray and mode == "scratch":
        rec["epochs"] = SMALL_GRAYSCALE_SCRATCH["epochs"]
        if config.train.optimizer in DECOUPLED_DECAY_OPTIMIZERS:
            rec["weight_decay"] = SMALL_GRAYSCALE_SCRATCH["weight_decay"]
    t = config.train
    return Plan(
        mode=mode,
        model=name,
        preprocess=preprocess,
        pretrained=config.model.pretrained and spec.family != "scratch",
        epochs=int(t.epochs if t.epochs is not None else rec["epochs"]),
        batch_size=int(t.batch_size if t.batch_size is not None else rec["batch_size"]),
        lr=float(t.lr if t.lr is not None else rec["lr"]),
        weight_decay=float(t.weight_decay if t.weight_decay is not None else rec["weight_decay"]),
        head=config.model.head if config.model.head != "auto" else RECOMMENDED_HEAD[mode],
        feature_copies=int(t.feature_copies if t.feature_copies is not None else RECOMMENDED_FEATURE_COPIES[mode]),
        unfreeze_blocks=int(t.unfreeze_blocks if t.unfreeze_blocks is not None else RECOMMENDED_UNFREEZE_BLOCKS),
        refit=planned_refit(config, small_gray and mode == "scratch"),
    )


def planned_refit(config: Config, small_gray_scratch: bool) -> float | None:
    """The refit's tail (0: a whole new network), or None for no refit: as the config says, else
    the recommended, for small grayscale images from scratch only (the trainer drops it where the
    run cannot make or report it: :func:`vitrina.training.refit.recommended_refit_obstacle`)."""
    t = config.train
    if t.refit is False or (t.refit is None and not small_gray_scratch):
        return None
    if t.refit_tail is not None:
        return t.refit_tail
    return SMALL_GRAYSCALE_REFIT_TAIL if t.refit is None else 0.0  # asked for: a whole new network
