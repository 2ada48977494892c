"""Leak-free validation: near copies stay on one side of the carve, and the run's carve is reused."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from tests.helpers import make_shapes_dataset, quiet, scratch_config
from vitrina import api
from vitrina.training.carve import load_training_data


def with_bursts(root: Path, bursts: int = 3, copies: int = 3) -> dict[str, list[str]]:
    """Copy the first photos of each class ``copies`` times under new names (a burst each)."""
    found: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for photo in sorted(folder.iterdir())[:bursts]:
            members = [str(photo)]
            for k in range(copies):
                target = folder / f"{photo.stem}_burst{k}.jpg"
                shutil.copyfile(photo, target)
                members.append(str(target))
            found[str(photo)] = members
    return found


def sides(paths: list[str], val: set[str]) -> set[bool]:
    return {p in val for p in paths}


def test_near_copies_stay_on_one_side_where_a_random_carve_splits_them(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=16)
    bursts = with_bursts(data)
    config = scratch_config(tmp_path, **{"data.val_fraction": 0.3})
    dataset = load_training_data(data, config, log=quiet)
    val = {s.path for s in dataset.splits["val"]}
    assert all(len(sides(members, val)) == 1 for members in bursts.values())
    record = dataset.carved["val"]
    assert record["method"] == "group" and record["groups"] >= len(bursts) and record["photos_in_groups"] >= 4 * len(bursts)
    config.data.val_carve = "random"
    random_val = {s.path for s in load_training_data(data, config, log=quiet).splits["val"]}
    assert any(len(sides(members, random_val)) == 2 for members in bursts.values())


def test_a_run_records_groups_and_evaluation_reuses_its_carve(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=16)
    bursts = with_bursts(data)
    run = api.train(data, scratch_config(tmp_path, **{"train.epochs": 1}), out=tmp_path / "run", progress=False, log=quiet)
    splits = json.loads((run.run_dir / "splits.json").read_text())
    assert splits["carved"]["val"]["method"] == "group" and "group_of" not in splits["carved"]["val"]
    group = dict(zip(splits["splits"]["train"] + splits["splits"]["val"], splits["groups"]["train"] + splits["groups"]["val"]))
    for members in bursts.values():
        assert len({group[p] for p in members}) == 1
    assert f"by near-copy group ({splits['carved']['val']['grouped_by']}): {splits['carved']['val']['groups']} groups of 2 or more" in (
        (run.run_dir / "report.html").read_text())
    evaluation = api.evaluate(run.run_dir, data, split="val", out=tmp_path / "eval", progress=False)
    with open(evaluation.out_dir / "predictions.csv", newline="") as fh:
        evaluated = {row["path"] for row in csv.DictReader(fh)}
    assert evaluated == set(splits["splits"]["val"])
