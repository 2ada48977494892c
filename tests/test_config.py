"""The config flow: typed defaults, then YAML, then flags; errors for unknown or mistyped settings."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vitrina import config as config_lib
from vitrina.config import Config, resolve
from vitrina.errors import ConfigError


def test_defaults_yaml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.01\nmodel:\n  name: cnn2\n")
    cfg = resolve(path, {"train.epochs": "3"})
    assert cfg.train.epochs == 3  # the flag wins over the file
    assert cfg.train.lr == 0.01  # the file wins over the default
    assert cfg.model.name == "cnn2"
    assert cfg.train.label_smoothing == Config().train.label_smoothing


def test_dotted_keys_in_yaml_and_types_are_coerced(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train.batch_size: '64'\naugment:\n  enabled: 'no'\n")
    cfg = resolve(path)
    assert cfg.train.batch_size == 64
    assert cfg.augment.enabled is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train.epoch": 3}, "unknown setting 'train.epoch'"),
        ({"trian.epochs": 3}, "unknown setting"),
        ({"train.epochs": "three"}, "expected an integer"),
        ({"train.epochs": 2.5}, "expected an integer"),
        ({"train.mode": "magic"}, "not one of"),
        ({"augment.enabled": "maybe"}, "expected true or false"),
    ],
)
def test_bad_settings_are_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(overrides=overrides)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        resolve(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve(listed)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = resolve(overrides={"train.epochs": 4, "model.name": "timm:resnet18", "data.holdout": "validation"})
    path = config_lib.save(cfg, tmp_path)
    again = config_lib.from_dict(yaml.safe_load(path.read_text()))
    assert again == cfg


@pytest.mark.parametrize(
    ("key", "value"),
    [("train.epochs", 0), ("train.epochs", -1), ("train.batch_size", 0), ("train.lr", 0), ("train.lr", -0.1),
     ("model.input_size", 100_000), ("model.dropout", 1.0), ("data.val_fraction", 1.5), ("augment.hflip", 2),
     ("export.int8_tolerance", -1), ("train.label_smoothing", 1)],
)
def test_numbers_out_of_range_are_clear_errors(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"{key} must be between"):
        resolve(overrides={key: value})


def test_the_cli_refuses_zero_epochs_before_training(tmp_path: Path) -> None:
    from vitrina.cli import main

    assert main(["train", str(tmp_path / "nowhere"), "--epochs", "0", "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()
