"""Hyperparameter search with Optuna: a persistent study, pruning of bad trials, a budget.

:func:`tune` trains one configuration per trial with the training engine on splits loaded
once, maximises the best validation accuracy, and keeps the study in ``study.db`` (SQLite), so a
killed search resumes with every finished trial. The first trial is the base configuration as
given (the plan's values where unset, as `vitrina train` would run it), which measures the
search's margin over it. The best trial's full configuration is written as ``best_config.yaml``
for ``vitrina train --config``.
Bottleneck trials reuse the cached backbone features and take seconds.
"""
from __future__ import annotations

import copy
import csv
import math
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from vitrina import config as config_lib
from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.samples import Dataset
from vitrina.errors import ConfigError
from vitrina.plots import trials_chart
from vitrina.training.plan import Plan, make_plan, with_recommended_settings
from vitrina.training.trainer import train as run_training

Log = Callable[[str], None]
STUDY_FILE = "study.db"
STUDY_NAME = "vitrina"
BASE_CONFIG = "base_config.yaml"
BEST_CONFIG = "best_config.yaml"
DEFAULT_TRIALS = 20
# What is searched per mode. Augmentation in bottleneck mode would re-extract features per trial.
SEARCHED = {
    "bottleneck": ("lr", "weight_decay", "dropout", "head", "epochs"),
    "scratch": ("lr", "weight_decay", "dropout", "augment", "epochs"),
    "finetune": ("lr", "weight_decay", "dropout", "augment", "epochs", "unfreeze_blocks"),
}
HEADS = ("linear", "mlp", "mlp_ensemble")  # every head bottleneck training can fit, the plan's own included
EPOCH_RANGE = {"bottleneck": (20, 200, 10), "scratch": (5, 40, 5), "finetune": (2, 12, 1)}
# The augmentation settings that "augment" (a strength, 1 = the base config) scales together.
AUGMENT_SCALED = ("rotation", "shift", "shear", "zoom", "color_jitter")

@dataclass
class TuneResult:
    out_dir: Path
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    default_value: float | None
    best_config: Path
    counts: dict[str, int]  # trials per state: complete, pruned, fail, running


# ----------------------------------------------------------------------------- search space
def default_params(config: Config, plan: Plan, searched: tuple[str, ...]) -> dict[str, Any]:
    """The base configuration's values of the searched parameters (the plan's where unset)."""
    values = {
        "lr": plan.lr,
        "weight_decay": plan.weight_decay,
        "dropout": config.model.dropout,
        "head": plan.head,
        "augment": 1.0,
        "epochs": plan.epochs,
        "unfreeze_blocks": plan.unfreeze_blocks,
    }
    return {name: values[name] for name in searched}


def search_space(mode: str, names: Sequence[str] | None = None) -> tuple[str, ...]:
    """The searched parameters: ``names`` (checked), else those of ``mode``."""
    if not names:
        return SEARCHED[mode]
    known = {"lr", "weight_decay", "dropout", "head", "augment", "epochs", "unfreeze_blocks"}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"cannot search {', '.join(unknown)}; searchable: {', '.join(sorted(known))}")
    return tuple(names)


def suggest(trial: Trial, mode: str, searched: tuple[str, ...]) -> dict[str, Any]:
    """One point of the search space: a value for each name in ``searched``."""
    low, high, step = EPOCH_RANGE[mode]
    draw = {
        "lr": lambda: trial.suggest_float("lr", 1e-4 if mode != "finetune" else 2e-5, 3e-2, log=True),
        "weight_decay": lambda: trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True),
        "dropout": lambda: trial.suggest_float("dropout", 0.0, 0.6),
        "head": lambda: trial.suggest_categorical("head", list(HEADS)),
        "augment": lambda: trial.suggest_float("augment", 0.0, 2.0),
        "epochs": lambda: trial.suggest_int("epochs", low, high, step=step),
        "unfreeze_blocks": lambda: trial.suggest_int("unfreeze_blocks", 1, 9),
    }
    return {name: draw[name]() for name in searched}


def apply_params(base: Config, params: dict[str, Any]) -> Config:
    """``base`` with the searched parameters set (a new config; ``base`` is unchanged)."""
    keys = {"lr": "train.lr", "weight_decay": "train.weight_decay", "dropout": "model.dropout", "head": "model.head",
            "epochs": "train.epochs", "unfreeze_blocks": "train.unfreeze_blocks"}
    overrides = {keys[name]: value for name, value in params.items() if name in keys}
    if "augment" in params:
        overrides.update({f"augment.{name}": getattr(base.augment, name) * params["augment"] for name in AUGMENT_SCALED})
    return config_lib.apply(copy.deepcopy(base), overrides, origin="tune")


# ----------------------------------------------------------------------------- pruning
class EpochPruner:
    """Reports each epoch's validation accuracy to the trial and stops the trial when Optuna prunes it.

    The training engine calls it with each epoch's history row (``val_accuracy``).
    """

    def __init__(self, trial: Trial):
        self.trial = trial
        self.step = 0

    def __call__(self, row: dict[str, float]) -> None:
        value = row.get("val_accuracy")
        if value is None or not math.isfinite(value):
            return
        self.step += 1
        self.trial.report(value, self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation accuracy {value:.4f} after {self.step} epochs")


# ----------------------------------------------------------------------------- study
def open_study(out_dir: Path, seed: int) -> optuna.Study:
    """The study in ``out_dir/study.db``: created, or loaded with every trial it holds."""
    with warnings.catch_warnings():  # the heartbeat (which fails trials of a killed search) is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{(out_dir / STUDY_FILE).resolve()}", heartbeat_interval=10, grace_period=30,
        )
    existing = len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) if _has_study(storage) else 0
    return optuna.create_study(
        storage=storage, study_name=STUDY_NAME, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed + existing),  # a resumed search draws new points
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    )


