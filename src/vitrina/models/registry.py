"""Model registry: named networks with their preprocessing, and ``create_model``.

The registry maps a name (``cnn2``, ``efficientnet_lite0``, ...) to a :class:`ModelSpec` that
knows how to build the backbone (see :mod:`vitrina.models.network`) and how images must be
preprocessed for it. A module adds a model by decorating its builder::

    @register_model("tiny_cnn", family="scratch", description="...", preprocess=Preprocess(...))
    def build(*, channels: int, input_size: int, pretrained: bool) -> Backbone: ...

Nobody imports a model module for its side effects. The first lookup or listing imports, in
order, the builtin modules named in :data:`BUILTIN_MODULES` and then every module named by an
entry point in the group :data:`ENTRY_POINT_GROUP`; each registers its models as it is imported.
A name with a prefix in :data:`PREFIXES` (``timm:NAME``) is not registered but resolved on
demand by the function the table names as ``"module:function"``.
"""
from __future__ import annotations

import difflib
import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Literal, TypeVar, get_args, overload

from vitrina.errors import ModelError
from vitrina.models.network import Backbone, HeadKind, VitrinaNet, make_head
from vitrina.models.weights import load_weights
from vitrina.preprocess import Preprocess


Family = Literal["scratch", "pretrained", "timm"]
TrainMode = Literal["bottleneck", "finetune", "scratch"]

Builder = Callable[..., Backbone]  # builder(channels=, input_size=, pretrained=) -> Backbone
B = TypeVar("B", bound=Builder)

# The builtin model modules, imported on the first lookup; `vitrina models` lists them in this order.
BUILTIN_MODULES = ("vitrina.models.scratch", "vitrina.models.efficientnet_lite")
# Third-party models: each entry point in this group names a module that registers models on import.
ENTRY_POINT_GROUP = "vitrina.models"
TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class PrefixResolver:
    """How names under a prefix resolve: ``target`` is ``"module:function"``, the function takes
    the rest of the name and returns a :class:`ModelSpec`; ``offer`` completes "or ... as PREFIXNAME"
    in the unknown-model message."""

    target: str
    offer: str


PREFIXES: dict[str, PrefixResolver] = {
    TIMM_PREFIX: PrefixResolver("vitrina.models.timm_models:timm_spec", "any timm architecture"),
}


@dataclass(frozen=True)
class ModelSpec:
    """A named network: how to build its backbone and how to preprocess images for it.

    ``builder(channels=..., input_size=..., pretrained=...)`` returns a :class:`Backbone`.
    ``preprocess`` travels with every model built from the spec: training copies it into the
    run's :class:`~vitrina.description.ModelDescription`, which export and serving read.
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


# --------------------------------------------------------------------------- registration
_REGISTRY: dict[str, ModelSpec] = {}


class _Discovery:
    """Whether the builtin and plugin modules were imported; a failure is repeated on every lookup."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.running = False
        self.done = False
        self.failure: str | None = None


_DISCOVERY = _Discovery()


def _import_model_module(what: str, load: Callable[[], object]) -> None:
    try:
        load()
    except ModelError as exc:
        raise ModelError(f"{what}: {exc}") from exc
    except Exception as exc:  # a broken plugin fails in any way; name it
        raise ModelError(f"{what} failed to import: {type(exc).__name__}: {exc}") from exc


def _plugin_entry_points() -> list[EntryPoint]:
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name)


def _discover() -> None:
    """Import the builtin model modules, then the entry-point plugins, once (they register on import).

    Re-entrant: a module being imported here registers through :func:`register_model`, which
    calls this again and returns at once.
    """
    if _DISCOVERY.done and _DISCOVERY.failure is None:
        return
    with _DISCOVERY.lock:
        if _DISCOVERY.running:
            return
        if not _DISCOVERY.done:
            _DISCOVERY.running = True
            try:
                for module in BUILTIN_MODULES:
                    _import_model_module(f"builtin model module {module}", partial(importlib.import_module, module))
                for entry in _plugin_entry_points():
                    _import_model_module(f"model plugin {entry.name!r} ({entry.value})", entry.load)
            except ModelError as exc:
                _DISCOVERY.failure = str(exc)
            finally:
                _DISCOVERY.running = False
                _DISCOVERY.done = True
        if _DISCOVERY.failure is not None:
            raise ModelError(_DISCOVERY.failure)


def _origin(spec: ModelSpec) -> str:
    """The module that defines ``spec``'s builder (through any ``functools.partial``)."""
    builder = spec.builder
    while isinstance(builder, partial):
        builder = builder.func
    return getattr(builder, "__module__", None) or "?"


