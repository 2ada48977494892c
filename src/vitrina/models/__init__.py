"""Networks: the model registry, scratch CNNs, pretrained EfficientNet-Lite and timm models.

``create_model(name, num_classes)`` builds any of them as a :class:`VitrinaNet`;
``default_preprocess(name)`` says how images must be prepared for it.
"""
from vitrina.models.registry import (
    Backbone,
    ModelSpec,
    VitrinaNet,
    create_model,
    default_preprocess,
    get_spec,
    list_models,
    make_head,
    param_count,
    register_model,
)

# Imported for their registrations.
from vitrina.models import scratch, efficientnet_lite  # noqa: E402,F401  isort: skip
from vitrina.models.efficientnet_lite import load_imagenet_model  # noqa: E402

__all__ = [
    "Backbone",
    "ModelSpec",
    "VitrinaNet",
    "create_model",
    "default_preprocess",
    "get_spec",
    "list_models",
    "load_imagenet_model",
    "make_head",
    "param_count",
    "register_model",
]
