"""Settings for the public functions (``vitrina.api.settings``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from vitrina import api
from vitrina.config import resolve
from vitrina.errors import ConfigError


def test_overrides_leave_the_callers_config_as_it_was() -> None:
    config = resolve(overrides={"train.epochs": 3})
    settings = api.resolve_config(config, **{"train.epochs": 5, "model.input_size": 96})
    assert (settings.train.epochs, settings.model.input_size) == (5, 96)
    assert (config.train.epochs, config.model.input_size) == (3, None)
    assert api.resolve_config(config) is config  # nothing to apply: the object itself


def test_a_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("train:\n  epochs: 7\n")
    assert api.resolve_config(path, **{"train.lr": 0.01}).train.epochs == 7
    with pytest.raises(ConfigError, match="unknown setting"):
        api.resolve_config(path, **{"train.nope": 1})
