"""What a training run writes into (and reads back from) its folder: the split lists, the history,
the skipped files, the TensorBoard writer, the model's description and the resume point."""
from __future__ import annotations

import csv
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.samples import Dataset
from vitrina.description import ModelDescription
from vitrina.errors import ConfigError, ModelError, VitrinaError
from vitrina.models.checkpoint import save_model, state_dict_for_saving
from vitrina.training.plan import Plan

TRAIN_STATE = "train_state.pt"  # weights, optimizer, schedule, history and counters of the last finished epoch
LAST_STEM = "last"  # last.safetensors / last.json: the weights after the last finished epoch
RESUME_WEIGHTS = "model"  # the key of those weights in train_state.pt


NOT_COMPUTED = ("train.device", "train.workers", "train.cache_dir", "train.expected_speed")  # where or how fast, not what training computes


def relevant_settings(config: Config | dict[str, Any]) -> dict[str, Any]:
    """The settings that change what training computes, as flat ``section.key`` pairs."""
    data = config.to_dict() if isinstance(config, Config) else config
    return {f"{section}.{key}": value for section, values in data.items() if isinstance(values, dict)
            for key, value in values.items() if f"{section}.{key}" not in NOT_COMPUTED}


def config_digest(config: Config, keys: Collection[str] | None = None) -> str:
    """A short digest of the settings that change what training computes (not where or how fast);
    ``keys`` (``section.key``) limits it to the settings a run's config.yaml held, so a run
    started before a setting existed digests as it did then."""
    relevant = {section: {k: v for k, v in values.items()
                          if f"{section}.{k}" not in NOT_COMPUTED and (keys is None or f"{section}.{k}" in keys)}
                for section, values in config.to_dict().items()}
    relevant = {section: values for section, values in relevant.items() if values}  # a section added since
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def run_config_digest(run_dir: Path, config: Config) -> str:
    """:func:`config_digest` over the settings the run's config.yaml holds (all without one): what
    its resume point is stamped with and checked against."""
    return config_digest(config, saved_settings(run_dir))


def saved_settings(run_dir: Path) -> dict[str, Any] | None:
    """The run's config.yaml as flat ``section.key`` pairs (None without a readable one)."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return relevant_settings(data) if isinstance(data, dict) else None


def data_digest(dataset: Dataset) -> str:
    """A digest of every split's files and labels: a resumed run must train on the same photos."""
    digest = hashlib.sha256()
    for name in sorted(dataset.splits):
        for sample in dataset.splits[name]:
            digest.update(f"{name}\t{sample.path}\t{sample.label}\n".encode())
    return digest.hexdigest()[:16]


def model_meta(plan: Plan, dataset: Dataset, config: Config, learned_from: tuple[str, ...] = ("train",), **extra: Any) -> ModelDescription:
    """The description saved with the weights: architecture, classes, preprocessing, then ``extra``
    fields; ``train_counts`` counts the photos of the splits the weights ``learned_from``."""
    counts = Counter(sample.label for name in learned_from for sample in dataset.splits.get(name, []))
    return ModelDescription(
        model=plan.model, mode=plan.mode, classes=tuple(dataset.classes), coarse_of=dict(dataset.coarse_of),
        train_counts={name: counts.get(name, 0) for name in dataset.classes},
        preprocess=plan.preprocess, head=plan.head, hidden=config.model.hidden, dropout=config.model.dropout,
        trained_on=dataset.source, **extra,
    )


def _groups(dataset: Dataset) -> dict:
    """``{"groups": {split: [near-copy group of each file]}}`` for the splits a group carve made."""
    group_of = dataset.carved.get("val", {}).get("group_of")
    if not group_of:
        return {}
    return {"groups": {name: [group_of.get(s.path) for s in dataset.splits[name]] for name in ("train", "val") if name in dataset.splits}}


