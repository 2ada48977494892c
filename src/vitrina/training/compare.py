"""Training several configurations on the same splits and ranking them on one leaderboard.

Each configuration becomes an ordinary run folder (``OUT/<name>/``); its reported accuracy comes
from :func:`~vitrina.evaluation.run_eval.evaluate_run`, the code behind ``vitrina evaluate``,
so the leaderboard and a later evaluation of the same run agree. The leaderboard (Markdown and
CSV) adds training time, model size and inference speed; bar charts and overlaid learning
curves come beside it.
"""
from __future__ import annotations

import copy
import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from vitrina import config as config_lib
from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.cache import decode_samples, default_cache_dir
from vitrina.data.sources import load_dataset
from vitrina.errors import ConfigError
from vitrina.evaluation.run_eval import Evaluation, evaluate_run, load_split, run_config
from vitrina.models.checkpoint import WEIGHTS_FILE, load_model
from vitrina.models.network import param_count
from vitrina.models.runtime import forward_uint8, resolve_device, resolve_precision
from vitrina.plots import leaderboard_chart, overlaid_curves
from vitrina.preprocess import Preprocess
from vitrina.training.pipeline import TrainRun, train_run
from vitrina.training.plan import check_trainable, make_plan
from vitrina.training.refit import check_refit_reportable, held_out_photos

Log = Callable[[str], None]
# The lineup when none is given: the scratch CNNs against transfer learning.
DEFAULT_LINEUP: dict[str, dict[str, Any]] = {
    "cnn1-scratch": {"train.mode": "scratch", "model.name": "cnn1"},
    "cnn2-scratch": {"train.mode": "scratch", "model.name": "cnn2"},
    "cnn3-scratch": {"train.mode": "scratch", "model.name": "cnn3"},
    "lite0-bottleneck": {"train.mode": "bottleneck", "model.name": "efficientnet_lite0"},
    "lite0-finetune": {"train.mode": "finetune", "model.name": "efficientnet_lite0"},
}
SPEED_BATCH = 32
SPEED_SECONDS = 2.0
COLUMNS = (
    "rank", "name", "model", "mode", "accuracy", "top3_accuracy", "macro_f1", "ece", "val_accuracy",
    "train_seconds", "params", "size_mb", "images_per_second", "run", "evaluation",
)


@dataclass
class Entry:
    name: str
    config: Config


@dataclass
class Comparison:
    out_dir: Path
    split: str
    rows: list[dict[str, Any]]  # best first
    total_seconds: float