def _has_study(storage: optuna.storages.BaseStorage) -> bool:
    return any(s.study_name == STUDY_NAME for s in storage.get_all_studies())


def _is_default(trial: Trial | FrozenTrial) -> bool:
    return bool(trial.user_attrs.get("default"))


def _count(study: optuna.Study) -> dict[str, int]:
    counts = {state.name.lower(): 0 for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    for trial in study.trials:
        key = trial.state.name.lower()
        if key in counts:
            counts[key] += 1
    return counts


def _objective(dataset: Dataset, base: Config, mode: str, searched: tuple[str, ...], out_dir: Path, log: Log) -> Callable[[Trial], float]:
    def objective(trial: Trial) -> float:
        params = suggest(trial, mode, searched)
        config = apply_params(base, params)
        config.train.budget_minutes = None  # trials run their planned epochs; the search keeps its own --minutes
        config.train.refit, config.train.refit_tail = False, None  # a trial is scored on validation: a refit's network would go unused
        trial_dir = out_dir / "trials" / f"trial-{trial.number:04d}"
        pruner = EpochPruner(trial)
        started = time.perf_counter()
        try:
            result = run_training(dataset, config, trial_dir, progress=False, log=lambda _: None, on_epoch=pruner)
        except optuna.TrialPruned as exc:
            log(f"trial {trial.number}: pruned ({exc}) after {time.perf_counter() - started:.0f} s")
            raise
        finally:
            shutil.rmtree(trial_dir, ignore_errors=True)  # scratch space: the study keeps what matters
        value = max(row["val_accuracy"] for row in result.history)
        seconds = time.perf_counter() - started
        trial.set_user_attr("seconds", round(seconds, 2))
        trial.set_user_attr("epochs_run", len(result.history))
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        log(f"trial {trial.number}{' (default config)' if _is_default(trial) else ''}: validation accuracy {value:.4f} in {seconds:.0f} s ({shown})")
        return value

    return objective


def _write_trials(study: optuna.Study, path: Path) -> None:
    """One CSV row per trial: number, state, value, whether it is the default config, time, parameters."""
    rows = [
        {"trial": t.number, "state": t.state.name, "value": t.value, "default": _is_default(t),
         "seconds": t.user_attrs.get("seconds"), "epochs_run": t.user_attrs.get("epochs_run"), **t.params}
        for t in study.trials
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


def _last_value(trial: FrozenTrial) -> float | None:
    """A trial's objective, or for a pruned one its last reported epoch."""
    if trial.value is not None:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


def _write_outputs(study: optuna.Study, base: Config, out_dir: Path) -> TuneResult:
    """best_config.yaml, tune.json, trials.csv and trials.png."""
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(f"{out_dir}: no trial finished within the budget; give more --minutes or --trials")
    best = study.best_trial
    default = next((t.value for t in complete if _is_default(t)), None)
    best_config = config_lib.save(apply_params(base, best.params), out_dir, BEST_CONFIG)
    counts = _count(study)
    _write_trials(study, out_dir / "trials.csv")
    trials_chart([(t.number, _last_value(t), t.state.name) for t in study.trials], out_dir / "trials.png", baseline=default)
    write_json(out_dir / "tune.json", {
        "best_trial": best.number, "best_value": best.value, "best_params": best.params, "default_value": default,
        "margin": None if default is None else best.value - default, "trials": counts, "best_config": best_config.name,
    })
    return TuneResult(out_dir, best.number, float(best.value), dict(best.params), default, best_config, counts)


def tune(
    dataset: Dataset,
    base: Config,
    out_dir: Path,
    *,
    trials: int | None = None,
    minutes: float | None = None,
    search: Sequence[str] | None = None,
    log: Log = print,
) -> TuneResult:
    """Search hyperparameters of ``base`` on ``dataset`` within the budget; resumes the study in ``out_dir``.

    ``trials`` is the total number of finished (complete or pruned) trials wanted, counting
    those of an earlier, interrupted search; ``minutes`` bounds this call's time (checked
    between trials). With neither, ``DEFAULT_TRIALS`` trials. ``search`` names the searched
    parameters (default: those of the mode, see ``SEARCHED``).
    """
    plan = make_plan(dataset, base)  # the recommended settings and the resolved mode below leave it as it is
    mode = plan.mode
    # The augmentation strength scales the data's recommended values, so fill them in first.
    base = config_lib.apply(with_recommended_settings(dataset, base), {"train.mode": mode})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(out_dir, base.train.seed)
    stored = tuple(study.user_attrs.get("search", ()))
    if stored and search and tuple(search) != stored:
        raise ConfigError(f"this study searches {', '.join(stored)}; a resumed search cannot change that")
    searched = stored or search_space(mode, search)
    study.set_user_attr("search", list(searched))
    if not any(_is_default(t) and t.state in (TrialState.COMPLETE, TrialState.WAITING) for t in study.trials):
        study.enqueue_trial(default_params(base, plan, searched), user_attrs={"default": True})
    counts = _count(study)
    finished = counts["complete"] + counts["pruned"]
    if finished:
        log(f"resuming the study in {out_dir / STUDY_FILE}: {finished} finished trials kept")
    wanted = trials if trials is not None else (None if minutes is not None else DEFAULT_TRIALS)
    remaining = None if wanted is None else max(0, wanted - finished)
    if remaining != 0:
        study.optimize(
            _objective(dataset, base, mode, searched, out_dir, log), n_trials=remaining,
            timeout=None if minutes is None else minutes * 60,
        )
    return _write_outputs(study, base, out_dir)
