"""Frozen-backbone features through ONNX Runtime: the same numbers as PyTorch, cached graphs, untouched modules."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitrina.models import create_model, default_preprocess
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.onnx_graph import OnnxFeatureExtractor, weights_digest
from vitrina.models.runtime import forward_uint8


def images(n: int, size: int, channels: int = 3) -> np.ndarray:
    """Smooth random images (gradients plus blobs), closer to photos than white noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((n, size, size, channels), dtype=np.uint8)
    for i in range(n):
        for c in range(channels):
            a, b, f = rng.uniform(-1, 1, 3)
            out[i, :, :, c] = np.clip(127 + 100 * np.sin(3 * f * (a * xx + b * yy) + c), 0, 255)
    return out


@pytest.mark.parametrize("name", ["cnn2", "efficientnet_lite0"])
def test_onnx_features_match_pytorch(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(name, 5, pretrained=name.startswith("efficientnet")).eval()
    model.to(memory_format=torch.channels_last)
    preprocess = default_preprocess(name)
    batch = images(5, preprocess.input_size, preprocess.channels)
    before = weights_digest(model)

    onnx_features = OnnxFeatureExtractor(model, preprocess, tmp_path)(batch, batch_size=2)
    torch_features = forward_uint8(model.forward_features, batch, preprocess, torch.device("cpu"))

    assert onnx_features.shape == torch_features.shape == (5, torch_features.shape[1])
    np.testing.assert_allclose(onnx_features, torch_features, rtol=1e-3, atol=1e-3)
    # the caller's module is left as it was: same weights, still channels_last, for the training that follows
    assert weights_digest(model) == before
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_exported_graph_is_reused_and_ignores_the_head_and_the_vote(tmp_path: Path) -> None:
    preprocess = default_preprocess("cnn1")
    model = create_model("cnn1", 3, pretrained=False)
    OnnxFeatureExtractor(model, preprocess, tmp_path)
    (graph,) = (tmp_path / "onnx").iterdir()
    inode = graph.stat().st_ino  # a new export would replace the file (a new inode); a reuse only marks it used

    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(1.0)  # a new head: the features, and so the graph, stay the same
    OnnxFeatureExtractor(model, preprocess, tmp_path)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [graph.name] and graph.stat().st_ino == inode

    model.vote = NeighbourVote(torch.randn(6, model.num_features), torch.arange(6) % 3, 3, k=2, temperature=0.1, weight=0.5)
    OnnxFeatureExtractor(model, preprocess, tmp_path)  # a neighbour vote (training grows its bank) leaves the features too
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [graph.name] and graph.stat().st_ino == inode

    with torch.no_grad():
        next(p for n, p in model.named_parameters() if not n.startswith("head.")).add_(1.0)
    OnnxFeatureExtractor(model, preprocess, tmp_path)
    assert len(list((tmp_path / "onnx").iterdir())) == 2


def test_empty_input_gives_no_features(tmp_path: Path) -> None:
    preprocess = default_preprocess("cnn1")
    extractor = OnnxFeatureExtractor(create_model("cnn1", 2, pretrained=False), preprocess, tmp_path)
    assert extractor(np.zeros((0, preprocess.input_size, preprocess.input_size, 3), np.uint8)).shape[0] == 0