def write_splits(run_dir: Path, dataset: Dataset) -> None:
    """``splits.json``: the source, the classes, how validation was carved, and every split's files."""
    write_json(
        run_dir / "splits.json",
        {
            "source": dataset.source,
            "classes": dataset.classes,
            "carved": {k: {kk: vv for kk, vv in v.items() if kk not in ("paths", "group_of")} for k, v in dataset.carved.items() if isinstance(v, dict)},
            "splits": {name: [s.path for s in samples] for name, samples in dataset.splits.items()},
            **_groups(dataset),
            "labels": {name: [s.label for s in samples] for name, samples in dataset.splits.items()},
            "data_digest": data_digest(dataset),
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


def read_history(run_dir: Path, name: str = "history") -> list[dict[str, float]]:
    """The rows :func:`write_history` wrote (none where it wrote nothing)."""
    path = run_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else []


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
    """The last epoch's weights (``last.safetensors``) and ``train_state.pt``.

    ``train_state.pt`` holds the weights too and is replaced in one step, so a run killed while
    these files are written resumes from one epoch's weights and the same epoch's optimizer."""
    save_model(run_dir, model, description, stem=LAST_STEM)
    tmp = run_dir / f"{TRAIN_STATE}.tmp"
    torch.save({**state, RESUME_WEIGHTS: state_dict_for_saving(model)}, tmp)
    os.replace(tmp, run_dir / TRAIN_STATE)


def load_resume_state(run_dir: Path, config: Config, dataset: Dataset, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The interrupted run's ``train_state.pt``; refused (naming what differs) when missing, damaged,
    or saved for other settings or other data."""
    state_path = run_dir / TRAIN_STATE
    if not state_path.is_file():
        raise VitrinaError(f"{run_dir}: nothing to resume (no {TRAIN_STATE}); start a new run instead")
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated files, pickled code and other damage raise many types
        kind = "it holds objects other than tensors and numbers" if "weights_only" in str(exc) else "it is damaged or truncated"
        raise ModelError(f"{state_path}: cannot resume from this file: {kind}; start a new run instead") from None
    if not isinstance(state, dict):
        raise ModelError(f"{state_path}: not a vitrina training state; start a new run instead")
    saved, now = saved_settings(run_dir), relevant_settings(config)
    if state.get("config_digest") != config_digest(config, saved):
        raise ConfigError(f"{run_dir}: --resume with other settings than the interrupted run ({_settings_changes(saved, now)}); "
                          "resume without settings that change what it computes (its own are in its config.yaml), or start a new run")
    _check_same_data(run_dir, dataset)
    added = {key: value for key, value in now.items() if saved is not None and key not in saved}  # added to vitrina since
    if added:
        log("resuming with settings added since this run started: " + ", ".join(f"{key}={value!r}" for key, value in added.items()))
    return state


def _settings_changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> str:
    if saved is None:
        return "its config.yaml is gone or unreadable"
    changed = [f"{key}: {saved[key]!r} -> {now.get(key)!r}" for key in sorted(saved) if saved[key] != now.get(key)]
    return "; ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "") if changed else "the settings file was changed"


def _check_same_data(run_dir: Path, dataset: Dataset) -> None:
    """ConfigError naming the first differences when ``dataset`` is not the data the run started on."""
    path = run_dir / "splits.json"
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if saved.get("data_digest") in (None, data_digest(dataset)):
        return
    differences = []
    for name in sorted(set(saved.get("splits", {})) | set(dataset.splits)):
        before = dict(zip(saved.get("splits", {}).get(name, []), saved.get("labels", {}).get(name, [])))
        after = {s.path: s.label for s in dataset.splits.get(name, [])}
        added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
        relabelled = sorted(p for p in after.keys() & before.keys() if after[p] != before[p])
        for what, paths in (("new", added), ("missing", removed), ("relabelled", relabelled)):
            if paths:
                differences.append(f"{name}: {len(paths)} {what} (first: {paths[0]})")
    raise ConfigError(f"{run_dir}: --resume with other data than the interrupted run ({'; '.join(differences) or 'the file lists differ'}); "
                      "resume with the same data or start a new run")


def load_last_weights(run_dir: Path, model: nn.Module, resume_state: dict[str, Any]) -> None:
    """Load the interrupted run's weights of its last finished epoch into ``model``: those in
    ``train_state.pt``, or ``last.safetensors`` for a state saved without them."""
    inside = RESUME_WEIGHTS in resume_state
    path = run_dir / (TRAIN_STATE if inside else f"{LAST_STEM}.safetensors")
    try:
        model.load_state_dict(resume_state[RESUME_WEIGHTS] if inside else load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - safetensors and torch raise several types for damaged files
        raise ModelError(f"{path}: cannot resume from these weights ({str(exc).splitlines()[0][:200]}); start a new run instead") from None
