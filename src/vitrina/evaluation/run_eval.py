"""Evaluating a saved model on one split of a dataset: metrics, charts, predictions, mistakes.

:func:`evaluate_run` rebuilds the model of a run folder (or of a ``model.safetensors`` /
``model.json`` file), reads the data with the run's data settings (unless overridden), decodes
it through the shared decoded-image cache and writes one evaluation folder: ``metrics.json``,
``predictions.csv``, confusion matrices, a reliability diagram, ``mistakes.html`` and
``report.html``. The data's class names are mapped onto the model's classes by name.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from vitrina import config as config_lib
from vitrina.artifact import prepare_out_dir, write_json
from vitrina.config import Config
from vitrina.data.cache import DecodedImages, decode_samples, default_cache_dir
from vitrina.data.samples import Dataset, Sample
from vitrina.data.sources import load_dataset
from vitrina.data.splits import held_split_name, recorded_val, restore_carve
from vitrina.description import ModelDescription
from vitrina.errors import ConfigError, DataError, ModelError
from vitrina.evaluation.evaluate import decision_metrics, evaluate_images, predict_probabilities, unknown_scores, write_predictions
from vitrina.evaluation.metrics import classification_metrics
from vitrina.evaluation.report import MAX_MISTAKES, Mistake, write_eval_report, write_mistakes_gallery
from vitrina.inference.decide import DecisionRule
from vitrina.models.checkpoint import META_FILE, WEIGHTS_FILE, load_model
from vitrina.models.unknown import load_unknown
from vitrina.models.runtime import resolve_device, resolve_precision
from vitrina.plots import confusion_matrix_chart, reliability_diagram
from vitrina.preprocess import Preprocess

# The figures of a flip-averaged (test-time augmentation) evaluation shown beside the plain ones.
TTA_KEYS = ("accuracy", "top3_accuracy", "top5_accuracy", "macro_f1", "weighted_f1", "ece")


@dataclass
class Evaluation:
    out_dir: Path
    metrics: dict[str, Any]


def model_location(path: str | os.PathLike) -> tuple[Path, str]:
    """The folder and file stem of a saved model: a run folder, ``*.safetensors`` or ``*.json``."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model not found: {path}")
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise ModelError(f"{path}: not a run folder (no {META_FILE}); pass a folder written by `vitrina train`")
        return path, Path(META_FILE).stem
    if path.suffix.lower() not in (".safetensors", ".json"):
        raise ModelError(
            f"{path}: a {path.suffix or 'suffix-less'} file is not a model vitrina evaluates; "
            f"pass a run folder, its {WEIGHTS_FILE} or its {META_FILE}"
        )
    return path.parent, path.stem


