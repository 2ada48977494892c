"""Errors that mean "the user gave us something wrong": the CLI prints them without a traceback."""
from __future__ import annotations


class VitrinaError(Exception):
    """Base class for user-facing errors (bad input, bad config, missing files)."""


class ConfigError(VitrinaError):
    """A config file or flag is wrong."""


class DataError(VitrinaError):
    """A dataset, labels file or image path is wrong."""


class ImageError(VitrinaError):
    """One image cannot be used; ``reason`` is a short human-readable cause."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ModelError(VitrinaError):
    """Unknown model name, weights that do not fit, or an unreadable model file."""
