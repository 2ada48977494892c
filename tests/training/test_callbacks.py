"""The epoch loops' callbacks: early stopping asks to stop and resumes its counters, TensorBoard
gets the learning curves only, the checkpoint needs a resumable loop, and a callback can end
the network's loop."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import scratch_config
from vitrina.data.cache import DecodedImages
from vitrina.models.registry import create_model
from vitrina.preprocess import Preprocess
from vitrina.training.callbacks import (
    Checkpoint, EarlyStopping, EarlyStoppingOnBest, EpochEnd, EpochHookCallback, TensorBoardLogger, callback_states,
    restore_callbacks, run_callbacks,
)
from vitrina.training.loop import NetworkTraining, train_network
from vitrina.training.plan import Plan


def end(epoch: int, improved: bool = False) -> EpochEnd:
    return EpochEnd(epoch, torch.nn.Linear(1, 1), improved)


def test_early_stopping_asks_to_stop_after_patience_epochs_without_a_lower_validation_loss() -> None:
    stopping = EarlyStopping(patience=2)
    reasons = []
    for epoch, loss in enumerate([1.0, 0.9, 0.89995, 0.95], start=1):
        state = end(epoch)
        stopping.on_epoch_end({"epoch": epoch, "val_loss": loss}, state)
        reasons.append(state.stop_reason)
    assert reasons == [None, None, None, "validation loss has not improved for 2 epochs"]
    resumed = EarlyStopping(patience=2)
    restore_callbacks([resumed], callback_states([stopping, EpochHookCallback(print)]))
    assert (resumed.best_val_loss, resumed.stale) == (0.9, 2)


def test_early_stopping_without_patience_never_stops() -> None:
    stopping, state = EarlyStopping(patience=0), end(1)
    for epoch in range(1, 20):
        stopping.on_epoch_end({"epoch": epoch, "val_loss": 1.0}, state)
    assert state.stop_reason is None


def test_the_head_stops_after_patience_epochs_without_a_better_one() -> None:
    stopping = EarlyStoppingOnBest(patience=2)
    stopped = []
    for epoch, improved in enumerate([True, False, True, False, False], start=1):
        state = end(epoch, improved)
        stopping.on_epoch_end({"epoch": epoch}, state)
        stopped.append(state.stop_reason is not None)
    assert stopped == [False, False, False, False, True]


def test_tensorboard_gets_finite_learning_curves_without_timings() -> None:
    class Writer:
        def __init__(self) -> None:
            self.scalars: list[tuple[str, float, int]] = []

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            self.scalars.append((tag, value, step))

    writer = Writer()
    row = {"epoch": 3, "train_loss": 0.5, "val_accuracy": float("nan"), "lr": 0.1, "seconds": 2.0, "images_per_second": 90.0}
    run_callbacks([TensorBoardLogger(writer, "head/")], row, end(3))
    assert writer.scalars == [("head/loss/train", 0.5, 3), ("head//lr", 0.1, 3)]


def test_the_checkpoint_needs_a_loop_that_can_resume(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resume"):
        Checkpoint(tmp_path, None, "digest").on_epoch_end({"epoch": 1}, end(1))  # type: ignore[arg-type]


def test_a_callback_that_asks_to_stop_ends_the_network_loop_after_that_epoch(tmp_path: Path) -> None:
    class StopAfterTwo:
        def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
            if row["epoch"] == 2:
                state.stop("enough")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(24, dtype=np.int64) % 3
    decoded = DecodedImages(images, np.arange(24), [str(i) for i in range(24)], [])
    plan = Plan(mode="scratch", model="cnn1", preprocess=Preprocess(input_size=32), pretrained=False, epochs=5, batch_size=8, lr=1e-3, weight_decay=0.0)
    torch.manual_seed(0)
    model = create_model("cnn1", 3, pretrained=False, input_size=32)
    config = scratch_config(tmp_path, **{"augment.enabled": False, "train.workers": 0, "train.label_smoothing": 0.0})
    logs: list[str] = []
    rows: list[float] = []
    job = NetworkTraining(model, decoded, labels, decoded, labels, plan, config, torch.device("cpu"), "fp32", 3, progress=False, log=logs.append)
    history, best = train_network(job, [EpochHookCallback(lambda row: rows.append(row["epoch"])), StopAfterTwo()])
    assert [row["epoch"] for row in history] == [1, 2] and rows == [1, 2]
    assert logs[-1] == "  early stop: enough"
    assert best is not None and set(best) == set(model.state_dict())
