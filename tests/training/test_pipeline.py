"""The split a run reports its figures on."""
from __future__ import annotations

import pytest

from vitrina.training.pipeline import report_split


@pytest.mark.parametrize("holdout, splits, reported", [
    ("val", ["train", "val", "validation"], "validation"),  # the held validation split, not the one carved from train
    ("validation", ["train", "val", "validation", "test"], "validation"),
    ("test", ["train", "val", "test"], "test"),
    (None, ["train", "val", "test"], "test"),
    (None, ["train", "val"], "val"),
])
def test_a_run_reports_its_holdout_else_test_else_validation(holdout: str | None, splits: list[str], reported: str) -> None:
    assert report_split(splits, holdout) == reported
