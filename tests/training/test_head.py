"""The head on cached features: the epoch it keeps, and a refit's repeat of what validation chose."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitrina.config import resolve
from vitrina.preprocess import Preprocess
from vitrina.training.head import fit_head
from vitrina.training.optim import BestEpoch, chosen_epoch
from vitrina.training.plan import Plan
from vitrina.training.run_folder import read_history, write_history


def _row(accuracy: float, loss: float) -> dict[str, float]:
    return {"val_accuracy": accuracy, "val_loss": loss}


def test_the_chosen_epoch_is_the_one_best_epoch_keeps() -> None:
    history = [_row(0.5, 1.0), _row(0.8, 0.6), _row(0.8, 0.4), _row(0.8, 0.4), _row(0.7, 0.1)]
    kept = BestEpoch()
    improved = [kept.record(row, nn.Linear(1, 1)) for row in history]
    assert chosen_epoch(history) == 3 == max(i for i, better in enumerate(improved, 1) if better)
    assert chosen_epoch([]) == 0


def test_the_chosen_epoch_reads_a_saved_history_with_a_loss_that_was_not_finite(tmp_path: Path) -> None:
    history = [_row(0.5, float("nan")), _row(0.6, 0.9), _row(0.6, float("inf")), _row(0.4, 0.2)]
    kept = BestEpoch()
    improved = [kept.record(row, nn.Linear(1, 1)) for row in history]
    write_history(tmp_path, history, "history_head")
    saved = read_history(tmp_path, "history_head")
    assert [row["val_loss"] for row in saved] == [None, 0.9, None, 0.2]  # JSON keeps no NaN or infinity
    assert chosen_epoch(saved) == 2 == max(i for i, better in enumerate(improved, 1) if better)
    assert read_history(tmp_path, "history_nothing") == []


def _features(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return (rng.normal(size=(n, 8)) + labels[:, None]).astype(np.float32), labels.astype(np.int64)


def _fit(repeat_epochs: int | None) -> tuple[list[dict[str, float]], nn.Linear, list[str]]:
    train_x, train_y = _features(0)
    val_x, val_y = _features(1, 30)
    torch.manual_seed(0)
    head = nn.Linear(8, 3)
    plan = Plan("bottleneck", "linear", Preprocess(input_size=8), False, epochs=12, batch_size=16, lr=0.05, weight_decay=0.0)
    lines: list[str] = []
    history = fit_head(head, train_x, train_y, val_x, val_y, plan, resolve(overrides={"train.patience": 0, "train.label_smoothing": 0.0}), 3,
                       log=lines.append, repeat_epochs=repeat_epochs)
    return history, head, lines


def test_a_repeat_trains_the_epochs_given_on_the_planned_schedule_and_keeps_the_last() -> None:
    history, _, _ = _fit(None)
    accuracies = [row["val_accuracy"] for row in history]
    # An epoch that validation would not keep among the epochs up to it: the repeat must keep it all the same.
    repeat = next(e for e in range(2, len(history) + 1) if accuracies[e - 1] < max(accuracies[: e - 1]))
    repeated, head, lines = _fit(repeat)
    assert len(repeated) == repeat and lines == [f"  head: {repeat} epochs trained, the last kept"]
    # The same start, batches and schedule: the repeat's epochs are the first run's epochs.
    assert [row["train_loss"] for row in repeated] == [row["train_loss"] for row in history[:repeat]]
    val_x, val_y = _features(1, 30)
    with torch.no_grad():
        kept_accuracy = float((head(torch.from_numpy(val_x)).argmax(1).numpy() == val_y).mean())
    assert kept_accuracy == accuracies[repeat - 1] < max(accuracies[:repeat])


def test_a_repeat_of_no_recorded_epochs_trains_the_whole_schedule() -> None:
    repeated, _, _ = _fit(0)
    assert len(repeated) == 12
