"""Promote a retrained model over the served one only when it is not worse, on the same photos.

Both models predict every photo of one split of a dataset (each with its own preprocessing). The
paired comparison prints accuracy, macro-F1 and per-class changes, and McNemar's exact test on
the photos the two models disagree about: the new model is refused when it is significantly
worse (one-sided, ``alpha``), when its accuracy drops by more than ``max_drop`` points, or when
its class list differs (unless allowed). A promoted model replaces SERVED atomically, the old
one kept as ``SERVED.prev`` (a rollback is one move), so a server watching SERVED hot-reloads
it; every decision is appended to ``promotions.jsonl`` beside SERVED.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from math import comb
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrina.data.images import open_sample
from vitrina.data.samples import Sample
from vitrina.errors import ConfigError, ImageError, ModelError
from vitrina.evaluation.metrics import confusion_matrix
from vitrina.evaluation.run_eval import is_training_data, load_split, refuse_refit_validation, run_config
from vitrina.export.loading import load_predictor
from vitrina.inference.predictor import OnnxBackend, Predictor

CHUNK = 128  # photos decoded and predicted at a time
LOG_FILE = "promotions.jsonl"


@dataclass
class Comparison:
    """Two models on the same photos: the served (old) one and the new one."""

    split: str
    photos: int
    accuracy_old: float
    accuracy_new: float
    macro_f1_old: float
    macro_f1_new: float
    only_old_right: int  # photos the old model gets right and the new one wrong
    only_new_right: int
    p_worse: float  # one-sided exact McNemar: the chance of this many losses if the models were equally good
    per_class: list[dict[str, Any]] = field(default_factory=list)
    added_classes: list[str] = field(default_factory=list)
    removed_classes: list[str] = field(default_factory=list)
    unreadable: int = 0


@dataclass
class Promotion:
    comparison: Comparison
    promoted: bool
    forced: bool
    reasons: list[str]  # why the new model was refused (empty when it passed)
    served: Path
    previous: Path | None  # where the replaced model now is


def mcnemar_worse(only_old_right: int, only_new_right: int) -> float:
    """P(at least ``only_old_right`` of the discordant photos favour the old model) under no difference: exact binomial."""
    n = only_old_right + only_new_right
    if n == 0:
        return 1.0
    return sum(comb(n, k) for k in range(only_old_right, n + 1)) / 2**n


def _predicted_labels(predictor: Predictor, samples: list[Sample]) -> tuple[list[str | None], set[int]]:
    """Each readable sample's top-1 class name (None where unreadable) and the indices of unreadable ones."""
    labels: list[str | None] = []
    unreadable: set[int] = set()
    mode, draft = predictor.preprocess.mode, predictor.preprocess.draft_size()
    for start in range(0, len(samples), CHUNK):
        images, kept = [], []
        for i, sample in enumerate(samples[start : start + CHUNK], start=start):
            try:
                images.append(open_sample(sample, mode, draft_size=draft))
                kept.append(i)
            except (ImageError, OSError):
                unreadable.add(i)
        chunk = [None] * min(CHUNK, len(samples) - start)
        if images:
            for i, index in zip(kept, predictor.predict_images(images).argmax(axis=1)):
                chunk[i - start] = predictor.classes[int(index)]
        labels.extend(chunk)
    return labels, unreadable


def _macro_f1(truth: list[str], predicted: list[str]) -> float:
    """Mean F1 over the classes the photos belong to (2 TP / (predicted + actual) each)."""
    names = sorted(set(truth) | set(predicted))
    index = {name: i for i, name in enumerate(names)}
    cm = confusion_matrix(np.array([index[t] for t in truth]), np.array([index[p] for p in predicted]), len(names))
    support = cm.sum(axis=1)
    f1 = 2 * np.diag(cm) / np.maximum(1, cm.sum(axis=0) + support)
    return float(f1[support > 0].mean()) if truth else 0.0


def compare(new: Predictor, old: Predictor, samples: list[Sample], split: str) -> Comparison:
    """Both models on ``samples`` (photos either cannot read are left out of both)."""
    new_labels, new_bad = _predicted_labels(new, samples)
    old_labels, old_bad = _predicted_labels(old, samples)
    keep = [i for i in range(len(samples)) if i not in new_bad | old_bad]
    if not keep:
        raise ConfigError(f"no readable photos in the {split} split to compare the models on")
    truth = [samples[i].label for i in keep]
    new_p = [new_labels[i] or "" for i in keep]
    old_p = [old_labels[i] or "" for i in keep]
    new_right = np.array([p == t for p, t in zip(new_p, truth)])
    old_right = np.array([p == t for p, t in zip(old_p, truth)])
    per_class = []
    for name in sorted(set(truth)):
        mask = np.array([t == name for t in truth])
        before, after = float(old_right[mask].mean() * 100), float(new_right[mask].mean() * 100)
        per_class.append({"class": name, "photos": int(mask.sum()), "accuracy_old": before, "accuracy_new": after, "change": after - before})
    only_old, only_new = int((old_right & ~new_right).sum()), int((new_right & ~old_right).sum())
    return Comparison(
        split=split, photos=len(keep), accuracy_old=float(old_right.mean() * 100), accuracy_new=float(new_right.mean() * 100),
        macro_f1_old=_macro_f1(truth, old_p), macro_f1_new=_macro_f1(truth, new_p), only_old_right=only_old,
        only_new_right=only_new, p_worse=mcnemar_worse(only_old, only_new), per_class=per_class,
        added_classes=sorted(set(new.classes) - set(old.classes)), removed_classes=sorted(set(old.classes) - set(new.classes)),
        unreadable=len(samples) - len(keep),
    )


