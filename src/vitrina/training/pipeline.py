"""One training run from data to report: load, train, evaluate every held-out split, write the run folder.

:func:`train_run` is what `vitrina train`, `vitrina compare` and the public API's ``train`` run:
it trains (:func:`vitrina.training.trainer.train`), evaluates each split other than ``train``
(from the cached features where training has them, else through the network), writes
``predictions_SPLIT.csv``, ``metrics.json`` (the reported split's figures, the others under
``splits``), ``metrics_SPLIT.json``, the learning curves and ``report.html``.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vitrina.artifact import prepare_out_dir, write_json
from vitrina.config import Config
from vitrina.data.cache import default_cache_dir
from vitrina.data.samples import Dataset
from vitrina.data.splits import held_split_name
from vitrina.errors import VitrinaError
from vitrina.evaluation.evaluate import evaluate_images, evaluate_probabilities, write_predictions
from vitrina.evaluation.metrics import softmax
from vitrina.models.runtime import resolve_device, resolve_precision
from vitrina.plots import learning_curves
from vitrina.training.distributed import broadcast, init_distributed, is_main_process, local_device_name, shutdown
from vitrina.training.budget import BudgetPlan
from vitrina.training.carve import load_training_data
from vitrina.training.plan import check_trainable, make_plan
from vitrina.training.report import write_run_report
from vitrina.training.trainer import TrainResult, train

Log = Callable[[str], None]


@dataclass
class TrainRun:
    """A finished run: its folder, the reported split's metrics, every split's metrics, the history."""

    run_dir: Path
    metrics: dict[str, Any]
    split_metrics: dict[str, dict[str, Any]]
    history: list[dict[str, float]]


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of its largest child, in MB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def report_split(split_names: list[str], holdout: str | None) -> str:
    """The split whose figures a run reports: the holdout, else test, else validation."""
    held = held_split_name(holdout)
    if held and held in split_names:
        return held
    return "test" if "test" in split_names else "val"


def train_run(
    data: str | Path,
    config: Config,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log: Log = print,
) -> TrainRun:
    """Train a classifier on ``data`` and write one run folder (config, history, curves, model, metrics, report)."""
    started = time.perf_counter()
    init_distributed(config.train.device)
    # One process groups near copies and carves; the others take its dataset (one carve for all).
    resume_from = Path(out) if resume and out is not None else None
    dataset = broadcast(load_training_data(data, config, progress=progress, log=log, resume_from=resume_from)
                        if is_main_process() else None)
    if "excluded" in dataset.carved:
        log(f"left out {dataset.carved['excluded']['count']} files listed in {dataset.carved['excluded']['file']}")
    check_trainable(dataset)  # refuse bad data and unknown models before any folder is made
    make_plan(dataset, config)
    if resume:
        if out is None or not Path(out).is_dir():
            raise VitrinaError("--resume needs --out pointing at the interrupted run folder")
        run_dir = Path(out)
    else:
        run_dir = broadcast(prepare_out_dir(out, runs_dir, "train") if is_main_process() else None)
    try:
        result = train(dataset, config, run_dir, resume=resume, progress=progress, log=log, started_at=started)
    except VitrinaError:
        if not resume and is_main_process() and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # refused before anything was written (a budget too small, say): no empty run left
        raise
    if not is_main_process():
        shutdown()
        return TrainRun(run_dir, {}, {}, result.history)
    split_metrics = evaluate_splits(result, dataset, config)
    chosen = report_split(list(split_metrics), config.data.holdout)
    metrics = {
        **{k: v for k, v in split_metrics[chosen].items() if k not in ("confusion_matrix", "calibration")},
        "model": result.description.model,
        "mode": result.description.mode,
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "val_accuracy": split_metrics["val"]["accuracy"],
        "splits": {name: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n_images": m["n_images"]} for name, m in split_metrics.items()},
        **({"excluded": dataset.carved["excluded"]} if "excluded" in dataset.carved else {}),
    }
    if result.before_refit is not None and chosen == "val":
        metrics["note"] = ("these are the validation figures of the network before the refit: the saved network also "
                           "learned these photos, and the data held out no other split")
    write_json(run_dir / "metrics.json", metrics)
    budget = BudgetPlan.read(run_dir)
    if budget is not None:
        budget.measured_s = metrics["total_seconds"]
        budget.write(run_dir)
    for name, m in split_metrics.items():
        write_json(run_dir / f"metrics_{name}.json", m)
    if result.history:
        learning_curves(result.history, run_dir / "curves.png", title=f"{result.description.model} ({result.description.mode})")
    write_run_report(run_dir)
    return TrainRun(run_dir, metrics, split_metrics, result.history)


def evaluate_splits(result: TrainResult, dataset: Dataset, config: Config) -> dict[str, dict[str, Any]]:
    """Metrics of every split but ``train``; writes each split's ``predictions_SPLIT.csv``."""
    device = resolve_device(local_device_name(config.train.device))
    description = result.description
    split_metrics: dict[str, dict[str, Any]] = {}
    for split in dataset.splits:
        if split == "train":
            continue
        decoded = result.decoded[split]
        if split in result.logits:  # computed in training from cached features
            probs = softmax(result.logits[split])
            split_metrics[split] = evaluate_probabilities(probs, result.labels[split], dataset.classes, split, len(decoded.skipped))
        else:
            split_metrics[split], probs = evaluate_images(
                result.model, decoded.images, result.labels[split], dataset.classes, description.preprocess, device,
                resolve_precision(config.train.precision, device), split=split, n_skipped=len(decoded.skipped),
                cache_dir=default_cache_dir(config.train.cache_dir), mirror=description.mirror,
            )
        if result.before_refit is not None and split not in result.logits:
            split_metrics[split]["before_refit"] = _before_refit(result, split, config, device)
        samples = dataset.splits[split]
        write_predictions(
            result.run_dir / f"predictions_{split}.csv", [samples[i].path for i in decoded.index],
            [samples[i].label for i in decoded.index], probs, dataset.classes,
        )
    return split_metrics


def _before_refit(result: TrainResult, split: str, config: Config, device: Any) -> dict[str, float]:
    """Accuracy and macro F1 on ``split`` of the network validation chose, before the refit (``train.refit``)."""
    decoded, description = result.decoded[split], result.description
    metrics, _ = evaluate_images(
        result.before_refit, decoded.images, result.labels[split], description.classes, description.preprocess, device,
        resolve_precision(config.train.precision, device), split=split, n_skipped=len(decoded.skipped),
        cache_dir=default_cache_dir(config.train.cache_dir), mirror=description.mirror,
    )
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]}
