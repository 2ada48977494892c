"""Model files: weights (safetensors) plus a JSON description that makes them self-describing.

``model.json`` holds the model's :class:`~vitrina.description.ModelDescription` (registry name,
classes, preprocessing, head shape, thresholds, unknown-photo detector, vote, digest of the
weights), so evaluation, export and serving read it instead of re-deriving anything.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vitrina.description import FORMAT, META_FILE, WEIGHTS_FILE, ModelDescription
from vitrina.errors import ModelError
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.network import VitrinaNet
from vitrina.models.registry import create_model
from vitrina.version import __version__

log = logging.getLogger("vitrina")
__all__ = ["META_FILE", "WEIGHTS_FILE", "build_from_meta", "file_digest", "load_model", "read_meta", "save_model", "state_dict_for_saving"]


def state_dict_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights and buffers on the CPU, as files store them."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: Path, recorded: str | None) -> None:
    """ModelError when a weights file no longer matches the digest its description recorded
    (a warning for models saved before digests existed)."""
    if recorded is None:
        log.warning("%s: saved before weight digests existed; it cannot be checked for damage", path)
        return
    if file_digest(path) != recorded:
        raise ModelError(f"{path}: the weights file is damaged (it does not match the digest in its description); "
                         "train or copy it again")


def save_model(folder: str | Path, model: torch.nn.Module, description: ModelDescription, stem: str = "model") -> Path:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` (the description, with the weights' digest) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{stem}.safetensors"
    tmp = folder / f".{stem}.safetensors.tmp"
    save_file(state_dict_for_saving(model), str(tmp))
    description = description.with_changes(vitrina_version=__version__, weights_digest=file_digest(tmp))
    os.replace(tmp, weights)
    tmp_meta = folder / f".{stem}.json.tmp"
    tmp_meta.write_text(json.dumps(description.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp_meta, folder / f"{stem}.json")
    return weights


def read_meta(path: str | Path) -> ModelDescription:
    """The description of a run folder's model (or of a ``model.json`` path)."""
    path = Path(path)
    meta_path = path / META_FILE if path.is_dir() else path.with_suffix(".json")
    if not meta_path.is_file():
        raise ModelError(f"{path}: not a vitrina model (no {meta_path.name} found)")
    try:
        data = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{meta_path}: unreadable model description: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ModelError(f"{meta_path}: not a vitrina model description (format {data.get('format') if isinstance(data, dict) else None!r})")
    return ModelDescription.from_dict(data, meta_path)


def build_from_meta(description: ModelDescription) -> VitrinaNet:
    """An untrained network of the described architecture (no pretrained download)."""
    pre = description.preprocess
    model = create_model(
        description.model, num_classes=description.num_classes, pretrained=False, channels=pre.channels,
        input_size=pre.input_size, head=description.head, hidden=description.hidden, dropout=description.dropout,  # type: ignore[arg-type]
    )
    if description.neighbours is not None:
        model.vote = NeighbourVote.empty(description.neighbours, model.num_features, description.num_classes)
    model.flip_average = description.flip_average
    return model


def load_model(path: str | Path, stem: str = "model") -> tuple[VitrinaNet, ModelDescription]:
    """Rebuild a saved model in eval mode; returns ``(model, description)``."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    description = read_meta(folder / f"{stem}.json" if path.is_dir() else path)
    weights = folder / f"{stem}.safetensors"
    if not weights.is_file():
        raise ModelError(f"{folder}: model weights {weights.name} missing")
    verify_weights(weights, description.weights_digest)
    model = build_from_meta(description)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as exc:  # safetensors and torch raise several types for damaged files
        raise ModelError(f"{weights}: cannot load weights: {exc}") from None
    model.eval()
    return model, description
