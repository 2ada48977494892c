"""The network's parts that training switches: stochastic depth (``model.drop_path``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vitrina.models.network import DropPath, set_drop_path
from vitrina.models.registry import create_model


def test_drop_path_drops_whole_samples_in_training_and_nothing_at_inference() -> None:
    torch.manual_seed(0)
    drop = DropPath(0.5)
    x = torch.ones(400, 3, 4, 4)
    out = drop(x)
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - rate)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert 0.4 < (per_sample[:, 0] == 0).float().mean().item() < 0.6
    drop.eval()
    assert torch.equal(drop(x), x)


def test_set_drop_path_rises_with_depth_on_the_blocks_that_train_only() -> None:
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False)
    blocks = [m for m in model.modules() if isinstance(getattr(m, "drop_path", None), nn.Module)]
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.backbone.blocks[5].parameters():
        p.requires_grad_(True)
    model.eval()
    image = torch.randn(2, 3, 64, 64)
    before = model(image)
    stage = list(model.backbone.blocks[5])  # four blocks, the first without a shortcut
    assert [b.has_skip for b in stage] == [False, True, True, True]
    assert set_drop_path(model, 0.2) == 3
    assert [b.drop_path.rate for b in stage[1:]] == pytest.approx([0.2 * blocks.index(b) / len(blocks) for b in stage[1:]])
    assert isinstance(stage[0].drop_path, nn.Identity)
    assert all(isinstance(b.drop_path, nn.Identity) for b in blocks if not any(b is s for s in stage))  # frozen: fixed
    assert torch.equal(model(image), before)  # inference is unchanged
    for p in model.backbone.parameters():
        p.requires_grad_(True)
    assert set_drop_path(model, 0.2) == sum(b.has_skip for b in blocks[1:])  # the first block's rate is 0
    assert set_drop_path(model, 0.0) == 0 and all(isinstance(b.drop_path, nn.Identity) for b in blocks)


def test_set_drop_path_gives_every_block_the_rate_timm_builds_it_with() -> None:
    import timm

    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False)
    assert set_drop_path(model, 0.2) > 0
    ours = [b.drop_path for b in model.modules() if isinstance(getattr(b, "drop_path", None), nn.Module)]
    built = timm.create_model("tf_efficientnet_lite0", pretrained=False, drop_path_rate=0.2)
    theirs = [b.drop_path for b in built.modules() if isinstance(getattr(b, "drop_path", None), nn.Module)]
    assert len(ours) == len(theirs) == 16
    for mine, timms, block in zip(ours, theirs, [b for b in built.modules() if hasattr(b, "drop_path")]):
        if block.has_skip:
            assert mine.rate == pytest.approx(timms.drop_prob)
        else:  # timm builds the module but never calls it
            assert isinstance(mine, nn.Identity)


def test_a_block_that_trains_drops_its_branch_for_some_photos() -> None:
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False)
    block = model.backbone.blocks[5][3]  # the deepest block with a shortcut
    set_drop_path(model, 0.8)
    block.train()
    x = torch.randn(64, block.conv_pw.in_channels, 4, 4)
    out = block(x)
    dropped = [torch.equal(out[i], x[i]) for i in range(len(x))]  # a dropped branch leaves the shortcut alone
    assert 0 < sum(dropped) < len(x)
    block.eval()
    assert not any(torch.equal(o, i) for o, i in zip(block(x), x))


def test_set_drop_path_finds_nothing_in_a_network_without_residual_blocks() -> None:
    assert set_drop_path(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), 0.2) == 0
