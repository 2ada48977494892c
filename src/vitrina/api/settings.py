"""Settings for every public function: a config from an object, a YAML file or defaults; the demo's."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from vitrina import config as config_lib
from vitrina.config import Config


def resolve_config(config: Config | str | Path | None = None, **overrides: Any) -> Config:
    """A :class:`Config` from an object, a YAML path or defaults, then dotted-key overrides
    (applied to a copy: the caller's object is left as it was)."""
    if isinstance(config, Config):
        return config_lib.apply(copy.deepcopy(config), overrides) if overrides else config
    return config_lib.resolve(config, overrides)


def demo_data() -> Path:
    """The embedded demo dataset: clothing photos in train/validation/test class folders."""
    return Path(__file__).resolve().parents[1] / "demo" / "clothing"


def demo_config() -> Config:
    """The demo's settings: a short fine-tune that finishes in a few minutes on 2 CPU cores."""
    return config_lib.resolve(overrides={"train.mode": "finetune", "train.epochs": 4})
