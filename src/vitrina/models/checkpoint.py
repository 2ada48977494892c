"""Model files: weights (safetensors) plus a JSON description that makes them self-describing.

``model.json`` carries everything needed to rebuild and use the network (registry name, class
labels, preprocessing, head shape, thresholds, metrics), so evaluation, export and serving read
it instead of re-deriving anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vitrina import __version__
from vitrina.errors import ModelError
from vitrina.preprocess import Preprocess

FORMAT = "vitrina-model/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def _state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_model(folder: str | Path, model: torch.nn.Module, meta: dict[str, Any], stem: str = "model") -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` into ``folder`` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "vitrina_version": __version__, **meta}
    weights = folder / f"{stem}.safetensors"
    tmp = folder / f".{stem}.safetensors.tmp"
    save_file(_state_dict_for_saving(model), str(tmp))
    os.replace(tmp, weights)
    tmp_meta = folder / f".{stem}.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, folder / f"{stem}.json")
    return weights


def read_meta(path: str | Path) -> dict[str, Any]:
    """The description of a run folder's model (or of a ``model.json`` path)."""
    path = Path(path)
    meta_path = path / META_FILE if path.is_dir() else path.with_suffix(".json")
    if not meta_path.is_file():
        raise ModelError(f"{path}: not a vitrina model (no {meta_path.name} found)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path}: unreadable model description: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{meta_path}: not a vitrina model description (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    return meta


def build_from_meta(meta: dict[str, Any]) -> torch.nn.Module:
    """An untrained network of the described architecture (no pretrained download)."""
    from vitrina.models.registry import create_model

    pre = Preprocess.from_dict(meta["preprocess"])
    model = create_model(
        meta["model"],
        num_classes=len(meta["classes"]),
        pretrained=False,
        channels=pre.channels,
        input_size=pre.input_size,
        head=meta.get("head", "linear"),
        hidden=meta.get("hidden", 512),
        dropout=meta.get("dropout", 0.0),
    )
    if meta.get("neighbours"):
        from vitrina.models.neighbours import NeighbourVote

        model.vote = NeighbourVote.empty(meta["neighbours"], model.num_features, len(meta["classes"]))
    if meta.get("flip_average"):
        model.flip_average = True
    return model


def load_model(path: str | Path, stem: str = "model") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a saved model in eval mode; returns ``(model, meta)``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta = read_meta(folder / f"{stem}.json" if path.is_dir() else path)
    weights = folder / f"{stem}.safetensors"
    if not weights.is_file():
        raise ModelError(f"{folder}: model weights {weights.name} missing")
    model = build_from_meta(meta)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as exc:  # safetensors and torch raise several types for damaged files
        raise ModelError(f"{weights}: cannot load weights: {exc}") from None
    model.eval()
    return model, meta
