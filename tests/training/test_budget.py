"""The time budget: a plan that fits, clear errors, a deadline that keeps the best epoch."""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.cli.test_cli import run_cli
from tests.helpers import make_shapes_dataset, quiet, scratch_config
from vitrina import api
from vitrina.config import resolve
from vitrina.errors import ConfigError
from vitrina.models.registry import create_model
from vitrina.preprocess import Preprocess
from vitrina.training.budget import (
    BudgetPlan,
    Calibration,
    Deadline,
    calibrate_speed,
    check_budget,
    plan_epochs,
)
from vitrina.training import budget, trainer
from vitrina.training.augment import build_augment
from vitrina.training.callbacks import EpochEnd
from vitrina.training.plan import RECOMMENDED_AUGMENT, Plan

PLAN_KEYS = {"backbone", "input_size", "unfreeze_blocks", "epochs", "batch_size", "precision", "estimated_s", "measured_s", "reasons"}


def finetune_plan(epochs: int = 8, blocks: int = 3) -> Plan:
    return Plan("finetune", "efficientnet_lite0", Preprocess(input_size=288), True, epochs, 32, 1e-3, 1e-4, unfreeze_blocks=blocks)


def planned(budget_minutes: float, explicit: bool = False, messages: list[str] | None = None,
            explicit_model: bool = False, blocks: int = 3, explicit_blocks: bool = False) -> BudgetPlan:
    # 1,000 training photos at 50 ms a step and 10 ms a pass: an epoch about 52 s.
    return plan_epochs(finetune_plan(blocks=blocks), Calibration(0.05, 0.01), budget_s=budget_minutes * 60, spent_s=20.0,
                       n_train=1000, n_val=200, n_eval=400, explicit_epochs=explicit, precision="bf16",
                       log=(messages.append if messages is not None else quiet), explicit_model=explicit_model,
                       explicit_blocks=explicit_blocks)


def test_the_plan_names_the_blocks_that_train() -> None:
    recommended = planned(30, blocks=3)
    assert recommended.unfreeze_blocks == 3 and "the last 3 blocks train: the measured default" in recommended.reasons
    asked = planned(30, blocks=5, explicit_blocks=True)
    assert asked.unfreeze_blocks == 5 and "the last 5 blocks train: as asked" in asked.reasons


def test_a_resumed_run_keeps_its_planned_blocks() -> None:
    saved = planned(5, blocks=4, explicit_blocks=True)  # the interrupted run's plan.json
    resumed = trainer._with_budget_plan(finetune_plan(epochs=8, blocks=3), saved)
    assert (resumed.unfreeze_blocks, resumed.epochs) == (4, saved.epochs) and saved.epochs < 8


@pytest.mark.parametrize("minutes", [0, -5, "ten", math.nan, math.inf, True])
def test_a_budget_must_be_a_positive_number(minutes: object) -> None:
    with pytest.raises(ConfigError, match="positive number of minutes"):
        check_budget(minutes)


def test_the_plan_fits_its_epochs_into_the_budget() -> None:
    roomy, tight = planned(30), planned(4)
    assert roomy.epochs == 8 and roomy.estimated_s <= 30 * 60
    assert 1 <= tight.epochs < 8 and tight.estimated_s <= 4 * 60
    assert any("instead of the recommended 8" in reason for reason in tight.reasons)


def test_a_budget_too_small_names_the_smallest_that_works() -> None:
    with pytest.raises(ConfigError, match=r"too small for this data.*--budget 2 or more"):
        planned(0.5)


def test_explicit_epochs_win_with_a_warning() -> None:
    messages: list[str] = []
    plan = planned(4, explicit=True, messages=messages)
    assert plan.epochs == 8
    assert any("will overrun the 4-minute budget" in m for m in messages)


def test_the_deadline_stops_when_another_epoch_would_not_fit() -> None:
    deadline = Deadline(time.perf_counter() + 10.0, reserve_s=4.0, log=quiet)
    state = EpochEnd(1, None, True)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 3.0}, state)
    assert state.stop_reason is None
    deadline.on_epoch_end({"seconds": 7.0}, state)
    assert state.stop_reason and "time budget" in state.stop_reason and deadline.stopped


