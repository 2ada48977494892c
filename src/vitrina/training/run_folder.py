"""What a training run writes into (and reads back from) its folder: the split lists, the history,
the skipped files, the TensorBoard writer, the model's description and the resume point."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.samples import Dataset
from vitrina.description import ModelDescription
from vitrina.errors import ConfigError, VitrinaError
from vitrina.models.checkpoint import save_model
from vitrina.training.plan import Plan

TRAIN_STATE = "train_state.pt"  # optimizer, schedule, history and counters of the last finished epoch
LAST_STEM = "last"  # last.safetensors / last.json: the weights after the last finished epoch


def config_digest(config: Config) -> str:
    """A short digest of the settings that change what training computes (not where or how fast)."""
    relevant = config.to_dict()
    relevant["train"] = {k: v for k, v in relevant["train"].items() if k not in ("device", "workers", "cache_dir")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def model_meta(plan: Plan, dataset: Dataset, config: Config, **extra: Any) -> ModelDescription:
    """The description saved with the weights: architecture, classes, preprocessing, then ``extra`` fields."""
    return ModelDescription(
        model=plan.model, mode=plan.mode, classes=tuple(dataset.classes), coarse_of=dict(dataset.coarse_of),
        preprocess=plan.preprocess, head=plan.head, hidden=config.model.hidden, dropout=config.model.dropout,
        trained_on=dataset.source, **extra,
    )


def write_splits(run_dir: Path, dataset: Dataset) -> None:
    """``splits.json``: the source, the classes, how validation was carved, and every split's files."""
    write_json(
        run_dir / "splits.json",
        {
            "source": dataset.source,
            "classes": dataset.classes,
            "carved": {k: {kk: vv for kk, vv in v.items() if kk != "paths"} for k, v in dataset.carved.items() if isinstance(v, dict)},
            "splits": {name: [s.path for s in samples] for name, samples in dataset.splits.items()},
        },
    )


def write_history(run_dir: Path, history: list[dict[str, float]], name: str = "history") -> None:
    """``NAME.json`` and ``NAME.csv``: one row per epoch (nothing for no epochs)."""
    if not history:
        return
    write_json(run_dir / f"{name}.json", history)
    keys = list(dict.fromkeys(k for row in history for k in row))
    with open(run_dir / f"{name}.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def write_skipped(run_dir: Path, skipped: list[dict]) -> None:
    """``skipped.csv``: the unreadable files (split, path, reason); nothing when every file was read."""
    if not skipped:
        return
    with open(run_dir / "skipped.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["split", "path", "reason"])
        w.writeheader()
        w.writerows(skipped)


def open_tensorboard(run_dir: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``run_dir/tensorboard``, or None where tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; an unusual install may lack it
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def save_resume_point(run_dir: Path, model: nn.Module, description: ModelDescription, state: dict[str, Any]) -> None:
    """The last epoch's weights (``last.safetensors``) and ``train_state.pt``, written atomically."""
    save_model(run_dir, model, description, stem=LAST_STEM)
    tmp = run_dir / f"{TRAIN_STATE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, run_dir / TRAIN_STATE)


def load_resume_state(run_dir: Path, digest: str) -> dict[str, Any]:
    """The interrupted run's ``train_state.pt``; refused when missing or saved under other settings."""
    state_path = run_dir / TRAIN_STATE
    if not state_path.is_file():
        raise VitrinaError(f"{run_dir}: nothing to resume (no train_state.pt); start a new run instead")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    if state.get("config_digest") != digest:
        raise ConfigError(
            f"{run_dir}: --resume with a different config than the interrupted run; "
            "resume with the same settings (see its config.yaml) or start a new run"
        )
    return state


def load_last_weights(run_dir: Path, model: nn.Module) -> None:
    """Load the interrupted run's last weights (``last.safetensors``) into ``model``."""
    model.load_state_dict(load_file(str(run_dir / f"{LAST_STEM}.safetensors")))
