"""The exported graph: the network (and its unknown-photo score) as ONNX, its metadata, int8 quantisation.

The graph takes ``input`` (float32 N x C x H x W, already normalised by
:class:`~vitrina.preprocess.Preprocess`, dynamic batch) and returns ``probabilities`` (N x classes,
softmax inside the graph) and, for a model with an unknown-photo detector, ``unknown_score``. The
file's metadata entry ``vitrina`` holds the model's whole description plus its metrics and the
export's own checks, so an ``.onnx`` file alone is enough to predict.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from vitrina.description import INPUT_NAME, METADATA_KEY, OUTPUT_NAME, SCORE_OUTPUT, ExportInfo, ModelDescription
from vitrina.errors import ModelError
from vitrina.inference.predictor import parse_onnx_metadata
from vitrina.models.onnx_graph import module_to_onnx, quantize_int8_graph
from vitrina.models.unknown import ScoredNet, UnknownScore
from vitrina.preprocess import Preprocess
from vitrina.version import __version__

OPSET = 18


def to_onnx(model: nn.Module, preprocess: Preprocess, scorer: UnknownScore | None = None) -> onnx.ModelProto:
    """The fp32 network plus softmax as an ONNX graph with a dynamic batch axis.

    With ``scorer`` (the model's unknown-photo detector) the graph has a second output,
    :data:`SCORE_OUTPUT`, computed from the same forward pass.
    """
    class WithSoftmax(torch.nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(x), dim=1)

    size = preprocess.input_size
    example = torch.zeros(2, preprocess.channels, size, size)  # batch 2: batch 1 would be specialised
    if scorer is None:
        return module_to_onnx(WithSoftmax(model), example, INPUT_NAME, OUTPUT_NAME, OPSET)
    return module_to_onnx(ScoredNet(model, scorer), example, INPUT_NAME, [OUTPUT_NAME, SCORE_OUTPUT], OPSET)


def describe(description: ModelDescription, metrics: dict[str, Any], precision: str, checks: dict[str, Any],
             outputs: list[str] | None = None) -> ModelDescription:
    """What an exported file carries: the model's description, its metrics and the export's checks."""
    export = ExportInfo(precision=precision, opset=OPSET, input=INPUT_NAME, output=OUTPUT_NAME,
                        outputs=tuple(outputs or [OUTPUT_NAME]), vitrina_version=__version__,
                        exported_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), checks=checks)
    return description.with_changes(metrics=metrics, export=export)


def save_onnx(proto: onnx.ModelProto, path: Path, description: ModelDescription) -> Path:
    """Write ``proto`` with ``description`` as its ``vitrina`` metadata, atomically."""
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(description.to_dict(), ensure_ascii=False))
    proto.producer_name, proto.producer_version = "vitrina", __version__
    proto.doc_string = f"vitrina {description.model} classifier over {description.num_classes} classes"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return path


def read_description(path: str | Path) -> ModelDescription:
    """The model description stored in an exported ``.onnx`` file."""
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from None
    return parse_onnx_metadata({p.key: p.value for p in proto.metadata_props}, path)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, preprocess: Preprocess) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``calibration`` images."""
    vote = _vote_nodes(onnx.load_model(str(fp32_path)).graph)

    def excluded(graph: onnx.GraphProto) -> list[str]:
        # A quantised softmax would round every probability to a multiple of 1/255. Of the unknown
        # score only the product with the kNN bank is quantised: at batch 1 that product reads the
        # whole bank, so int8 makes it 4x cheaper; the rest of the score stays in float. The
        # neighbour vote mixes probabilities, so it stays in float whole.
        by_name = {node.name: node for node in graph.node}
        return [node.name for node in graph.node if node.op_type == "Softmax" or node.name in vote] + [
            name for name in _score_only_nodes(graph) if by_name[name].op_type != "MatMul"]

    batches = (preprocess.normalize(calibration[start : start + 16]) for start in range(0, len(calibration), 16))
    quantize_int8_graph(fp32_path, int8_path, batches, excluded, input_name=INPUT_NAME)


def _vote_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the neighbour vote's nodes (``VitrinaNet.vote``), by the exporter's module scopes.

    The torch.export-based exporter records them in each node's metadata, the TorchScript one in
    the node name; quant_pre_process keeps the names but drops the metadata.
    """
    def in_vote(node: onnx.NodeProto) -> bool:
        scopes = [p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        return "/vote/" in node.name or any(".vote'" in value or "'vote'" in value for value in scopes)

    return {node.name for node in graph.node if in_vote(node)}


def _score_only_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that the probabilities output does not depend on (the unknown-score subgraph)."""
    producer = {output: node for node in graph.node for output in node.output}
    needed, stack = set(), [OUTPUT_NAME]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    return [node.name for node in graph.node if node.name not in needed]


