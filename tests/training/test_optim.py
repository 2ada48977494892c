"""The learning-rate schedule, and planning it again for another number of epochs mid-run."""
from __future__ import annotations

import pytest
import torch

from vitrina.training.optim import lr_schedule, replan_schedule


def _stepped(epochs: int, steps_per_epoch: int, taken: int) -> torch.optim.lr_scheduler.LambdaLR:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_schedule(optimizer, epochs, steps_per_epoch, warmup_epochs=1.0, schedule="cosine")
    for _ in range(taken):
        optimizer.step()
        scheduler.step()
    return scheduler


def _rates(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return rates


def test_a_re_plan_after_the_warm_up_runs_the_new_counts_own_schedule() -> None:
    grown = _stepped(2, 10, taken=10)  # the warm-up epoch done, planned for 2 epochs
    replan_schedule(grown, 8, 10, 1.0, "cosine")
    fresh = _stepped(8, 10, taken=10)
    assert _rates(grown, 70) == pytest.approx(_rates(fresh, 70))


@pytest.mark.parametrize("epochs", [3, 12])
def test_a_later_re_plan_decays_from_where_the_rate_is_to_the_new_end(epochs: int) -> None:
    scheduler = _stepped(8, 10, taken=25)
    reached = scheduler.get_last_lr()[0]
    replan_schedule(scheduler, epochs, 10, 1.0, "cosine")
    assert scheduler.lr_lambdas[0](25) == pytest.approx(reached) and 0.5 < reached < 1.0  # no jump
    rates = _rates(scheduler, epochs * 10 - 25 + 1)
    assert all(a >= b for a, b in zip(rates, rates[1:]))  # still decaying
    assert rates[-1] == pytest.approx(0.0, abs=1e-9)  # to zero at the new last step


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_schedule_started_epochs_along_runs_the_rest_of_the_whole_one(schedule: str) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    whole = _rates(lr_schedule(optimizer, 8, 10, 1.0, schedule), 80)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert _rates(lr_schedule(optimizer, 8, 10, 1.0, schedule, first_epoch=5), 30) == pytest.approx(whole[50:])