def test_the_deadline_grows_the_epochs_a_busy_calibration_cut() -> None:
    recorded: list[tuple[int, float, float]] = []
    deadline = Deadline(time.perf_counter() + 100.0, reserve_s=0.0, log=quiet, most_epochs=8,
                        record=lambda epochs, rest_s, reserve_s: recorded.append((epochs, rest_s, reserve_s)))
    state = EpochEnd(1, None, True, planned_epochs=2)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 5.0}, state)  # 19 more would fit: the recommended 8 do
    assert state.planned_epochs == 8 and recorded == [(8, 35.0, 0.0)] and state.stop_reason is None


def test_the_deadline_shrinks_the_epochs_that_no_longer_fit() -> None:
    deadline = Deadline(time.perf_counter() + 22.0, reserve_s=0.0, log=quiet, most_epochs=8)
    state = EpochEnd(1, None, True, planned_epochs=8)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 5.0}, state)
    assert state.planned_epochs == 5 and state.stop_reason is None  # 4 more of 5 s fit in 22 s


def test_the_deadline_keeps_a_plan_that_fits_or_was_asked_for() -> None:
    fits = Deadline(time.perf_counter() + 100.0, reserve_s=0.0, log=quiet, most_epochs=8)
    state = EpochEnd(1, None, True, planned_epochs=8)  # type: ignore[arg-type]
    fits.on_epoch_end({"seconds": 5.0}, state)
    assert state.planned_epochs == 8
    asked = Deadline(time.perf_counter() + 100.0, reserve_s=0.0, log=quiet)  # --epochs: no most_epochs
    state = EpochEnd(1, None, True, planned_epochs=2)  # type: ignore[arg-type]
    asked.on_epoch_end({"seconds": 5.0}, state)
    assert state.planned_epochs == 2


def test_the_deadline_grows_by_the_slower_and_shrinks_by_the_faster_estimate() -> None:
    deadline = Deadline(time.perf_counter() + 60.0, reserve_s=0.0, log=quiet, most_epochs=12)
    state = EpochEnd(1, None, True, planned_epochs=8)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 2.0}, state)  # 29 more by this epoch: grows to the most
    assert state.planned_epochs == 12
    state = EpochEnd(2, None, True, planned_epochs=12)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 7.0}, state)  # 13 more by the mean (4.5 s), 8 by this one: 12 may still fit
    assert state.planned_epochs == 12
    state = EpochEnd(3, None, True, planned_epochs=12)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 20.0}, state)  # 6 more by the mean (9.7 s), 3 by this one: 9 in all
    assert state.planned_epochs == 9


def test_one_fast_epoch_does_not_grow_the_plan_alone() -> None:
    deadline = Deadline(time.perf_counter() + 45.0, reserve_s=0.0, log=quiet, most_epochs=12)
    state = EpochEnd(1, None, True, planned_epochs=5)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 10.0}, state)  # 4 more fit: the plan holds
    assert state.planned_epochs == 5
    state = EpochEnd(2, None, True, planned_epochs=9)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 2.0}, state)  # 7 more by the mean (6 s), 22 by this one: 9 stays
    assert state.planned_epochs == 9


def test_an_early_stop_is_not_re_planned() -> None:
    recorded: list[tuple[int, float, float]] = []
    deadline = Deadline(time.perf_counter() + 100.0, reserve_s=0.0, log=quiet, most_epochs=8,
                        record=lambda epochs, rest_s, reserve_s: recorded.append((epochs, rest_s, reserve_s)))
    state = EpochEnd(3, None, False, planned_epochs=4)  # type: ignore[arg-type]
    state.stop("no better for 2 epochs")  # early stopping runs before the deadline
    deadline.on_epoch_end({"seconds": 5.0}, state)
    assert state.planned_epochs == 4 and not recorded