# ----------------------------------------------------------------------------- the lineup
def _settings(value: str | Path | Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Inline settings (nested or dotted keys) or those of a config file (relative to ``folder``)."""
    if isinstance(value, Mapping):
        return dict(value)
    path = Path(value)
    return config_lib.load_yaml(path if path.is_absolute() else folder / path)


def _from_spec(path: Path) -> list[Entry]:
    """A compare YAML: ``configs`` maps names to settings or config files; ``common`` lies beneath each."""
    spec = config_lib.load_yaml(path)
    configs = spec.get("configs")
    if not isinstance(configs, Mapping) or not configs:
        raise ConfigError(f"{path}: a compare file needs 'configs:' mapping names to settings or config files")
    unknown = set(spec) - {"configs", "common"}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; a compare file has 'configs' and 'common'")
    entries = []
    for name, value in configs.items():
        config = config_lib.apply(Config(), dict(spec.get("common") or {}), origin=f"{path}: common")
        entries.append(Entry(str(name), config_lib.apply(config, _settings(value, path.parent), origin=f"{path}: {name}")))
    return entries


def _is_spec(path: Path) -> bool:
    return path.suffix.lower() in (".yaml", ".yml") and path.is_file() and "configs" in config_lib.load_yaml(path)


def lineup(configs: Sequence[Config | str | Path] | str | Path | None, overrides: Mapping[str, Any] | None = None) -> list[Entry]:
    """The configurations to compare: config files or objects, one compare YAML, or the default lineup.

    ``overrides`` (dotted keys) apply to every configuration last; all must share the data
    settings so they train and are evaluated on the same splits.
    """
    if isinstance(configs, (str, Path)):
        configs = [configs]
    if not configs:
        entries = [Entry(name, config_lib.resolve(overrides=settings)) for name, settings in DEFAULT_LINEUP.items()]
    elif len(configs) == 1 and not isinstance(configs[0], Config) and _is_spec(Path(configs[0])):
        entries = _from_spec(Path(configs[0]))
    else:
        entries = [
            Entry(f"config{i + 1}", copy.deepcopy(c)) if isinstance(c, Config) else Entry(Path(c).stem, config_lib.resolve(c))
            for i, c in enumerate(configs)
        ]
    for entry in entries:
        config_lib.apply(entry.config, dict(overrides or {}))
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"configuration names must differ: {', '.join(names)}")
    data_settings = {str(e.config.data) for e in entries}
    if len(data_settings) > 1:
        raise ConfigError("the configurations differ in their data settings; compared runs must share them (put them in 'common' or pass them as flags)")
    return entries


# ----------------------------------------------------------------------------- measuring
def inference_speed(model: torch.nn.Module, images: np.ndarray, preprocess: Preprocess, device: torch.device, precision: str) -> float:
    """Images per second of ``model`` on batches of ``SPEED_BATCH`` decoded images, over about ``SPEED_SECONDS``."""
    batch = np.asarray(images[np.arange(SPEED_BATCH) % len(images)])  # a full batch even from a few images
    model.eval()
    forward_uint8(model, batch, preprocess, device, precision, batch_size=SPEED_BATCH)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < SPEED_SECONDS or done == 0:
        forward_uint8(model, batch, preprocess, device, precision, batch_size=SPEED_BATCH)
        done += len(batch)
    return done / (time.perf_counter() - started)


def measure_run(run_dir: Path, data: str | os.PathLike, split: str) -> dict[str, Any]:
    """Parameter count, weights file size and inference speed of a run's model on its ``split`` images."""
    model, description = load_model(run_dir)
    config = run_config(run_dir)
    dataset, split = load_split(data, config, split, run_dir=run_dir)
    preprocess = description.preprocess
    device = resolve_device(config.train.device)
    decoded = decode_samples(dataset.split(split), preprocess, default_cache_dir(config.train.cache_dir),
                             max_pixels=config.data.max_pixels, workers=1, progress=False)
    return {
        "params": param_count(model),
        "size_mb": (run_dir / WEIGHTS_FILE).stat().st_size / 1e6,
        "images_per_second": inference_speed(model.to(device), decoded.images, preprocess, device, resolve_precision(config.train.precision, device)),
    }


# ----------------------------------------------------------------------------- writing
def _markdown(rows: Sequence[Mapping[str, Any]], split: str) -> str:
    header = f"| rank | configuration | model (mode) | {split} accuracy | top-3 | macro F1 | ECE | val accuracy | train s | params | size MB | PyTorch images/s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        top3 = f"{r['top3_accuracy']:.2%}" if r.get("top3_accuracy") is not None else "–"
        lines.append(
            f"| {r['rank']} | {r['name']} | {r['model']} ({r['mode']}) | {r['accuracy']:.2%} | {top3} | {r['macro_f1']:.4f} | "
            f"{r['ece']:.3f} | {r['val_accuracy']:.2%} | {r['train_seconds']:.0f} | {r['params'] / 1e6:.2f}M | {r['size_mb']:.1f} | "
            f"{r['images_per_second']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_leaderboard(out_dir: Path, rows: Sequence[Mapping[str, Any]], split: str, histories: Mapping[str, list[dict]]) -> None:
    """``leaderboard.md``, ``leaderboard.csv``, ``leaderboard.png`` and ``curves.png`` in ``out_dir``."""
    (out_dir / "leaderboard.md").write_text(_markdown(rows, split), encoding="utf-8")
    with open(out_dir / "leaderboard.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    leaderboard_chart(rows, out_dir / "leaderboard.png", split=split)
    overlaid_curves(histories, out_dir / "curves.png", title=f"Learning curves of {len(histories)} configurations")


def check_lineup(data: str | os.PathLike, entries: Sequence[Entry]) -> None:
    """Refuse a bad configuration before hours of training the others."""
    dataset = load_dataset(data, entries[0].config.data, carve_val=True)
    check_trainable(dataset)
    held_out = held_out_photos(dataset.splits)
    for entry in entries:
        make_plan(dataset, entry.config)
        check_refit_reportable(entry.name, entry.config.train, held_out)


def _row(name: str, run: TrainRun, evaluation: Evaluation, measured: Mapping[str, Any]) -> dict[str, Any]:
    """One leaderboard row: the evaluation's figures, the run's training figures, the measured size and speed."""
    m = evaluation.metrics
    return {
        "name": name, "model": m["model"], "mode": m["mode"], "accuracy": m["accuracy"], "top3_accuracy": m.get("top3_accuracy"),
        "macro_f1": m["macro_f1"], "ece": m["ece"], "val_accuracy": run.metrics["val_accuracy"],
        "train_seconds": run.metrics["train_seconds"], **measured, "run": str(run.run_dir), "evaluation": str(evaluation.out_dir),
    }


def compare_configs(
    data: str | os.PathLike,
    entries: Sequence[Entry],
    out_dir: Path,
    *,
    progress: bool = True,
    log: Log = print,
) -> Comparison:
    """Train, evaluate and measure every entry into ``out_dir/<name>/``, then write the leaderboard."""
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    histories: dict[str, list[dict]] = {}
    split = "test"
    for i, entry in enumerate(entries, 1):
        log(f"[{i}/{len(entries)}] {entry.name}: training")
        run = train_run(data, entry.config, out=out_dir / entry.name, progress=progress, log=log)
        split = run.metrics["split"]
        evaluation = evaluate_run(run.run_dir, data, split=split, progress=progress)
        rows.append(_row(entry.name, run, evaluation, measure_run(run.run_dir, data, split)))
        histories[entry.name] = run.history
        log(f"[{i}/{len(entries)}] {entry.name}: {split} accuracy {evaluation.metrics['accuracy']:.4f}, trained in {run.metrics['train_seconds']:.0f} s")
    rows.sort(key=lambda r: (-r["accuracy"], -r["macro_f1"], r["train_seconds"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    write_leaderboard(out_dir, rows, split, histories)
    total = time.perf_counter() - started
    write_json(out_dir / "compare.json", {"data": str(data), "split": split, "total_seconds": round(total, 1), "rows": rows})
    return Comparison(out_dir, split, rows, total)
