"""Weights files: read a state dict from disk and load it into a network, every key and shape checked.

``.safetensors`` files are read with safetensors; ``.pth``/``.pt``/``.bin``/``.ckpt`` with
``torch.load(weights_only=True)``. A file may hold a vitrina model (``backbone.*`` and ``head.*``
keys) or a bare backbone (a timm state dict, its ImageNet classifier dropped). A grayscale model
takes RGB weights: the input convolution is summed over colours.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vitrina.errors import ModelError
from vitrina.models.network import VitrinaNet

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a state dict, or a checkpoint holding one.

    ``.safetensors`` files are read with safetensors, others with ``torch.load`` restricted to
    plain tensors and containers (``weights_only=True``), which never runs pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ModelError(
            f"{path}: unknown weights format (expected {', '.join(WEIGHT_SUFFIXES)})"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files surface as many exception types
        raise ModelError(f"{path}: cannot read weights: {exc}") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise ModelError(f"{path}: no state dict found")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(data):
        raise ModelError(f"{path}: not a state dict (some entries are not tensors)")
    if all(k.startswith("module.") for k in tensors):  # saved from a DataParallel wrapper
        tensors = _strip_prefix(tensors, "module.")
    return tensors


def is_batch_counter(key: str) -> bool:
    """BatchNorm's step counter: unused at inference, absent from some weights files."""
    return key.endswith("num_batches_tracked")


def first_conv_key(state: dict[str, torch.Tensor]) -> str | None:
    """The first 4-D weight in a state dict: the input convolution."""
    return next((k for k, v in state.items() if v.ndim == 4 and k.endswith("weight")), None)


def fit_input_conv(weight: torch.Tensor, expected: torch.Size) -> torch.Tensor:
    """RGB input-convolution weights summed over colours for a grayscale model (as timm does);
    any other weight is returned unchanged."""
    if weight.ndim == 4 and weight.shape[1] == 3:
        grayscale_shape = (weight.shape[0], 1, *weight.shape[2:])
        if tuple(expected) == grayscale_shape:
            return weight.sum(dim=1, keepdim=True)
    return weight


def _mismatch_report(
    given: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> list[str]:
    """Human-readable problems between a state dict and the one a module expects."""

    def few(keys: list[str]) -> str:
        shown = ", ".join(keys[:3])
        return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    missing = [k for k in expected if k not in given and not is_batch_counter(k)]
    unexpected = [k for k in given if k not in expected and not is_batch_counter(k)]
    misshaped = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and given[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({few(unexpected)})")
    if misshaped:
        problems.append(f"{len(misshaped)} of another shape (file vs model: {few(misshaped)})")
    return problems


def load_module_state(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, target: str
) -> None:
    """Load ``state`` into ``module``, every key and shape checked.

    BatchNorm batch counters may be absent on either side. Raises ModelError naming a few of
    the keys that do not fit.
    """
    expected = module.state_dict()
    conv_key = first_conv_key(expected)
    if conv_key in state:
        state = {**state, conv_key: fit_input_conv(state[conv_key], expected[conv_key].shape)}
    problems = _mismatch_report(state, expected)
    if problems:
        raise ModelError(
            f"weights file {source} does not fit model {target}: {'; '.join(problems)}"
        )
    module.load_state_dict(state, strict=False)


def _classifier_keys(backbone: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the ImageNet classifier a timm backbone was built without."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with it removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_weights(model: VitrinaNet, path: str | Path, name: str) -> None:
    """Load a weights file into ``model`` (the registry model ``name``).

    Accepted: a vitrina model state dict (``backbone.*`` and ``head.*`` keys; the head is kept
    fresh when its shapes differ, e.g. for other classes) or a backbone state dict, where an
    original classifier (timm's ``classifier`` entry) is dropped.
    """
    state = read_state_dict(path)
    if any(k.startswith("backbone.") for k in state):
        backbone_state = _strip_prefix(state, "backbone.")
        head_state = _strip_prefix(state, "head.")
        others = [k for k in state if not k.startswith(("backbone.", "head."))]
        if others:
            raise ModelError(
                f"weights file {path} does not fit model {name}: "
                f"unexpected keys {', '.join(others[:3])}"
            )
    else:
        expected = model.backbone.state_dict()
        classifiers = _classifier_keys(model.backbone)
        backbone_state = {
            k: v
            for k, v in state.items()
            if k in expected or not any(k == c or k.startswith(c + ".") for c in classifiers)
        }
        head_state = {}
    load_module_state(model.backbone, backbone_state, str(path), name)
    if head_state:
        if _mismatch_report(head_state, model.head.state_dict()):
            log.info("%s: the saved head does not fit %d classes; the head starts fresh",
                     path, model.num_classes)
        else:
            model.head.load_state_dict(head_state)
