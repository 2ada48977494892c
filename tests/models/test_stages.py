"""Fine-tuning's cut at the frozen stages: the two halves compute the whole network, in PyTorch and ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitrina.models import create_model
from vitrina.models.onnx_graph import weights_digest
from vitrina.models.stages import OnnxPrefix, split_at_trainable


@pytest.mark.parametrize("trainable_blocks", [1, 4, 7])
def test_prefix_and_tail_compute_the_network(trainable_blocks: int, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 4).eval()
    before = weights_digest(model)
    prefix, tail = split_at_trainable(model, trainable_blocks)
    assert prefix.num_stages == 7 + 2 - trainable_blocks - 1
    x = torch.rand(3, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        whole = model(x)
        np_prefix = OnnxPrefix(prefix, 3, 96, tmp_path)
        assert torch.equal(tail(prefix(x)), whole)
        torch.testing.assert_close(tail(np_prefix(x)), whole, rtol=1e-4, atol=1e-4)
    assert len(list((tmp_path / "onnx").glob("prefix-*.onnx"))) == 1
    assert weights_digest(model) == before, "exporting the prefix must not touch the network"
    # The tail shares the network's parameters: training it trains the network.
    tail_params = {id(p) for p in tail.parameters()}
    assert all(id(p) in tail_params for p in model.blocks()[-1].parameters())
    assert all(id(p) in tail_params for p in model.head.parameters())
    assert not any(id(p) in tail_params for p in model.blocks()[0].parameters())


@pytest.mark.parametrize("trainable_blocks", [-1, 0, 8, 9])
def test_nothing_to_cut_is_none(trainable_blocks: int) -> None:
    """All trainable, or no stage left on one side of the cut: the network runs whole."""
    assert split_at_trainable(create_model("efficientnet_lite0", 4, pretrained=False), trainable_blocks) is None


def test_other_architectures_are_not_cut() -> None:
    assert split_at_trainable(create_model("cnn2", 3), 2) is None