def _add(spec: ModelSpec) -> ModelSpec:
    for prefix in PREFIXES:
        if spec.name.startswith(prefix):
            raise ModelError(f"cannot register {spec.name!r}: names starting with {prefix!r} are reserved")
    if not spec.name or spec.name != spec.name.strip():
        raise ModelError(f"cannot register {spec.name!r}: a model name must be non-empty, without surrounding spaces")
    if spec.family not in get_args(Family):
        raise ModelError(f"cannot register {spec.name!r}: family must be one of {', '.join(get_args(Family))}, got {spec.family!r}")
    if spec.default_mode not in get_args(TrainMode):
        raise ModelError(f"cannot register {spec.name!r}: default_mode must be one of {', '.join(get_args(TrainMode))}, "
                         f"got {spec.default_mode!r}")
    _discover()  # a name clashing with a builtin or a plugin fails here, at the registration that clashes
    if spec.name in _REGISTRY:
        raise ModelError(f"model {spec.name!r} is already registered (by {_origin(_REGISTRY[spec.name])})")
    _REGISTRY[spec.name] = spec
    return spec


@overload
def register_model(spec: ModelSpec, /) -> ModelSpec: ...


@overload
def register_model(
    name: str,
    /,
    *,
    family: Family,
    description: str,
    preprocess: Preprocess,
    pretrained_source: str | None = None,
    default_mode: TrainMode = "finetune",
) -> Callable[[B], B]: ...


def register_model(
    spec_or_name: ModelSpec | str,
    /,
    *,
    family: Family | None = None,
    description: str = "",
    preprocess: Preprocess | None = None,
    pretrained_source: str | None = None,
    default_mode: TrainMode = "finetune",
) -> ModelSpec | Callable[[B], B]:
    """Add a model under a unique name: ``register_model(spec)``, or as a decorator on its builder.

    The decorator form, ``@register_model("name", family=..., description=..., preprocess=...)``
    on ``def build(*, channels, input_size, pretrained) -> Backbone``, returns the builder unchanged.
    A duplicate name or one under a reserved prefix (``timm:``) raises :class:`ModelError`.
    """
    if isinstance(spec_or_name, ModelSpec):
        if family is not None or preprocess is not None:
            raise ModelError("register_model(spec) takes no other arguments; the spec holds them")
        return _add(spec_or_name)
    name = spec_or_name
    if family is None or preprocess is None:
        raise ModelError(f"register_model({name!r}, ...) needs family= and preprocess=")

    def decorate(builder: B) -> B:
        _add(ModelSpec(name=name, family=family, description=description, preprocess=preprocess,
                       builder=builder, pretrained_source=pretrained_source, default_mode=default_mode))
        return builder

    return decorate


def unregister_model(name: str) -> ModelSpec:
    """Remove the registered model ``name`` and return its spec (for tests and plugins)."""
    _discover()
    if name not in _REGISTRY:
        raise ModelError(f"cannot unregister {name!r}: no such registered model")
    return _REGISTRY.pop(name)


@contextmanager
def temporary_models() -> Iterator[None]:
    """The registry as it was when the ``with`` block ends: models registered inside it are gone,
    models unregistered inside it are back (for tests)."""
    _discover()
    before = dict(_REGISTRY)
    try:
        yield
    finally:
        _REGISTRY.clear()
        _REGISTRY.update(before)


# --------------------------------------------------------------------------- lookup
def list_models() -> list[ModelSpec]:
    """Every named model: the builtins in :data:`BUILTIN_MODULES` order, then plugins' and others'
    in registration order (``timm:NAME`` models are not listed)."""
    _discover()
    rank = {module: i for i, module in enumerate(BUILTIN_MODULES)}
    return sorted(_REGISTRY.values(), key=lambda spec: rank.get(_origin(spec), len(rank)))


def _unknown_model(name: str) -> ModelError:
    names = [spec.name for spec in list_models()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else ""
    offers = ", ".join(f"{resolver.offer} as {prefix}NAME" for prefix, resolver in PREFIXES.items())
    return ModelError(f"unknown model {name!r}.{hint} Available: {', '.join(names)}, or {offers}.")


def _resolve_prefixed(name: str) -> ModelSpec | None:
    """The spec for a name under a prefix in :data:`PREFIXES`; None for any other name."""
    for prefix, resolver in PREFIXES.items():
        if name.startswith(prefix):
            module, _, function = resolver.target.partition(":")
            resolve = getattr(importlib.import_module(module), function)
            return resolve(name[len(prefix):])
    return None


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
    spec = _resolve_prefixed(name)
    if spec is None:
        _discover()
        if name not in _REGISTRY:
            raise _unknown_model(name)
        spec = _REGISTRY[name]
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


# --------------------------------------------------------------------------- building
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
