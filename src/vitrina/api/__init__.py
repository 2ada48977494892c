"""The public API: what the CLI and the server call, and what ``import vitrina`` offers.

No argument parsing and no printing here. Each function lives in a module of its own
(:mod:`.data`, :mod:`.training`, :mod:`.evaluation`, :mod:`.prediction`, :mod:`.serving`,
:mod:`.settings`); they are imported on first use, so ``vitrina --help`` or serving an ONNX file
never loads the training stack.
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "resolve_config": "settings", "demo_data": "settings", "demo_config": "settings",
    "inspect": "data", "clean": "data", "augment_preview": "data", "list_models": "data",
    "cache_summary": "data", "prune_cache": "data", "InspectResult": "data", "CleanResult": "data", "CleanSettings": "data",
    "train": "training", "compare": "training", "tune": "training", "TrainRun": "training",
    "evaluate": "evaluation", "promote": "evaluation", "Promotion": "evaluation",
    "export": "prediction", "predict": "prediction",
    "serve": "serving", "ServeInfo": "serving",
    "review_export": "reviews", "ReviewExport": "reviews",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"vitrina.api.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'vitrina.api' has no attribute {name!r}")


__all__ = sorted(_HOMES)
