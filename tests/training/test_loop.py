"""The epoch loop's choices that do not need a training run."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vitrina.config import resolve
from vitrina.training import loop
from vitrina.training.augment import build_augment
from vitrina.training.plan import RECOMMENDED_AUGMENT


@pytest.mark.parametrize("cores, threads, processes, device, workers, expected", [
    (2, 2, 1, "cpu", -1, False),  # every core computes: augmenting between steps is faster
    (8, 4, 1, "cpu", -1, True),  # a free core for the worker
    (8, 4, 2, "cpu", -1, False),  # two training processes fill the cores
    (2, 2, 1, "cuda", -1, True),  # the GPU computes: the worker runs beside it
    (8, 4, 1, "cpu", 0, False),  # --set train.workers=0: no worker process at all
])
def test_batches_are_augmented_in_a_worker_only_on_a_free_core(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int, processes: int, device: str, workers: int, expected: bool,
) -> None:
    monkeypatch.setattr(loop, "default_threads", lambda: cores)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    transform = build_augment(replace(resolve().augment, **RECOMMENDED_AUGMENT["photo"]))
    assert loop.augments_in_worker(transform, workers, torch.device(device), processes) is expected
    assert loop.augments_in_worker(None, workers, torch.device(device), processes) is False  # nothing to augment
