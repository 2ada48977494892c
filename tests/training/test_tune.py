"""`vitrina tune`: a small search, its best config retrained, a killed search resumed, pruning."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import DEMO, TINY
from vitrina import api
from vitrina.cli import main
from vitrina.config import resolve
from vitrina.data.sources import load_dataset
from vitrina.errors import ConfigError, VitrinaError
from vitrina.training.plan import make_plan
from vitrina.training.tune import SEARCHED, EpochPruner, default_params, suggest

SCRATCH_FLAGS = ["--mode", "scratch", "--model", "cnn1", "--epochs", "2"]


def tiny_flags(cache_dir: Path) -> list[str]:
    settings = {**TINY, "train.cache_dir": str(cache_dir), "train.lr": 0.01}
    return [*SCRATCH_FLAGS, *(f"--set={k}={v}" for k, v in settings.items())]


def finished_trials(study_db: Path) -> dict[int, tuple[float, dict]]:
    """Trial number -> (value, params) of the complete trials in a study file (empty while it is being created).

    Reads a copy: opening the live file would let optuna initialise its schema while the search does the same.
    """
    if not study_db.is_file():
        return {}
    snapshot = study_db.with_name(f"snapshot-{time.monotonic_ns()}.db")
    try:
        shutil.copyfile(study_db, snapshot)
        study = optuna.load_study(study_name="vitrina", storage=f"sqlite:///{snapshot}")
    except Exception:  # copied mid-write, or the study is not created yet
        return {}
    finally:
        snapshot.unlink(missing_ok=True)
    return {t.number: (t.value, t.params) for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}


@pytest.mark.slow
def test_tune_reports_the_best_trial_and_its_config_retrains_to_the_same_accuracy(shapes: Path, cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tune"
    assert main(["tune", str(shapes), "--out", str(out), "--trials", "3", "--search", "lr,weight_decay", *tiny_flags(cache_dir)]) == 0
    printed = capsys.readouterr().out
    assert "3 trials complete" in printed and "margin of the best" in printed
    summary = json.loads((out / "tune.json").read_text())
    assert summary["trials"]["complete"] == 3
    assert summary["margin"] == pytest.approx(summary["best_value"] - summary["default_value"])
    assert summary["margin"] >= 0
    trials_csv = (out / "trials.csv").read_text().splitlines()
    assert len(trials_csv) == 4 and trials_csv[1].split(",")[3] == "True"  # trial 0 is the given config
    assert (out / "trials.png").is_file() and (out / "study.db").is_file()
    assert not any((out / "trials").iterdir())  # trial folders are scratch space

    run = tmp_path / "retrained"
    assert main(["train", str(shapes), "--config", str(out / "best_config.yaml"), "--out", str(run), "--quiet"]) == 0
    retrained = json.loads((run / "metrics.json").read_text())["val_accuracy"]
    assert abs(retrained - summary["best_value"]) <= 0.005


@pytest.mark.slow
def test_a_killed_search_resumes_with_every_finished_trial(shapes: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    command = [sys.executable, "-m", "vitrina", "tune", str(shapes), "--out", str(out), "--trials", "40", "--search", "lr", *tiny_flags(cache_dir)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while len(finished_trials(out / "study.db")) < 2:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "the search ended early"
            assert time.monotonic() < deadline, "no two trials finished in 4 minutes"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = finished_trials(out / "study.db")
    result = api.tune(shapes, out=out, resume=True, trials=len(before) + 1, log=lambda _: None)
    after = finished_trials(out / "study.db")
    assert {n: after[n] for n in before} == before
    assert result.counts["complete"] == len(before) + 1
    assert result.default_value == before[0][0]


def test_resume_keeps_the_saved_settings(shapes: Path, cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(VitrinaError, match="--resume needs --out"):
        api.tune(shapes, out=tmp_path / "none", resume=True)
    out = tmp_path / "tune"
    assert main(["tune", str(shapes), "--out", str(out), "--trials", "1", "--search", "lr", *tiny_flags(cache_dir)]) == 0
    with pytest.raises(ConfigError, match="keeps its settings"):
        api.tune(shapes, resolve(overrides={"train.epochs": 3}), out=out, resume=True)
    with pytest.raises(ConfigError, match="cannot change"):
        api.tune(shapes, out=out, resume=True, search=["dropout"])


class FakeTrial:
    def __init__(self, prune_after: int):
        self.reported: list[tuple[float, int]] = []
        self.prune_after = prune_after

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reported) >= self.prune_after


def test_epoch_pruner_reports_each_epoch_and_stops_a_bad_trial() -> None:
    trial = FakeTrial(prune_after=2)
    pruner = EpochPruner(trial)  # type: ignore[arg-type]
    pruner({"val_accuracy": 0.4444, "val_loss": 1.05})
    assert trial.reported == [(0.4444, 1)]
    with pytest.raises(optuna.TrialPruned):
        pruner({"val_accuracy": 0.3333, "val_loss": 1.1})


def test_tunes_first_trial_is_the_plan_with_explicit_settings_winning(pixel_csv: Path) -> None:
    dataset = load_dataset(pixel_csv, resolve().data, carve_val=True)
    searched = ("lr", "weight_decay", "epochs")
    planned = resolve()
    assert default_params(planned, make_plan(dataset, planned), searched) == {"lr": 3e-3, "weight_decay": 0.05, "epochs": 20}
    mine = resolve(overrides={"train.weight_decay": 1e-3, "train.epochs": 7})
    assert default_params(mine, make_plan(dataset, mine), searched) == {"lr": 3e-3, "weight_decay": 1e-3, "epochs": 7}


@pytest.mark.parametrize("mode", ["bottleneck", "finetune", "scratch"])
def test_tunes_first_trial_lies_in_the_search_space(mode: str) -> None:
    dataset = load_dataset(DEMO, resolve().data, carve_val=True)
    config = resolve(overrides={"train.mode": mode, **({"model.name": "cnn3"} if mode == "scratch" else {})})
    plan = make_plan(dataset, config)
    searched = SEARCHED[mode]
    first = default_params(config, plan, searched)
    assert suggest(optuna.trial.FixedTrial(first), mode, searched) == first  # FixedTrial refuses a value outside the space
