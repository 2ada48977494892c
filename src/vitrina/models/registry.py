"""Model registry: named networks with their preprocessing, and ``create_model``.

Every network vitrina builds is a :class:`VitrinaNet`: a ``backbone`` that turns an image into
a pooled feature vector and a ``head`` that turns the features into logits. The registry maps a
name (``cnn2``, ``efficientnet_lite0``, ...) to a :class:`ModelSpec` that knows how to build the
backbone and how images must be preprocessed for it; ``timm:NAME`` reaches any timm
architecture without being listed.
"""
from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vitrina.errors import ModelError
from vitrina.preprocess import Preprocess

log = logging.getLogger(__name__)

Family = Literal["scratch", "pretrained", "timm"]
TrainMode = Literal["bottleneck", "finetune", "scratch"]
HeadKind = Literal["linear", "mlp", "mlp_ensemble"]
ENSEMBLE_SIZE = 3  # MLPs in an "mlp_ensemble" head

TIMM_PREFIX = "timm:"
_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


# --------------------------------------------------------------------------- the network
class HeadEnsemble(nn.Module):
    """Heads of one kind trained side by side from different initial weights; their logits averaged.

    On frozen features a single MLP head's test accuracy moves by about 3 points with its random
    initialisation (freiburg split 0); the mean of three moves less and is about half a point higher.
    """

    def __init__(self, members: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def member_logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [member(features) for member in self.members]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.member_logits(features)).mean(dim=0)


