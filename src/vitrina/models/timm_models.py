"""Any timm architecture as ``timm:NAME``, with timm's own preprocessing for it.

The registry resolves ``timm:`` names through :func:`timm_spec` (its ``PREFIXES`` table names
it as a string, so the registry does not import this module).

The backbone is the timm model built with ``num_classes=0`` (pooled features out). Weights come
from a local file (``weights=``, loaded by the registry) or, with ``pretrained=True`` and no
file, from timm's hub download.
"""
from __future__ import annotations

import difflib
from functools import partial

from torch import nn

from vitrina.errors import ModelError
from vitrina.models.network import Backbone
from vitrina.models.registry import TIMM_PREFIX, ModelSpec
from vitrina.preprocess import Preprocess


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def timm_block_names(model: nn.Module) -> list[list[str]]:
    """A timm model's stages, input to output, found through its ``feature_info``.

    A stage container named in ``feature_info`` (``blocks.3``, ``stages.1``) contributes each
    of its children; a top-level stage (``layer2``) is one block; runs of other modules with
    parameters (stems such as ``conv_stem`` + ``bn1``, heads such as ``conv_head`` + ``bn2``)
    form one block each.
    """
    info = getattr(model, "feature_info", None) or []
    stage_modules = {entry["module"] for entry in info if isinstance(entry, dict)}
    containers = {name.split(".")[0] for name in stage_modules if "." in name}
    top_level_stages = {name for name in stage_modules if "." not in name}

    groups: list[list[str]] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            groups.append(pending.copy())
            pending.clear()

    for name, child in model.named_children():
        if not _has_parameters(child):
            continue
        if name in containers:
            flush()
            groups.extend(
                [f"{name}.{sub}"] for sub, stage in child.named_children() if _has_parameters(stage)
            )
        elif name in top_level_stages or not stage_modules:
            flush()
            groups.append([name])
        else:
            pending.append(name)
    flush()
    return groups


def pooled_features(model: nn.Module) -> int:
    """Size of what a ``num_classes=0`` timm model returns (after any pre-logits layer)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _pretrained_cfg(arch: str):  # type: ignore[no-untyped-def]
    import timm
    from timm.models import PretrainedCfg, get_pretrained_cfg

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise ModelError(f"unknown timm architecture {arch!r}.{hint}")
    return get_pretrained_cfg(arch) or PretrainedCfg()


def _build(*, arch: str, channels: int, input_size: int, pretrained: bool) -> Backbone:
    import timm

    cfg = _pretrained_cfg(arch)
    kwargs: dict[str, object] = {"num_classes": 0, "in_chans": channels}
    if cfg.fixed_input_size and input_size != cfg.input_size[-1]:
        kwargs["img_size"] = input_size  # position embeddings are sized for the input
    if pretrained:
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as exc:  # hub, network and cache failures have many types
            raise ModelError(
                f"could not get pretrained weights for {TIMM_PREFIX}{arch} ({exc}); "
                "pass --weights PATH with a local weights file (.safetensors or .pth)"
            ) from None
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    return Backbone(model, pooled_features(model), timm_block_names(model))


def timm_spec(arch: str) -> ModelSpec:
    """The spec for timm architecture ``arch``, preprocessing from its ``pretrained_cfg``."""
    cfg = _pretrained_cfg(arch)
    # timm also knows "random" (a training-time choice); evaluation uses bicubic then.
    known = ("bilinear", "bicubic", "nearest", "lanczos")
    interpolation = cfg.interpolation if cfg.interpolation in known else "bicubic"
    preprocess = Preprocess(
        input_size=int(cfg.input_size[-1]),
        mean=tuple(float(m) for m in cfg.mean),
        std=tuple(float(s) for s in cfg.std),
        channels=len(cfg.mean),
        resize="squash" if cfg.crop_mode == "squash" else "center_crop",
        crop_pct=min(1.0, float(cfg.crop_pct)),
        interpolation=interpolation,
    )
    source = cfg.hf_hub_id or cfg.url or None
    return ModelSpec(
        name=TIMM_PREFIX + arch,
        family="timm",
        description=f"timm architecture {arch}",
        preprocess=preprocess,
        builder=partial(_build, arch=arch),
        pretrained_source=f"timm hub: {source}" if source else None,
        default_mode="finetune",
    )
