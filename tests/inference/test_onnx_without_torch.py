"""Predicting from an exported .onnx file needs no PyTorch, in this process or in its model workers:
each worker that imported torch would start about 2 s later and hold about 450 MB more."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import imagegen
from vitrina.preprocess import Preprocess

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Makes `import torch` fail in every interpreter started with this folder on PYTHONPATH.
BLOCK_TORCH = "import sys\nsys.modules['torch'] = None\n"

CHILD = """
import json, sys
from vitrina.api.prediction import predict
summary = predict(sys.argv[1], [sys.argv[2]], out=sys.argv[3], batch_size=8, workers=2, progress=False)
print(json.dumps({"predicted": summary.n_predicted, "errors": summary.n_errors, "workers": summary.workers,
                  "torch": "torch" in sys.modules and sys.modules["torch"] is not None}))
"""


def tiny_onnx(path: Path, classes: list[str], preprocess: Preprocess) -> Path:
    """A real ONNX classifier without torch: mean colour -> 1x1 conv -> softmax, with vitrina metadata."""
    from onnx import TensorProto, helper, numpy_helper

    from vitrina.description import INPUT_NAME, METADATA_KEY, OUTPUT_NAME

    weights = np.random.default_rng(0).standard_normal((len(classes), 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", [INPUT_NAME], ["pooled"]),
            helper.make_node("Conv", ["pooled", "w"], ["logits4"]),
            helper.make_node("Flatten", ["logits4"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 3, preprocess.input_size, preprocess.input_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", len(classes)])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    description = {"classes": classes, "preprocess": preprocess.to_dict(), "model": "tiny"}
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(description))
    onnx.save(model, str(path))
    return path


def test_onnx_prediction_with_model_workers_works_without_torch(tmp_path: Path) -> None:
    model = tiny_onnx(tmp_path / "tiny.onnx", ["red", "green", "blue"], Preprocess(input_size=32))
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(20):  # more than two batches of 8, so the worker processes are used
        (photos / f"{i:02d}.jpg").write_bytes(imagegen.jpeg_bytes(imagegen.photo(48 + i, 40, seed=i)))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = tmp_path / "predictions.csv"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(photos), str(out)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"predicted": 20, "errors": 0, "workers": 2, "torch": False}
    assert len(out.read_text().splitlines()) == 21
