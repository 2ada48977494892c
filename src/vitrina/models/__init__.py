"""Networks: the model registry, scratch CNNs, pretrained EfficientNet-Lite and timm models.

``create_model(name, num_classes)`` builds any of them as a :class:`VitrinaNet`;
``default_preprocess(name)`` says how images must be prepared for it. See README.md here for
how a module adds a model.

The names below load on first use: importing ``vitrina.models.<module>`` runs this file, so it
imports nothing itself (no torch, and no model module imported for its registrations).
"""
from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "Backbone": "network", "VitrinaNet": "network", "make_head": "network", "param_count": "network",
    "ModelSpec": "registry", "create_model": "registry", "default_preprocess": "registry", "get_spec": "registry",
    "list_models": "registry", "register_model": "registry", "unregister_model": "registry", "temporary_models": "registry",
    "load_imagenet_model": "efficientnet_lite",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"vitrina.models.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'vitrina.models' has no attribute {name!r}")


__all__ = sorted(_HOMES)
