"""The public API of training: train one model, compare several configurations, search hyperparameters."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from vitrina import config as config_lib
from vitrina.api.settings import resolve_config
from vitrina.artifact import prepare_out_dir
from vitrina.config import Config
from vitrina.training.carve import load_training_data
from vitrina.errors import ConfigError, VitrinaError
from vitrina.training.compare import Comparison, check_lineup, compare_configs, lineup
from vitrina.training.pipeline import TrainRun, train_run
from vitrina.training.plan import check_trainable
from vitrina.training.tune import BASE_CONFIG, STUDY_FILE, TuneResult
from vitrina.training.tune import tune as run_tune

__all__ = ["TrainRun", "compare", "train", "tune"]


def train(
    data: str | Path,
    config: Config | str | Path | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log: Callable[[str], None] = print,
    overrides: Mapping[str, Any] | None = None,
) -> TrainRun:
    """Train a classifier and write one run folder (config, history, curves, model, metrics, report).

    ``overrides`` (dotted keys) apply on top of ``config``. ``resume`` continues the interrupted
    run in ``out``: a config file and the overrides then apply on top of the run's own settings
    (its config.yaml), and what training computes must come out the same (a ``Config`` object is
    taken as it is)."""
    own = Path(out) / "config.yaml" if resume and out is not None else None
    if isinstance(config, Config) or own is None or not own.is_file():
        settings = resolve_config(config, **dict(overrides or {}))
    else:
        settings = config_lib.resolve(config, dict(overrides or {}), saved=own)
    return train_run(data, settings, out, resume=resume, runs_dir=runs_dir, progress=progress, log=log)


def compare(
    data: str | Path,
    configs: Sequence[Config | str | Path] | str | Path | None = None,
    out: str | Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Comparison:
    """Train and evaluate several configurations on the same splits; write a leaderboard.

    ``configs``: config files or objects, one compare YAML (``configs:`` name -> settings or
    file, optional ``common:``), or None for the default lineup (the 1/2/3-block scratch CNNs,
    efficientnet_lite0 bottleneck and fine-tune). ``overrides`` apply to every configuration.
    Writes ``OUT/<name>/`` run folders, leaderboard.md/.csv/.png, curves.png and compare.json.
    """
    entries = lineup(configs, overrides)
    check_lineup(data, entries)  # a bad configuration fails before any training
    out_dir = prepare_out_dir(out, runs_dir, "compare")
    return compare_configs(data, entries, out_dir, progress=progress, log=log)


def tune(
    data: str | Path,
    config: Config | str | Path | None = None,
    out: str | Path | None = None,
    *,
    trials: int | None = None,
    minutes: float | None = None,
    search: Sequence[str] | None = None,
    resume: bool = False,
    runs_dir: str | Path = "runs",
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Search hyperparameters with Optuna; the study lives in ``OUT/study.db``.

    ``resume`` continues the interrupted search in ``out`` with its saved base configuration
    (``base_config.yaml``), keeping every finished trial. ``trials`` counts finished trials in
    total; ``minutes`` bounds this call. The best configuration is written to
    ``OUT/best_config.yaml``, ready for ``vitrina train --config``.
    """
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if minutes is not None and not minutes > 0:
        raise ConfigError(f"--minutes must be more than 0, got {minutes}")
    if resume:
        if out is None or not (Path(out) / STUDY_FILE).is_file():
            raise VitrinaError(f"--resume needs --out pointing at a tune folder with {STUDY_FILE}")
        out_dir = Path(out)
        base = config_lib.resolve(out_dir / BASE_CONFIG)
        if config is not None and resolve_config(config).to_dict() != base.to_dict():
            raise ConfigError(f"{out_dir}: a resumed search keeps its settings ({BASE_CONFIG}); resume without other settings")
    else:
        base = resolve_config(config)
    dataset = load_training_data(data, base, log=log)
    check_trainable(dataset)
    if not resume:
        out_dir = prepare_out_dir(out, runs_dir, "tune")
        config_lib.save(base, out_dir, BASE_CONFIG)
    return run_tune(dataset, base, out_dir, trials=trials, minutes=minutes, search=search, log=log)
