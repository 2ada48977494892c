"""The epoch loop's choices that do not need a training run."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import make_shapes_dataset, quiet, scratch_config
from vitrina import api
from vitrina.config import resolve
from vitrina.preprocess import Preprocess
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


def test_a_batch_is_augmented_alike_in_a_worker_and_between_steps() -> None:
    rng = np.random.default_rng(0)
    transform = build_augment(replace(resolve().augment, **RECOMMENDED_AUGMENT["photo"]))
    source = loop.AugmentedBatches(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 3, transform,
                                   Preprocess(input_size=32))
    source.parts, source.seed = [np.arange(6), np.arange(6, 12)], 1234
    torch.manual_seed(0)
    state = torch.get_rng_state()
    inline = [source[i] for i in range(2)]
    assert torch.equal(torch.get_rng_state(), state)  # the training process's random numbers are its own
    in_worker = list(torch.utils.data.DataLoader(source, batch_size=None, num_workers=1))
    for (a, labels_a), (b, labels_b) in zip(inline, in_worker):
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b)
    source.seed = 1235
    assert not torch.equal(source[0][0], inline[0][0])  # another epoch, other augmentations


def test_a_run_learns_the_same_whether_a_worker_augments_or_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12)
    histories = []
    for in_worker in (True, False):
        monkeypatch.setattr(loop, "augments_in_worker", lambda *args, choice=in_worker: choice)
        run = api.train(data, scratch_config(tmp_path, **{"train.epochs": 2}), out=tmp_path / f"run-{in_worker}", progress=False, log=quiet)
        histories.append([row["train_loss"] for row in run.history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)
