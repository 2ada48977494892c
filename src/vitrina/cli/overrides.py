"""Settings from the command line: a command's ``--config`` file, ``--set`` pairs and dedicated flags
made into a :class:`~vitrina.config.Config`."""
from __future__ import annotations

import argparse
from typing import Any

from vitrina.config import Config, resolve
from vitrina.errors import VitrinaError


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Collect config overrides: --set pairs first, then dedicated flags (which win)."""
    out: dict[str, Any] = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VitrinaError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            out[name[4:]] = value
    return out


def resolved_config(args: argparse.Namespace) -> Config:
    """The settings a command runs with: defaults, then ``--config``, then the overrides."""
    return resolve(args.config, config_overrides(args))
