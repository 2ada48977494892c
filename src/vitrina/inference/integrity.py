"""Damaged ONNX files: a digest of the weights, recorded at export and checked when the file loads.

An exported ``.onnx`` file records the sha256 of its initializers (names, shapes, types and bytes:
the weights, whatever the metadata says) under ``export.weights_digest`` (a run folder's
``model.json`` records the sha256 of ``model.safetensors`` likewise, checked by
:func:`vitrina.models.checkpoint.load_model`). A file whose weights no longer match is refused
with a clear error (a server keeps the model it has); a file exported before digests existed
loads with a warning.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from vitrina.errors import ModelError

log = logging.getLogger("vitrina")


def onnx_weights_digest(graph: Any) -> str:
    """sha256 over an ONNX graph's initializers in order (an ``onnx.GraphProto``)."""
    digest = hashlib.sha256()
    for tensor in graph.initializer:
        digest.update(f"{tensor.name}|{list(tensor.dims)}|{tensor.data_type}|".encode())
        digest.update(tensor.raw_data if tensor.raw_data else tensor.SerializeToString())
    return digest.hexdigest()


def verify_onnx_file(path: str | Path, recorded: str | None) -> None:
    """ModelError when the weights in ``path`` no longer match the digest its export recorded."""
    if recorded is None:
        log.warning("%s: exported before weight digests existed; it cannot be checked for damage", path)
        return
    import onnx  # lazy: the onnx package loads only to check a file, not in every worker

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from None
    if onnx_weights_digest(proto.graph) != recorded:
        raise ModelError(f"{path}: the model file is damaged (its weights do not match the digest recorded at export); export it again")
