"""Fine-grained regularisation: the weight average, mixup/CutMix, TrivialAugment, layer-wise learning rates,
stochastic depth."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tests.helpers import make_shapes_dataset
from vitrina import api
from vitrina.config import AugmentConfig, resolve
from vitrina.errors import ConfigError
from vitrina.training.augment import build_augment
from vitrina.training.ema import WeightAverage
from vitrina.training.mixing import BatchMix, MixedBatch, mixed_cross_entropy


def test_weight_average_follows_the_weights_and_swaps_them_in_only_inside_the_block() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[0].bias.requires_grad_(False)
    average = WeightAverage(model, decay=0.5)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    average.update()  # step 0: decay min(0.5, 1/10) = 0.1, so 90% of the new weights
    assert torch.allclose(average.average["p.0.weight"], start + 0.9)
    assert "p.0.bias" not in average.average  # frozen: not averaged
    assert "b.1.running_mean" in average.average and "b.1.num_batches_tracked" not in average.average
    with average.applied():
        assert torch.allclose(model[0].weight, start + 0.9)
    assert torch.allclose(model[0].weight, start + 1.0)
    restored = WeightAverage(model, decay=0.5)
    restored.load_state_dict(average.state_dict())
    assert restored.steps == 1 and torch.allclose(restored.average["p.0.weight"], start + 0.9)
    with pytest.raises(ValueError):
        WeightAverage(model, decay=1.0)


def test_mixup_and_cutmix_mix_pairs_and_share_the_loss() -> None:
    torch.manual_seed(0)
    images = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    labels = torch.tensor([0, 1])
    mixed = BatchMix(mixup=1.0, cutmix=0.0)(images, labels)
    assert torch.allclose(mixed.images[0], torch.full((3, 8, 8), 1.0 - mixed.share))
    assert mixed.partner_labels.tolist() == [1, 0]
    cut = BatchMix(mixup=0.0, cutmix=1.0)(images, labels)
    assert set(cut.images[0].unique().tolist()) <= {0.0, 1.0}
    assert cut.images[0].mean().item() == pytest.approx(1.0 - cut.share)  # the share is the box as cut
    assert BatchMix.build(0.0, 0.0) is None
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    half = MixedBatch(images, labels, labels.flip(0), 0.5)
    ce = nn.functional.cross_entropy
    assert mixed_cross_entropy(logits, half, None, 0.0).item() == pytest.approx(
        0.5 * ce(logits, labels).item() + 0.5 * ce(logits, labels.flip(0)).item())


def test_trivialaugment_changes_photos_and_keeps_their_shape() -> None:
    torch.manual_seed(0)
    augment = build_augment(AugmentConfig(hflip=0.0, rotation=0, shift=0, shear=0, zoom=0, color_jitter=0, trivialaugment=True))
    assert augment is not None
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)


@pytest.mark.parametrize("key, value", [("train.ema_decay", "1.5"), ("train.layer_decay", "0"), ("augment.mixup", "-1"),
                                        ("model.drop_path", "0.95")])
def test_out_of_range_regularisation_settings_are_clear_errors(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve(overrides={key: value})


def test_finetune_with_every_regulariser_keeps_the_average_and_a_raw_resume_point(tmp_path: Path) -> None:
    data = make_shapes_dataset(tmp_path / "shapes", per_class=12, size=64)
    cfg = {
        "train.mode": "finetune", "model.input_size": 64, "train.epochs": 2, "train.batch_size": 8, "train.workers": 1,
        "train.patience": 0, "train.warm_start_head": False, "train.cache_dir": str(tmp_path / "cache"),
        "train.unfreeze_blocks": 3, "train.ema_decay": 0.99, "train.layer_decay": 0.5,
        "augment.mixup": 0.4, "augment.cutmix": 1.0, "augment.trivialaugment": True, "train.budget_minutes": None,
        "model.drop_path": 0.2,
    }
    lines: list[str] = []
    run = api.train(data, resolve(overrides=cfg), out=tmp_path / "run", progress=False, log=lines.append)
    assert len(run.history) == 2 and run.metrics["accuracy"] > 0
    # The last 3 of lite0: stages 5 (four blocks, three with a shortcut) and 6 (one, without), and the head conv.
    assert "  stochastic depth (0.2 x depth) in 3 residual blocks that train" in lines
    state = torch.load(run.run_dir / "train_state.pt", weights_only=False)
    assert state["ema_steps"] > 0 and state["ema_average"]
    saved = json.loads((run.run_dir / "model.json").read_text())
    assert saved["classes"] == ["bar", "disc", "square"]
    # The run keeps the averaged weights of its best epoch; the resume point holds the raw ones.
    best, last = load_file(run.run_dir / "model.safetensors"), load_file(run.run_dir / "last.safetensors")
    trained = [k for k in best if k.startswith("backbone.blocks.6") and k.endswith("weight")]
    assert trained and any(not torch.equal(best[k], last[k]) for k in trained)


def test_layer_decay_gives_each_trained_block_its_own_learning_rate(tmp_path: Path) -> None:
    from vitrina.training.loop import _parameter_groups

    class Job:  # what _parameter_groups reads
        def __init__(self, model: nn.Module, decay: float):
            self.model = model
            self.config = resolve(overrides={"train.layer_decay": decay, "train.body_lr_scale": 0.1})
            self.plan = type("Plan", (), {"mode": "finetune", "lr": 1.0, "unfreeze_blocks": 3})()

    from vitrina.models.registry import create_model
    model = create_model("efficientnet_lite0", num_classes=3, pretrained=False)
    groups = _parameter_groups(Job(model, 0.5))  # type: ignore[arg-type]
    assert [round(g["lr"], 4) for g in groups] == [0.025, 0.05, 0.1, 1.0]
    assert [g["name"] for g in groups][-1] == "head"
    plain = _parameter_groups(Job(model, 1.0))  # type: ignore[arg-type]
    assert [g["lr"] for g in plain] == [0.1, 1.0]


def test_trivialaugment_and_randaugment_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="trivialaugment"):
        build_augment(AugmentConfig(rotation=0, shift=0, shear=0, zoom=0, color_jitter=0, trivialaugment=True, randaugment=2))
