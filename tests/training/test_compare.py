"""`vitrina compare`: several configurations on the same splits, a leaderboard that agrees with `vitrina evaluate`."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.helpers import TINY, quiet
from vitrina import api
from vitrina.cli import main
from vitrina.errors import ConfigError
from vitrina.training.compare import DEFAULT_LINEUP, lineup


@pytest.mark.slow
def test_compare_writes_a_leaderboard_that_agrees_with_evaluate(shapes: Path, cache_dir: Path, tmp_path: Path) -> None:
    spec = tmp_path / "compare.yaml"
    spec.write_text(yaml.safe_dump({
        "common": {**TINY, "train.epochs": 3, "train.cache_dir": str(cache_dir)},
        "configs": {
            "cnn1-scratch": {"train.mode": "scratch", "model.name": "cnn1", "train.lr": 0.01},
            "lite0-bottleneck": {"train": {"mode": "bottleneck", "epochs": 20}, "model": {"name": "efficientnet_lite0", "input_size": 64}},
        },
    }))
    result = api.compare(shapes, spec, out=tmp_path / "cmp", progress=False, log=quiet)
    assert result.split == "test"
    assert [r["rank"] for r in result.rows] == [1, 2]
    assert {r["name"] for r in result.rows} == {"cnn1-scratch", "lite0-bottleneck"}
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png", "curves.png", "compare.json"):
        assert (result.out_dir / name).is_file(), name
    board = (result.out_dir / "leaderboard.md").read_text()
    assert "| 1 |" in board and "efficientnet_lite0 (bottleneck)" in board
    with open(result.out_dir / "leaderboard.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    for row, csv_row in zip(result.rows, csv_rows):
        assert row["params"] > 0 and row["size_mb"] > 0 and row["images_per_second"] > 0
        assert float(csv_row["accuracy"]) == pytest.approx(row["accuracy"])
        evaluation = api.evaluate(row["run"], shapes, out=tmp_path / f"eval-{row['name']}", progress=False)
        assert evaluation.metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert evaluation.metrics["macro_f1"] == pytest.approx(row["macro_f1"])
        splits = json.loads((Path(row["run"]) / "splits.json").read_text())["splits"]
        assert splits == json.loads((Path(result.rows[0]["run"]) / "splits.json").read_text())["splits"]  # the same splits


def test_lineup_from_files_flags_and_defaults(tmp_path: Path) -> None:
    a, b = tmp_path / "small.yaml", tmp_path / "big.yaml"
    a.write_text("model: {name: cnn1}\ntrain: {mode: scratch}\n")
    b.write_text("model: {name: cnn3}\ntrain: {mode: scratch}\n")
    entries = lineup([a, b], {"train.epochs": "2"})
    assert [(e.name, e.config.model.name, e.config.train.epochs) for e in entries] == [("small", "cnn1", 2), ("big", "cnn3", 2)]
    assert [e.name for e in lineup(None)] == list(DEFAULT_LINEUP)
    spec = tmp_path / "spec.yaml"
    spec.write_text("common: {train.epochs: 5}\nconfigs:\n  one: small.yaml\n  two: {train.epochs: 7, model.name: cnn2, train.mode: scratch}\n")
    one, two = lineup(spec)
    assert (one.config.model.name, one.config.train.epochs, two.config.train.epochs) == ("cnn1", 5, 7)


def test_bad_lineups_are_clear_errors(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("data: {split_seed: 1}\n")
    b.write_text("data: {split_seed: 2}\n")
    with pytest.raises(ConfigError, match="data settings"):
        lineup([a, b])
    with pytest.raises(ConfigError, match="names must differ"):
        lineup([a, a])
    spec = tmp_path / "spec.yaml"
    spec.write_text("configs: {one: {train.epochs: 1}}\nruns: 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        lineup(spec)
    spec.write_text("configs: {one: {train.epoch: 1}}\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        lineup(spec)


def test_cli_compare_refuses_a_bad_configuration_before_training(shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name: cnn1}\ntrain: {mode: finetune}\n")
    good = tmp_path / "good.yaml"
    good.write_text("model: {name: cnn1}\ntrain: {mode: scratch}\n")
    assert main(["compare", str(shapes), str(good), str(bad), "--out", str(tmp_path / "cmp"), "--quiet"]) == 2
    assert "needs a pretrained backbone" in capsys.readouterr().err
    assert not (tmp_path / "cmp" / "good").exists()


def test_compare_refuses_a_refit_it_could_only_rank_on_the_photos_it_learned(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    only_train = tmp_path / "only-train"
    shutil.copytree(shapes / "train", only_train / "train")
    refit = tmp_path / "refit.yaml"
    refit.write_text("model: {name: cnn1}\ntrain: {mode: scratch, refit: true}\n")
    out = tmp_path / "cmp"
    assert main(["compare", str(only_train), str(refit), "--out", str(out), "--quiet"]) == 2
    assert "refit: train.refit learns from the validation photos too" in capsys.readouterr().err
    assert not (out / "refit").exists()