def refusals(comparison: Comparison, alpha: float, max_drop: float | None, allow_class_change: bool) -> list[str]:
    """Why the new model must not replace the served one; empty when it may."""
    reasons = []
    if (comparison.added_classes or comparison.removed_classes) and not allow_class_change:
        reasons.append(f"its classes differ (added: {', '.join(comparison.added_classes) or 'none'}; removed: "
                       f"{', '.join(comparison.removed_classes) or 'none'}); --allow-class-change promotes it anyway")
    if comparison.p_worse < alpha:
        reasons.append(f"it is significantly worse: McNemar one-sided p = {comparison.p_worse:.4g} < {alpha:g} "
                       f"({comparison.only_old_right} photos only the served model gets right, {comparison.only_new_right} only the new one)")
    drop = comparison.accuracy_old - comparison.accuracy_new
    if max_drop is not None and drop > max_drop:
        reasons.append(f"its accuracy drops by {drop:.2f} points, more than --max-drop {max_drop:g}")
    return reasons


def _model_file(predictor: Predictor, new: Path) -> Path:
    backend = predictor.backend
    if isinstance(backend, OnnxBackend) and backend.file is not None:
        return Path(backend.file)
    raise ModelError(f"{new}: no ONNX file to install over an .onnx model (export it: vitrina export {new})")


def install(new: Path, served: Path, new_file: Path | None) -> Path:
    """Put the new model at ``served``, the old one moved to ``SERVED.prev``; returns that path.

    An ``.onnx`` SERVED gets ``new_file`` (the new run's chosen ONNX file, or NEW itself) in one
    atomic rename; a run folder SERVED gets a copy of the NEW run folder, renamed into place just
    after the old one moves aside (two renames; the old one is put back if the second fails).
    """
    previous = served.with_name(served.name + ".prev")
    staged = served.with_name(f".{served.name}.new")
    if served.is_file():
        shutil.copyfile(new_file or new, staged)
        if previous.is_dir():
            shutil.rmtree(previous)
        shutil.copyfile(served, previous)
        os.replace(staged, served)  # atomic: a reader sees the old file or the new one
        return previous
    if not new.is_dir():
        raise ConfigError(f"{served} is a run folder: promote a run folder over it, not {new}")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(new, staged, symlinks=True)
    if previous.is_dir():
        shutil.rmtree(previous)
    elif previous.exists():
        previous.unlink()
    os.rename(served, previous)
    try:
        os.rename(staged, served)  # the server finds the folder missing for an instant at most, and keeps its model
    except OSError:
        os.rename(previous, served)  # put the old model back rather than leave nothing to serve
        raise
    return previous


def promote(new: str | os.PathLike, served: str | os.PathLike, data: str | os.PathLike, *, split: str | None = "test",
            alpha: float = 0.05, max_drop: float | None = None, force: bool = False, allow_class_change: bool = False,
            log: Callable[[str], None] = print) -> Promotion:
    """Compare NEW with SERVED on ``data``'s split; install NEW when it is not worse (or ``force``)."""
    new_path, served_path = Path(new), Path(served)
    for path, what in ((new_path, "new model"), (served_path, "served model")):
        if not path.exists():
            raise ModelError(f"{path}: {what} not found (a run folder or an .onnx file)")
    if not 0 < alpha < 1:
        raise ConfigError(f"--alpha must be between 0 and 1, got {alpha}")
    new_model = load_predictor(new_path, log=log)
    old_model = load_predictor(served_path, log=log)
    folder = new_path if new_path.is_dir() else new_path.parent
    own_data = is_training_data(data, new_model.description.trained_on)
    dataset, split = load_split(data, run_config(folder), split, carve=own_data, run_dir=folder)
    held = new_model.description.vote_validation_photos
    refuse_refit_validation(new_path, new_model.description, own_data, split, "comparing")
    if own_data and split == "val" and held:
        raise ConfigError(f"{new_path}: its neighbour vote holds its {held} validation photos, so comparing "
                          "on them would favour it; compare on a split it did not train on (--split test, or another dataset)")
    comparison = compare(new_model, old_model, dataset.split(split), split)
    reasons = refusals(comparison, alpha, max_drop, allow_class_change)
    promoted = not reasons or force
    previous = None
    if promoted:
        previous = install(new_path, served_path, _model_file(new_model, new_path) if served_path.is_file() else None)
    outcome = Promotion(comparison, promoted, force and bool(reasons), reasons, served_path, previous)
    _append_log(outcome, new_path, data)
    return outcome


def _append_log(outcome: Promotion, new: Path, data: str | os.PathLike) -> None:
    record = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "new": str(new.resolve()), "served": str(outcome.served.resolve()), "data": str(Path(data).resolve()),
        "promoted": outcome.promoted, "forced": outcome.forced, "reasons": outcome.reasons,
        **{k: v for k, v in asdict(outcome.comparison).items() if k != "per_class"},
    }
    with open(outcome.served.parent / LOG_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
