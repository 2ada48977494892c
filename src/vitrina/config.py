"""One config flow: typed defaults here, overridden by a YAML file, then by CLI flags.

The resolved config is a :class:`Config` (nested dataclasses). ``resolve(yaml_path,
overrides)`` builds it; ``save(config, folder)`` writes ``config.yaml`` beside a run's outputs.
Overrides use dotted keys (``train.epochs``) and are type-checked against the defaults, so a
typo in a YAML file or a flag is a clear error rather than a silently ignored setting.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vitrina.errors import ConfigError


@dataclass
class DataConfig:
    """Where the images come from and how splits are made."""

    root: str | None = None  # base folder for relative paths in CSV / list sources
    classes_file: str | None = None  # "name id" lines or a CSV with name and id columns
    coarse_map: str | None = None  # "fine coarse" lines or a two-column CSV
    val_fraction: float = 0.15  # carved from train when no val split is given
    # group: near copies (burst shots, frames, re-uploads) stay on one side of the carve; random: photo by photo
    val_carve: Literal["group", "random"] = "group"
    test_fraction: float = 0.15  # carved from train when a test split is asked for and absent
    split_seed: int = 0
    holdout: str | None = None  # a split reserved for reporting only (e.g. "validation")
    exclude: str | None = None  # a file of paths to leave out (one per line or a CSV with path)
    max_pixels: int = 64_000_000  # larger images are refused (decompression bombs)


@dataclass
class ModelConfig:
    """Which network, with which weights and preprocessing overrides."""

    name: str | None = None  # registry name; None picks by mode and data
    weights: str | None = None  # a local weights file (timm:NAME or any registry model)
    pretrained: bool = True
    input_size: int | None = None  # overrides the registry's default input size
    # None: letterbox when most training photos are not square, else the model's own (centre crop)
    resize: Literal["center_crop", "letterbox", "squash"] | None = None
    head: Literal["auto", "linear", "mlp", "mlp_ensemble"] = "auto"  # auto: 3 MLPs for bottleneck training, linear otherwise
    hidden: int = 512  # MLP head width
    dropout: float = 0.2
    # Stochastic depth of the residual blocks that train: this rate x block index / number of blocks
    # (timm's rule; vitrina.models.network.set_drop_path); 0 = off.
    drop_path: float = 0.0


@dataclass
class AugmentConfig:
    """Training-time augmentation (applied to training images only)."""

    enabled: bool = True
    hflip: float = 0.5
    # None: the recommended value for the data (vitrina.training.plan.RECOMMENDED_AUGMENT): for
    # photos 10 degrees, 0.08, 5 degrees, 0.15 and 0.2; none of them for small grayscale images
    # (Fashion-MNIST-like), where they cost accuracy.
    rotation: float | None = None  # degrees
    shift: float | None = None  # fraction of the size
    shear: float | None = None  # degrees
    zoom: float | None = None  # scale range 1 +/- zoom
    color_jitter: float | None = None
    blur: float = 0.0  # probability
    erasing: float = 0.0  # probability
    randaugment: int = 0  # number of RandAugment ops (0 = off)
    randaugment_magnitude: int = 9
    trivialaugment: bool = False  # TrivialAugment (one random op of random strength per image)
    # Mixup and CutMix (fine-tuning and scratch training): the Beta distribution's alpha, 0 = off.
    # With both on, each batch takes one of them at even odds.
    mixup: float = 0.0
    cutmix: float = 0.0


@dataclass
class TrainConfig:
    """The optimisation loop. ``None`` means "the recommended value for the mode"."""

    mode: Literal["auto", "bottleneck", "finetune", "scratch"] = "auto"
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float | None = None  # head learning rate (scratch: the whole network)
    body_lr_scale: float = 0.1  # fine-tuning: body learning rate = lr * body_lr_scale
    weight_decay: float | None = None
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = 1.0
    label_smoothing: float | None = None  # None: 0.1 for photos, 0 for small grayscale images
    patience: int = 5  # early stopping on validation loss; 0 disables
    # Wall time for `vitrina train` (vitrina.training.budget): the epochs are planned to fit, and
    # training stops cleanly at the budget keeping the best epoch. None: no budget.
    budget_minutes: float | None = 30.0
    # The plan times the exported model (int8) before training and prints its expected images/s:
    # 5-20 s the first time for a backbone, about a second once its graph is cached.
    expected_speed: bool = True
    balance: Literal["none", "weights", "sampler"] = "none"
    # Fine-tuning trains the last N backbone blocks (-1 = all). None: the recommended number
    # (vitrina.training.plan.RECOMMENDED_UNFREEZE_BLOCKS). The early high-resolution blocks cost
    # most of the backward pass on a CPU and change least from their ImageNet weights.
    unfreeze_blocks: int | None = None
    freeze_bn: Literal["auto", "yes", "no"] = "auto"  # auto: BatchNorm statistics frozen when fine-tuning
    warm_start_head: bool = True  # fine-tuning: fit the head on cached features first
    feature_copies: int | None = None  # bottleneck: augmented feature copies per training image
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Fine-tuning and scratch training validate and keep an exponential moving average of the
    # trained weights (0 = off). Screened at 8 epochs on one split of each dataset
    # (bench/bench_recipe.py, docs/benchmarks.md#regularisation): it helped on average and hurt none.
    ema_decay: float = 0.998
    # Fine-tuning: each trained block's learning rate is this times the next block's (1 = all alike).
    layer_decay: float = 1.0
    # Frozen-backbone features: auto = ONNX Runtime on a CPU in fp32 (about 3x eager PyTorch), torch otherwise.
    feature_runtime: Literal["auto", "onnx", "torch"] = "auto"
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"
    workers: int = -1  # decoding processes; -1 = automatic
    seed: int = 0
    cache_dir: str | None = None  # decoded-image and feature caches; None = ~/.cache/vitrina
    # The "unknown photo" score stored with the model (see vitrina.models.unknown); k: its neighbours.
    unknown_score: Literal["knn", "knn_energy", "mahalanobis", "energy", "msp"] = "knn"
    unknown_k: int | None = None  # None: 1 for a trained backbone's knn score, else the score's own default
    # Mix the head's probabilities with a vote of the nearest training photos when that is more
    # accurate on the validation split (vitrina.models.neighbours; freiburg split 0: +3.4 points).
    neighbour_vote: bool = True
    # Once the vote and every threshold are chosen on the validation photos, add those photos to
    # the vote's bank, so it votes with every photo given (their figures are from before).
    vote_includes_validation: bool = True
    # Once validation has chosen the epochs, the calibration, the vote and the mirror average,
    # train the network again on the training and validation photos together and carry those
    # choices over (vitrina.training.refit); only where the measured epochs leave room for it in
    # the time budget. Fine-tuning and scratch training. None: the recommended, on for small
    # grayscale images trained from scratch (where it was measured to gain), off otherwise.
    refit: bool | None = None
    # 0: the refit trains a new network from the same start for all the first one's epochs. Above
    # 0: the network validation chose learns on from its own weights, on every photo, for that last
    # share of the first one's epochs on their learning rates (0.5: the last half, about half the
    # cost). None: the recommended, 0.5 for small grayscale images from scratch, else 0.
    refit_tail: float | None = None
    # Offer averaging each photo's probabilities with its mirror image's; kept only when it gets
    # more validation photos right (prediction then costs two passes).
    flip_average: bool = True


@dataclass
class ExportConfig:
    """How `vitrina export` chooses the precision it writes."""

    # int8 is written as the model when it loses at most this many points of validation accuracy
    # against fp32 (the mirror average and the vote included); the other precision goes beside it.
    int8_tolerance: float = 0.5


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's declared type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


INF = float("inf")
# The range of every numeric setting: (lowest, highest) allowed, both included.
RANGES: dict[str, tuple[float, float]] = {
    "data.val_fraction": (0.01, 0.9), "data.test_fraction": (0.01, 0.9), "data.split_seed": (0, 2**32 - 1),
    "data.max_pixels": (1, 10**10),
    "model.input_size": (8, 2048), "model.hidden": (1, 65_536), "model.dropout": (0.0, 0.99), "model.drop_path": (0.0, 0.9),
    "augment.hflip": (0.0, 1.0), "augment.rotation": (0.0, 180.0), "augment.shift": (0.0, 0.5),
    "augment.shear": (0.0, 45.0), "augment.zoom": (0.0, 0.9), "augment.color_jitter": (0.0, 1.0), "augment.blur": (0.0, 1.0),
    "augment.erasing": (0.0, 1.0), "augment.randaugment": (0, 16), "augment.randaugment_magnitude": (0, 30),
    "augment.mixup": (0.0, 100.0), "augment.cutmix": (0.0, 100.0), "train.ema_decay": (0.0, 0.99999), "train.layer_decay": (0.01, 1.0),
    "train.epochs": (1, 10_000), "train.batch_size": (1, 65_536), "train.lr": (1e-9, 10.0), "train.body_lr_scale": (0.0, 10.0),
    "train.weight_decay": (0.0, 10.0), "train.warmup_epochs": (0.0, 1000.0), "train.label_smoothing": (0.0, 0.99),
    "train.patience": (0, 10_000), "train.budget_minutes": (0.01, 10**6), "train.unfreeze_blocks": (-1, 1000), "train.feature_copies": (0, 100),
    "train.workers": (-1, 256), "train.seed": (0, 2**32 - 1), "train.unknown_k": (1, 10_000), "train.refit_tail": (0.0, 1.0),
    "export.int8_tolerance": (0.0, 100.0),
}


def check_range(key: str, value: Any, origin: str = "setting") -> None:
    """ConfigError unless a numeric setting lies within :data:`RANGES` (None means "automatic" and passes)."""
    if key not in RANGES or value is None or isinstance(value, bool):
        return
    low, high = RANGES[key]
    if not low <= value <= high:
        span = f"at least {low:g}" if high == INF else f"between {low:g} and {high:g}"
        raise ConfigError(f"{origin}: {key} must be {span}, got {value:g}")


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def apply(config: Config, overrides: dict[str, Any], origin: str = "override") -> Config:
    """Apply a nested or dotted-key dict onto ``config`` in place, type-checked."""
    flat: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and (not prefix or "." not in prefix):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    flatten("", overrides)
    sections = {f.name for f in dataclasses.fields(config)}
    for key, value in flat.items():
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in sections:
            raise ConfigError(
                f"{origin}: unknown setting {key!r} (settings look like 'train.epochs'; "
                f"sections: {', '.join(sorted(sections))})"
            )
        section = getattr(config, parts[0])
        hints = _field_types(section)
        if parts[1] not in hints:
            raise ConfigError(
                f"{origin}: unknown setting {key!r}; {parts[0]} has: {', '.join(hints)}"
            )
        coerced = _coerce(value, hints[parts[1]], f"{origin}: {key}")
        check_range(key, coerced, origin)
        setattr(section, parts[1], coerced)
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def resolve(
    yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, saved: str | Path | None = None
) -> Config:
    """Defaults, then the YAML file, then the overrides (CLI flags): the one config flow. ``saved``
    (a run's config.yaml, for a resumed run) takes the place of the defaults."""
    config = Config() if saved is None else apply(Config(), load_yaml(saved), origin=str(saved))
    if yaml_path:
        apply(config, load_yaml(yaml_path), origin=str(yaml_path))
    if overrides:
        apply(config, {k: v for k, v in overrides.items() if v is not None}, origin="flag")
    return config


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a config saved by :func:`save` (unknown keys are an error)."""
    return apply(Config(), data, origin="saved config")


def save(config: Config, folder: str | Path, name: str = "config.yaml") -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return path