def run_config(folder: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """The run's saved config (defaults when the model has none beside it), then ``overrides``."""
    saved = folder / "config.yaml"
    return config_lib.resolve(saved if saved.is_file() else None, dict(overrides or {}))


def default_split(dataset: Dataset, holdout: str | None) -> str:
    """The split to evaluate when none is named: test, else the holdout, else validation, else all."""
    for name in ("test", held_split_name(holdout), "val"):
        if name and name in dataset.splits:
            return name
    return next(iter(dataset.splits))


def is_training_data(data: str | os.PathLike, trained_on: str | None) -> bool:
    """Whether ``data`` names the dataset the model was trained on (then its carved splits are reproduced)."""
    return bool(trained_on) and Path(data).resolve() == Path(trained_on).resolve()


def refuse_refit_validation(path: str | os.PathLike, description: ModelDescription, own_data: bool, split: str, doing: str) -> None:
    """Refuse ``doing`` (evaluating, comparing) a model refit on its validation photos (``train.refit``) on them."""
    if own_data and split == "val" and description.refit is not None:
        raise ConfigError(f"{path}: this model was refit on its validation photos too (train.refit), so {doing} on them "
                          "would favour it; use a split it did not train on (--split test, or another dataset)")


def load_split(
    data: str | os.PathLike, config: Config, split: str | None, *, carve: bool = False, run_dir: Path | None = None,
) -> tuple[Dataset, str]:
    """The dataset and the split to evaluate.

    The validation split is carved from train as in training when ``split`` is "val" or "train",
    or when ``carve`` (the training data itself): the files ``run_dir/splits.json`` lists where
    the run carved by near-copy group, else the same random carve. Other data is evaluated whole.
    """
    carve = carve or split in ("val", "train")
    recorded = recorded_val(run_dir) if carve and run_dir is not None else None
    dataset = load_dataset(data, config.data, carve_val=carve and recorded is None)
    if recorded is not None and "val" not in dataset.splits:
        dataset = replace(dataset, splits=restore_carve(dataset.splits, recorded))
    split = split or default_split(dataset, config.data.holdout)
    dataset.split(split)  # a clear error naming the splits there are
    return dataset, split


def label_indices(samples: Sequence[Sample], model_classes: Sequence[str]) -> np.ndarray:
    """Each sample's class index in the model's output; data classes the model lacks are an error."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = sorted({s.label for s in samples} - index.keys())
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise DataError(
            f"the data has {len(unknown)} class(es) the model does not know: {shown}; "
            f"the model knows: {', '.join(model_classes[:20])}{' ...' if len(model_classes) > 20 else ''}"
        )
    return np.asarray([index[s.label] for s in samples], dtype=np.int64)


def coarse_accuracy(samples: Sequence[Sample], predicted: Sequence[str], coarse_of: Mapping[str, str]) -> float | None:
    """Share of images whose predicted class has the true coarse class; None without coarse labels."""
    truth = [s.coarse or coarse_of.get(s.label) for s in samples]
    pairs = [(t, coarse_of.get(p)) for t, p in zip(truth, predicted) if t is not None]
    if not pairs:
        return None
    return float(np.mean([t == p for t, p in pairs]))


def flipped_probabilities(
    model: torch.nn.Module, images: np.ndarray, preprocess: Preprocess, device: torch.device, precision: str, chunk: int = 512
) -> np.ndarray:
    """Probabilities for the horizontally mirrored images (read in chunks from the cache)."""
    parts = [
        predict_probabilities(model, np.ascontiguousarray(np.asarray(images[i : i + chunk])[:, :, ::-1]), preprocess, device, precision)
        for i in range(0, len(images), chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def default_out_dir(folder: Path, split: str) -> Path:
    """``FOLDER/eval-SPLIT``, or ``eval-SPLIT-2``, ``-3``... when taken: nothing is overwritten."""
    number = 1
    while True:
        path = folder / (f"eval-{split}" if number == 1 else f"eval-{split}-{number}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def _mistakes(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], samples: Sequence[Sample], images: np.ndarray) -> list[Mistake]:
    """The most confident wrong predictions, each with the image as the model saw it."""
    predicted = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:MAX_MISTAKES]
    return [
        Mistake(
            path=samples[i].path,
            label=classes[labels[i]],
            predicted=classes[predicted[i]],
            confidence=float(confidence[i]),
            true_probability=float(probs[i, labels[i]]),
            image=Image.fromarray(np.asarray(images[i]).squeeze(-1) if images.shape[-1] == 1 else np.asarray(images[i])),
        )
        for i in chosen
    ]


def _write_skipped(path: Path, skipped: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "reason"])
        writer.writeheader()
        writer.writerows(skipped)


def _write_charts(out_dir: Path, metrics: dict[str, Any], classes: Sequence[str], title: str) -> list[tuple[str, Path]]:
    matrix = metrics["confusion_matrix"]
    charts = [
        ("confusion matrix (counts)", confusion_matrix_chart(matrix, classes, out_dir / "confusion_matrix.png", title=f"Confusion matrix: {title}")),
        ("confusion matrix (row-normalised)", confusion_matrix_chart(
            matrix, classes, out_dir / "confusion_matrix_normalized.png", normalize=True, title=f"Confusion matrix, each row sums to 1: {title}")),
    ]
    if "calibration" in metrics:
        charts.append(("reliability diagram", reliability_diagram(metrics["calibration"], out_dir / "reliability.png", ece=metrics["ece"], title=f"Reliability: {title}")))
    return charts


def _write_evaluation(
    out_dir: Path, metrics: dict[str, Any], probs: np.ndarray, labels: np.ndarray, samples: Sequence[Sample], decoded: DecodedImages,
    rule: DecisionRule, scores: np.ndarray | None,
) -> None:
    """metrics.json, predictions.csv, skipped.csv, charts, mistakes.html and report.html."""
    classes = metrics["classes"]
    write_json(out_dir / "metrics.json", metrics)
    write_predictions(out_dir / "predictions.csv", [s.path for s in samples], [s.label for s in samples], probs, classes, rule, scores)
    if decoded.skipped:
        _write_skipped(out_dir / "skipped.csv", decoded.skipped)
    title = f"{metrics['model']} on {metrics['split']}"
    charts = _write_charts(out_dir, metrics, classes, title)
    mistakes = _mistakes(probs, labels, classes, samples, decoded.images)
    write_mistakes_gallery(out_dir / "mistakes.html", mistakes, title=f"Most confident mistakes: {title}")
    write_eval_report(out_dir / "report.html", metrics, charts, mistakes, title=f"Evaluation: {title}")


def evaluate_run(
    model: str | os.PathLike,
    data: str | os.PathLike,
    *,
    split: str | None = None,
    out: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    tta: bool = False,
    progress: bool = True,
) -> Evaluation:
    """Evaluate a saved model on one split of ``data`` and write an evaluation folder.

    Without ``split``: test, else the holdout, else validation (carved as in training when
    ``data`` is the training data), else all of ``data``. ``overrides`` are dotted config keys applied over the run's saved config (e.g.
    ``data.coarse_map``, ``train.device``). ``tta`` also reports the mean of the plain and
    the horizontally mirrored image's probabilities, separately under ``tta``. On the run's own
    validation photos a neighbour vote that holds them votes without them, as validation chose it;
    a model refit on them (``train.refit``) is refused there.
    """
    folder, stem = model_location(model)
    net, meta = load_model(folder, stem=stem)
    config = run_config(folder, overrides)
    own_data = is_training_data(data, meta.trained_on)
    dataset, split = load_split(data, config, split, carve=own_data, run_dir=folder)
    refuse_refit_validation(folder, meta, own_data, split, "evaluating (its figures from before the refit are in metrics_val.json)")
    samples = dataset.split(split)
    classes = list(meta.classes)
    label_indices(samples, classes)  # refuse unknown classes before decoding or writing anything
    out_dir = prepare_out_dir(out, folder, f"eval-{split}") if out is not None else default_out_dir(folder, split)
    preprocess = meta.preprocess
    device = resolve_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    workers = config.train.workers if config.train.workers >= 0 else min(4, os.cpu_count() or 1)
    cache_dir = default_cache_dir(config.train.cache_dir)
    decoded = decode_samples(
        samples, preprocess, cache_dir, max_pixels=config.data.max_pixels,
        workers=workers, progress=progress, desc=f"decoding {split}",
    )
    kept = [samples[i] for i in decoded.index]
    if not kept:
        raise DataError(f"no readable images in the {split} split of {data}")
    labels = label_indices(kept, classes)
    held = meta.vote_validation_photos if own_data and split == "val" and net.vote is not None else 0
    if held:
        net.vote = net.vote.without_last(held)  # each would find itself: the vote as validation chose it
    net.to(device)
    metrics, probs = evaluate_images(
        net, decoded.images, labels, classes, preprocess, device, precision, split=split,
        n_skipped=len(decoded.skipped), cache_dir=cache_dir, mirror=meta.mirror,
    )
    coarse = coarse_accuracy(kept, [classes[i] for i in probs.argmax(axis=1)], {**meta.coarse_of, **dataset.coarse_of})
    if coarse is not None:
        metrics["coarse_accuracy"] = coarse
    scorer = load_unknown(folder, meta.unknown)
    scores = unknown_scores(net, scorer, decoded.images, preprocess, device, precision, cache_dir)
    rule = DecisionRule.for_model(meta, detects_unknown=scores is not None)
    metrics["decisions"] = decision_metrics(rule, probs, scores, labels)
    if tta:
        mirrored = flipped_probabilities(net, decoded.images, preprocess, device, precision)
        tta_metrics = classification_metrics(labels, (probs + mirrored) / 2, classes, split=split)
        metrics["tta"] = {"method": "mean of the image and its horizontal mirror", **{k: tta_metrics[k] for k in TTA_KEYS if k in tta_metrics}}
    metrics.update(model=meta.model, mode=meta.mode, model_path=str(folder / f"{stem}.safetensors"), data=str(data), classes=classes)
    if held:
        metrics["note"] = f"the {held} validation photos the neighbour vote holds were left out of its bank for this evaluation"
    _write_evaluation(out_dir, metrics, probs, labels, kept, decoded, rule, scores)
    return Evaluation(out_dir, metrics)