def make_head(
    num_features: int,
    num_classes: int,
    kind: HeadKind = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
) -> nn.Module:
    """Features -> logits: dropout then a linear layer, a one-hidden-layer MLP, or an ensemble of MLPs."""
    if num_classes < 1:
        raise ModelError(f"a model needs at least one class, got num_classes={num_classes}")
    if kind == "mlp_ensemble":  # members half as wide: about the cost of two MLPs, for most of the gain of full ones
        return HeadEnsemble([make_head(num_features, num_classes, "mlp", max(1, hidden // 2), dropout) for _ in range(ENSEMBLE_SIZE)])
    if kind == "linear":
        layers = [("drop", nn.Dropout(dropout)), ("fc", nn.Linear(num_features, num_classes))]
    elif kind == "mlp":
        layers = [
            ("fc1", nn.Linear(num_features, hidden)),
            ("act", nn.ReLU(inplace=True)),
            ("drop", nn.Dropout(dropout)),
            ("fc", nn.Linear(hidden, num_classes)),
        ]
    else:
        raise ModelError(f"unknown head {kind!r} (choose linear, mlp or mlp_ensemble)")
    return nn.Sequential(OrderedDict(layers))


class VitrinaNet(nn.Module):
    """``backbone`` (image -> pooled features) followed by ``head`` (features -> logits).

    A trained network may also carry a ``vote`` (:class:`~vitrina.models.neighbours.NeighbourVote`):
    then :meth:`forward_head` returns the log of the head's softmax mixed with its nearest
    training photos' vote (still "logits": their softmax is the mixed probabilities), and
    :meth:`head_logits` the head's own logits. With ``flip_average`` (chosen in training when it
    helps on the validation split) :meth:`forward` averages the probabilities of each image and
    its mirror image.

    ``block_names`` lists the backbone's stages from input to output, each as the names of the
    backbone submodules that form it; :meth:`blocks` resolves them (fine-tuning unfreezes the
    last N).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_features: int,
        num_classes: int,
        in_channels: int,
        block_names: Sequence[Sequence[str]],
    ):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features = num_features
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.block_names = [list(names) for names in block_names]
        self.vote: nn.Module | None = None
        self.flip_average = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> pooled features (N, num_features)."""
        return self.backbone(x)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) -> the head's logits (N, num_classes), without the vote."""
        return self.head(features)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, num_features) -> logits (N, num_classes), the neighbour vote included."""
        logits = self.head(features)
        if self.vote is None:
            return logits
        return torch.log(self.vote(features, logits).clamp_min(1e-12))

    def classify(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features -> (class probabilities, the head's own logits) in one pass."""
        logits = self.head(features)
        probs = torch.softmax(logits.float(), dim=1) if self.vote is None else self.vote(features, logits)
        return probs, logits

    def classify_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images -> (class probabilities, pooled features and head logits of the images as given)."""
        features = self.backbone(x)
        probs, logits = self.classify(features)
        if self.flip_average:
            probs = (probs + self.classify(self.backbone(torch.flip(x, dims=[3])))[0]) / 2
        return probs, features, logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.flip_average:
            return self.forward_head(self.backbone(x))
        return torch.log(self.classify_images(x)[0].clamp_min(1e-12))

    def blocks(self) -> list[nn.Module]:
        """The backbone's stages, input to output (a multi-module stage is a ModuleList)."""
        stages: list[nn.Module] = []
        for names in self.block_names:
            modules = [self.backbone.get_submodule(name) for name in names]
            stages.append(modules[0] if len(modules) == 1 else nn.ModuleList(modules))
        return stages


@dataclass(frozen=True)
class Backbone:
    """What a builder returns: the feature extractor and how to describe it."""

    module: nn.Module
    num_features: int
    block_names: list[list[str]]


Builder = Callable[..., Backbone]  # builder(channels=, input_size=, pretrained=) -> Backbone


@dataclass(frozen=True)
class ModelSpec:
    """A named network: how to build its backbone and how to preprocess images for it.

    ``builder(channels=..., input_size=..., pretrained=...)`` returns a :class:`Backbone`.
    ``pretrained_source`` says where pretrained weights come from (None: none exist).
    ``default_mode`` is the training mode the network suits best.
    """

    name: str
    family: Family
    description: str
    preprocess: Preprocess
    builder: Builder
    pretrained_source: str | None = None
    default_mode: TrainMode = "finetune"


# --------------------------------------------------------------------------- the registry
_REGISTRY: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` under its name (names are unique)."""
    if spec.name in _REGISTRY:
        raise ModelError(f"model {spec.name!r} is already registered")
    if spec.name.startswith(TIMM_PREFIX):
        raise ModelError(f"names starting with {TIMM_PREFIX!r} are reserved for timm models")
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """Every named model, in registration order (``timm:NAME`` models are not listed)."""
    return list(_REGISTRY.values())


def _unknown_model(name: str) -> ModelError:
    names = list(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    return ModelError(
        f"unknown model {name!r}.{hint} Available: {', '.join(names)}, "
        f"or any timm architecture as {TIMM_PREFIX}NAME."
    )


def _with_channels(preprocess: Preprocess, channels: int) -> Preprocess:
    """The same preprocessing for ``channels`` input channels (mean/std averaged or repeated)."""
    if channels == preprocess.channels:
        return preprocess
    if channels not in (1, 3):
        raise ModelError(f"channels must be 1 or 3, got {channels}")
    if channels == 1:
        mean = (sum(preprocess.mean) / len(preprocess.mean),)
        std = (sum(preprocess.std) / len(preprocess.std),)
    else:
        mean, std = preprocess.mean * 3, preprocess.std * 3
    return replace(preprocess, channels=channels, mean=mean, std=std)


def get_spec(name: str, channels: int | None = None, input_size: int | None = None) -> ModelSpec:
    """The spec for ``name``, its preprocessing adapted to ``channels`` and ``input_size``."""
    if name.startswith(TIMM_PREFIX):
        from vitrina.models.timm_models import timm_spec

        spec = timm_spec(name[len(TIMM_PREFIX):])
    elif name in _REGISTRY:
        spec = _REGISTRY[name]
    else:
        raise _unknown_model(name)
    preprocess = spec.preprocess
    if channels is not None:
        preprocess = _with_channels(preprocess, channels)
    if input_size is not None:
        preprocess = preprocess.with_overrides(input_size=input_size)
    return replace(spec, preprocess=preprocess)


def default_preprocess(
    name: str,
    channels: int | None = None,
    input_size: int | None = None,
    resize: str | None = None,
) -> Preprocess:
    """The preprocessing a model expects, with optional overrides."""
    preprocess = get_spec(name, channels, input_size).preprocess
    return preprocess.with_overrides(resize=resize)


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    channels: int | None = None,
    input_size: int | None = None,
    head: HeadKind = "linear",
    hidden: int = 512,
    dropout: float = 0.2,
) -> VitrinaNet:
    """Build the registry model ``name`` with a fresh head for ``num_classes`` classes.

    ``weights`` (a local file) replaces the pretrained weights; ``pretrained=False`` starts
    from random weights. Scratch models have no pretrained weights.
    """
    spec = get_spec(name, channels, input_size)
    preprocess = spec.preprocess
    backbone = spec.builder(
        channels=preprocess.channels,
        input_size=preprocess.input_size,
        pretrained=pretrained and weights is None,
    )
    model = VitrinaNet(
        backbone=backbone.module,
        head=make_head(backbone.num_features, num_classes, head, hidden, dropout),
        num_features=backbone.num_features,
        num_classes=num_classes,
        in_channels=preprocess.channels,
        block_names=backbone.block_names,
    )
    if weights is not None:
        load_weights(model, weights, spec.name)
    return model


def param_count(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- weights files
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a state dict, or a checkpoint holding one.

    ``.safetensors`` files are read with safetensors, others with ``torch.load`` restricted to
    plain tensors and containers (``weights_only=True``), which never runs pickled code.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.suffix.lower() not in _WEIGHT_SUFFIXES:
        raise ModelError(
            f"{path}: unknown weights format (expected {', '.join(_WEIGHT_SUFFIXES)})"
        )
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

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
