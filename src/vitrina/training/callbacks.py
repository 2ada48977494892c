"""What the epoch loops do after each epoch besides choosing the best one: callbacks for
TensorBoard scalars, early stopping, the resume checkpoint and the caller's own hook.

A loop calls each callback's ``on_epoch_end(row, state)`` in order, with the epoch's history row
and an :class:`EpochEnd`; a callback asks the loop to stop with ``state.stop(reason)`` or to plan
for another number of epochs with ``state.replan(epochs)`` (the time budget does), and may raise
to end training at once (hyperparameter search prunes trials so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, runtime_checkable

from torch import nn

from vitrina.description import ModelDescription
from vitrina.training.run_folder import save_resume_point

EpochHook = Callable[[dict[str, float]], None]  # sees each epoch's history row; may raise to stop
TIMING_KEYS = ("seconds", "images_per_second", "val_seconds")  # history columns that are not learning curves


@dataclass
class EpochEnd:
    """What a loop tells its callbacks after an epoch; ``stop`` asks it to end after this epoch."""

    epoch: int  # epochs finished, counting from 1
    model: nn.Module
    improved: bool  # this epoch is the best so far: its weights (averaged, with train.ema_decay) are the ones the loop returns
    # Everything --resume needs to continue after this epoch (the network loop only).
    resume_point: Callable[[], dict[str, Any]] | None = None
    stop_reason: str | None = None
    # The epochs the schedule is planned for now (the network loop only); ``replan`` changes them.
    planned_epochs: int | None = None

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def replan(self, epochs: int) -> None:
        """Ask the loop to plan its learning-rate schedule for ``epochs`` epochs in all from now on."""
        self.planned_epochs = epochs


@runtime_checkable
class Callback(Protocol):
    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None: ...


class StopAfter:
    """Ends training after ``epochs`` epochs, whatever the schedule was planned for (a refit
    repeats the epochs its first network ran, on the same schedule)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        if state.epoch >= self.epochs:
            state.stop(f"epoch {self.epochs}, the last the first network ran")


@runtime_checkable
class StatefulCallback(Callback, Protocol):
    """A callback with counters that a resumed run must continue from (saved in ``train_state.pt``)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def run_callbacks(callbacks: Iterable[Callback], row: dict[str, float], state: EpochEnd) -> None:
    for callback in callbacks:
        callback.on_epoch_end(row, state)


def callback_states(callbacks: Iterable[Callback]) -> dict[str, Any]:
    """The counters of every stateful callback, in one flat dict."""
    return {k: v for c in callbacks if isinstance(c, StatefulCallback) for k, v in c.state_dict().items()}


def restore_callbacks(callbacks: Iterable[Callback], saved: dict[str, Any]) -> None:
    for callback in callbacks:
        if isinstance(callback, StatefulCallback):
            callback.load_state_dict(saved)


class EpochHookCallback:
    """The caller's hook (e.g. tune's pruner): called with each epoch's row; what it raises ends training."""

    def __init__(self, hook: EpochHook):
        self.hook = hook

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        self.hook(row)


class TensorBoardLogger:
    """Each epoch's losses, accuracies and learning rate as TensorBoard scalars (``PREFIX NAME/GROUP``)."""

    def __init__(self, writer: Any, prefix: str = ""):
        self.writer, self.prefix = writer, prefix

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        for key, value in row.items():
            if key != "epoch" and key not in TIMING_KEYS and value is not None and math.isfinite(value):
                group, _, name = key.partition("_")
                self.writer.add_scalar(f"{self.prefix}{name}/{group}", value, row["epoch"])


class EarlyStopping:
    """Asks to stop after ``patience`` epochs without a validation loss lower by ``min_delta`` (0: never)."""

    def __init__(self, patience: int, min_delta: float = 1e-4):
        self.patience, self.min_delta = patience, min_delta
        self.best_val_loss, self.stale = float("inf"), 0

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        if row["val_loss"] < self.best_val_loss - self.min_delta:
            self.best_val_loss, self.stale = row["val_loss"], 0
        else:
            self.stale += 1
        if self.patience and self.stale >= self.patience:
            state.stop(f"validation loss has not improved for {self.patience} epochs")

    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_val_loss, self.stale = state["best_val_loss"], state["stale"]


class EarlyStoppingOnBest:
    """Asks to stop after ``patience`` epochs none of which became the best epoch (0: never)."""

    def __init__(self, patience: int):
        self.patience, self.stale = patience, 0

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        self.stale = 0 if state.improved else self.stale + 1
        if self.patience and self.stale >= self.patience:
            state.stop(f"no better epoch for {self.patience} epochs")


class Checkpoint:
    """After each epoch, the weights (``last.safetensors``) and ``train_state.pt`` (those weights with
    the optimizer and counters, what ``--resume`` reads)."""

    def __init__(self, run_dir: Path, description: ModelDescription, config_digest: str):
        self.run_dir, self.description, self.config_digest = run_dir, description, config_digest

    def on_epoch_end(self, row: dict[str, float], state: EpochEnd) -> None:
        if state.resume_point is None:
            raise ValueError("Checkpoint needs a loop that can resume (the network loop)")
        save_resume_point(self.run_dir, state.model, self.description, {**state.resume_point(), "config_digest": self.config_digest})
