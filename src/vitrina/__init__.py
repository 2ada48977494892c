"""vitrina: product image classification for retail and e-commerce.

Public API (the CLI and the server call exactly these)::

    import vitrina
    ds = vitrina.load_dataset("photos/")           # any supported dataset form
    summary = vitrina.inspect("photos/", out="report/")
"""
from __future__ import annotations

from vitrina.version import __version__

import importlib
from typing import Any

_LAZY = {
    "load_dataset": "vitrina.data.sources",
    **{name: "vitrina.api" for name in (
        "inspect", "clean", "resolve_config", "train", "list_models", "evaluate", "compare", "tune", "export", "predict", "serve",
    )},
}


def __getattr__(name: str) -> Any:  # imported on first use: `vitrina --help` and ONNX-only serving never load torch
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrina' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