def test_the_reserve_follows_the_validation_passes_measured() -> None:
    # Calibrated at 0.3 s a photo (a busy machine): a reserve of 60 s. The passes measure 0.1 s a photo.
    recorded: list[tuple[int, float, float]] = []
    deadline = Deadline(time.perf_counter() + 100.0, reserve_s=60.0, log=quiet, most_epochs=8, forward_s=0.3, val_photos=100,
                        record=lambda epochs, rest_s, reserve_s: recorded.append((epochs, rest_s, reserve_s)))
    state = EpochEnd(1, None, True, planned_epochs=3)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 10.0, "val_seconds": 10.0}, state)
    assert deadline.reserve_s == pytest.approx(20.0)  # by the calibrated reserve, 4 more epochs would fit, not 7
    assert state.planned_epochs == 8 and recorded == [(8, 70.0, pytest.approx(20.0))]
    # One slow pass: the median of two (0.25 s a photo) says 50 s, the last (0.4) 80 s. The plan
    # shrinks by the smaller (4 more epochs of 10 s in the 50 s left) and grows back by the larger once passes are quick again.
    state = EpochEnd(2, None, True, planned_epochs=8)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 10.0, "val_seconds": 40.0}, state)
    assert deadline.reserve_s == pytest.approx(50.0) and state.planned_epochs == 6
    state = EpochEnd(3, None, True, planned_epochs=6)  # type: ignore[arg-type]
    deadline.on_epoch_end({"seconds": 10.0, "val_seconds": 10.0}, state)
    assert deadline.reserve_s == pytest.approx(20.0) and state.planned_epochs == 8
    assert [epochs for epochs, _, _ in recorded] == [8, 6, 8]


def test_the_reserve_stays_as_calibrated_without_timed_passes() -> None:
    for kwargs, row in (({"forward_s": 0.3, "val_photos": 10}, {"val_seconds": 1.0}),  # too few photos to time
                        ({"forward_s": None, "val_photos": 100}, {"val_seconds": 10.0}),  # the head alone (bottleneck)
                        ({"forward_s": 0.3, "val_photos": 100}, {"val_seconds": math.nan}),  # no validation
                        ({"forward_s": 0.3, "val_photos": 100}, {"val_seconds": None})):  # the same, read back from JSON
        deadline = Deadline(time.perf_counter() + 100.0, reserve_s=60.0, log=quiet, **kwargs)  # type: ignore[arg-type]
        deadline.on_epoch_end({"seconds": 10.0, **row}, EpochEnd(1, None, True))  # type: ignore[arg-type]
        assert deadline.reserve_s == 60.0


def test_the_deadline_stops_by_the_measured_reserve_and_says_so() -> None:
    # 30 s left: by the calibrated 60 s reserve no epoch fits; measured, the reserve is 6 s and another epoch does.
    messages: list[str] = []
    recorded: list[tuple[int, float, float]] = []
    deadline = Deadline(time.perf_counter() + 30.0, reserve_s=60.0, log=messages.append, forward_s=1.0, val_photos=100,
                        record=lambda epochs, rest_s, reserve_s: recorded.append((epochs, rest_s, reserve_s)))
    state = EpochEnd(1, None, True, planned_epochs=2)  # type: ignore[arg-type]  # --epochs 2: nothing re-planned
    deadline.on_epoch_end({"seconds": 10.0, "val_seconds": 10.0}, state)
    assert deadline.reserve_s == pytest.approx(6.0) and state.stop_reason is None and state.planned_epochs == 2
    assert recorded == [(2, 10.0, pytest.approx(6.0))]
    assert messages == ["  the work after training should take about 6 s: validation passes take 100.0 ms a photo here "
                        "where the calibration gave 1000.0"]
    deadline.on_epoch_end({"seconds": 10.0, "val_seconds": 10.5}, state)  # within a tenth: nothing more said
    assert len(messages) == 1 and len(recorded) == 1


def test_a_run_re_plans_when_its_epochs_are_faster_than_calibrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    # A calibration taken while the machine was busy: 8 s a photo, so the plan fits few of the recommended 20 epochs,
    # and an inference pass of 50 ms a photo, so the reserve is far larger than the validation passes show.
    monkeypatch.setattr(trainer, "calibrate_speed", lambda *args, **kwargs: Calibration(8.0, 0.05))
    monkeypatch.setattr(budget, "FEWEST_TIMED_PHOTOS", 1)  # the few validation photos of this dataset time the pass
    config = scratch_config(tmp_path, **{"train.epochs": None, "train.budget_minutes": 5})
    messages: list[str] = []
    run = api.train(data, config, out=tmp_path / "run", progress=False, log=messages.append)
    calibrated = [int(m.split()[4]) for m in messages if m.startswith("plan for 5 minutes:")]
    assert calibrated and calibrated[0] < 20, messages[:12]
    plan = json.loads((run.run_dir / "plan.json").read_text())
    assert plan["epochs"] == 20 == len(run.history)
    assert any(r.startswith("re-planned while training: 20 epochs in all") for r in plan["reasons"])
    assert all(row["val_seconds"] > 0 for row in run.history)
    assert plan["reserve_s"] > 0 and plan["measured_reserve_s"] is not None and plan["measured_reserve_s"] < plan["reserve_s"] / 2
    assert any(m.startswith("  the work after training should take about") for m in messages)
    lrs = [row["lr"] for row in run.history]
    assert lrs[1] > 0.5 * max(lrs) and lrs[-1] < 0.05 * max(lrs)  # the schedule decays over the 20 epochs, not after the first
    asked = api.train(data, replace(config, train=replace(config.train, epochs=3)), out=tmp_path / "asked", progress=False, log=quiet)
    reasons = json.loads((asked.run_dir / "plan.json").read_text())["reasons"]
    assert len(asked.history) == 3 and not any(r.startswith("re-planned") for r in reasons)  # --epochs is kept as asked


