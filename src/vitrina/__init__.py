"""vitrina: product image classification for retail and e-commerce.

Public API (the CLI and the server call exactly these)::

    import vitrina
    ds = vitrina.load_dataset("photos/")           # any supported dataset form
    summary = vitrina.inspect("photos/", out="report/")
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_dataset": "vitrina.data.sources",
    "inspect": "vitrina.api",
    "resolve_config": "vitrina.api",
    "train": "vitrina.api",
    "list_models": "vitrina.api",
    "evaluate": "vitrina.api",
    "compare": "vitrina.api",
    "tune": "vitrina.api",
    "export": "vitrina.api",
    "predict": "vitrina.api",
    "serve": "vitrina.api",
    "clean": "vitrina.api",
}


def __getattr__(name: str):  # lazy imports keep `vitrina --help` fast (no torch import)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vitrina' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
