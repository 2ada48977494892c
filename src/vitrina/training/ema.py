"""An exponential moving average of the weights that train (``train.ema_decay``).

The average is what validation scores and what the best epoch keeps; the optimizer goes on
stepping the raw weights, and ``--resume`` continues both.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """EMA of ``model``'s trainable parameters and floating-point buffers (BatchNorm statistics).

    The decay ramps up as ``min(decay, (1 + step) / (10 + step))``, so the first steps of a short
    fine-tune are not averaged with the untrained head.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay, self.steps = decay, 0
        self.tensors = self._tracked(model)
        self.average = {name: t.detach().clone() for name, t in self.tensors.items()}

    @staticmethod
    def _tracked(model: nn.Module) -> dict[str, torch.Tensor]:
        params = {f"p.{n}": p for n, p in model.named_parameters() if p.requires_grad}
        buffers = {f"b.{n}": b for n, b in model.named_buffers() if b.is_floating_point()}
        return {**params, **buffers}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the weights as they are now into the average (after each optimizer step)."""
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        for name, tensor in self.tensors.items():
            self.average[name].lerp_(tensor.detach(), 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the duration of the block, the raw ones after it."""
        raw = {name: t.detach().clone() for name, t in self.tensors.items()}
        with torch.no_grad():
            for name, tensor in self.tensors.items():
                tensor.copy_(self.average[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, tensor in self.tensors.items():
                    tensor.copy_(raw[name])

    def state_dict(self) -> dict[str, Any]:
        return {"ema_steps": self.steps, "ema_average": {k: v.cpu() for k, v in self.average.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "ema_average" not in state:
            return  # a run saved before the average was switched on starts it afresh
        self.steps = state["ema_steps"]
        for name, value in state["ema_average"].items():
            if name in self.average:
                self.average[name].copy_(value)