@pytest.mark.expected_speed
def test_a_run_writes_its_plan(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    config = scratch_config(tmp_path, **{"train.epochs": None, "train.budget_minutes": 5, "train.expected_speed": True})
    run = api.train(data, config, out=tmp_path / "run", progress=False, log=quiet)
    plan = json.loads((run.run_dir / "plan.json").read_text())
    assert list((tmp_path / "cache" / "onnx").glob("speed-*.int8.onnx"))  # a second run only times it
    assert PLAN_KEYS <= plan.keys()
    assert plan["epochs"] == len(run.history) or plan["epochs"] > len(run.history)  # early stopping may end sooner
    assert plan["measured_s"] is not None and plan["measured_s"] <= 5 * 60
    assert plan["expected_images_per_s"] > 0  # the exported int8 model, timed before training
    assert any("should predict about" in reason for reason in plan["reasons"])


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_bad_budgets_on_the_command_line_are_clear_errors(tmp_path: Path, value: str) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=4)
    result = run_cli("train", str(data), "--budget", value, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "budget" in result.stderr.lower()
    assert not (tmp_path / "run").exists()


def test_a_budget_too_small_leaves_no_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    # A machine that takes a second a photo: no epoch fits in half a minute.
    monkeypatch.setattr(trainer, "calibrate_speed", lambda *args, **kwargs: Calibration(1.0, 0.1))
    config = scratch_config(tmp_path, **{"train.epochs": None, "train.budget_minutes": 0.5})
    with pytest.raises(ConfigError, match=r"too small for this data.*--budget \d+ or more"):
        api.train(data, config, out=tmp_path / "run", progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_the_reasons_say_whether_the_model_was_asked_for() -> None:
    default = planned(30).reasons[-1]
    asked = planned(30, explicit_model=True).reasons[-1]
    assert default.startswith("efficientnet_lite0 at 288 px: the measured default")
    assert asked == "efficientnet_lite0 at 288 px: as asked"


def test_the_calibration_counts_the_augmentation_that_runs_between_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan("scratch", "cnn1", Preprocess(input_size=64), False, 4, 16, 1e-3, 1e-4)
    model = create_model("cnn1", 3, pretrained=False, input_size=64)
    augment = build_augment(replace(resolve().augment, **RECOMMENDED_AUGMENT["photo"]))
    assert augment is not None
    plain = calibrate_speed(model, plan, 0, torch.device("cpu"), "fp32")
    timed = calibrate_speed(model, plan, 0, torch.device("cpu"), "fp32", augment=augment)
    assert plain.augment_s_per_image == 0.0 and timed.augment_s_per_image > 0  # really timed
    monkeypatch.setattr(budget, "_time_augment", lambda *args: 0.5)  # far above a step of this tiny network
    augmented = calibrate_speed(model, plan, 0, torch.device("cpu"), "fp32", augment=augment)
    assert augmented.augment_s_per_image == 0.5 and 0.5 < augmented.step_s_per_image < 0.5 + 10 * plain.step_s_per_image + 0.01
    reasons = plan_epochs(plan, augmented, budget_s=600, spent_s=1.0, n_train=100, n_val=20, n_eval=20, explicit_epochs=False,
                          precision="fp32", log=quiet).reasons
    assert any("(augmenting its photos" in reason for reason in reasons)
