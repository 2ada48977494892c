"""The model registry: every named model, scratch presets, heads and weights files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vitrina.errors import ModelError
from vitrina.models import (
    VitrinaNet,
    create_model,
    default_preprocess,
    get_spec,
    list_models,
    param_count,
)

MODEL_NAMES = [spec.name for spec in list_models()]


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registry_lists_the_named_models() -> None:
    assert MODEL_NAMES == [
        "cnn1", "cnn2", "cnn3", "ad_cnn64", "fmnist_cnn", "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"
    ]
    families = {spec.name: spec.family for spec in list_models()}
    assert families["cnn2"] == "scratch" and families["efficientnet_lite0"] == "pretrained"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_and_runs(name: str) -> None:
    preprocess = default_preprocess(name)
    model = create_model(name, 3, pretrained=False).eval()
    assert isinstance(model, VitrinaNet)
    assert model.num_classes == 3
    assert model.in_channels == preprocess.channels == first_conv(model).in_channels
    assert param_count(model) > 0

    x = torch.randn(2, preprocess.channels, preprocess.input_size, preprocess.input_size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        logits_channels_last = model(x.contiguous(memory_format=torch.channels_last))
    assert features.shape == (2, model.num_features)
    assert logits.shape == (2, 3)
    assert torch.allclose(logits_channels_last, logits, atol=1e-4)

    blocks = model.blocks()
    assert blocks and all(param_count(block) > 0 for block in blocks)
    # The blocks are disjoint and hold every backbone parameter.
    block_params = [id(p) for block in blocks for p in block.parameters()]
    assert len(block_params) == len(set(block_params))
    assert set(block_params) == {id(p) for p in model.backbone.parameters()}


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [("cnn2", 1, 50), ("cnn1", 1, 33), ("cnn3", 3, 97), ("fmnist_cnn", 3, 37), ("ad_cnn64", 1, 8)],
)
def test_scratch_presets_take_any_channels_and_size(name: str, channels: int, size: int) -> None:
    preprocess = default_preprocess(name, channels=channels, input_size=size)
    assert preprocess.channels == channels and len(preprocess.mean) == channels
    assert preprocess.input_size == size
    model = create_model(name, 4, channels=channels, input_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(2, channels, size, size)).shape == (2, 4)


def test_scratch_parameters_do_not_depend_on_input_size() -> None:
    small = create_model("cnn2", 5, input_size=50)
    large = create_model("cnn2", 5, input_size=160)
    assert param_count(small) == param_count(large)


def test_scratch_preprocess_squashes_to_minus_one_one() -> None:
    for name in ("cnn1", "cnn2", "cnn3", "ad_cnn64", "fmnist_cnn"):
        p = default_preprocess(name)
        assert p.resize == "squash" and p.crop_pct == 1.0 and p.interpolation == "bilinear"
        assert set(p.mean) == {0.5} and set(p.std) == {0.5}
    assert default_preprocess("fmnist_cnn").channels == 1
    assert default_preprocess("fmnist_cnn").input_size == 28
    assert default_preprocess("ad_cnn64").input_size == 64


def test_preprocess_overrides() -> None:
    gray = default_preprocess("efficientnet_lite0", channels=1, input_size=192, resize="letterbox")
    assert (gray.channels, gray.mean, gray.std) == (1, (0.5,), (0.5,))
    assert (gray.input_size, gray.resize) == (192, "letterbox")
    rgb = get_spec("fmnist_cnn", channels=3).preprocess
    assert rgb.mean == (0.5, 0.5, 0.5)


def test_mlp_head() -> None:
    model = create_model("cnn1", 4, head="mlp", hidden=32, dropout=0.1).eval()
    assert [name for name, _ in model.head.named_children()] == ["fc1", "act", "drop", "fc"]
    assert model.head.fc1.out_features == 32
    with torch.no_grad():
        assert model(torch.randn(2, 3, 40, 40)).shape == (2, 4)


def test_bad_head_and_class_count() -> None:
    with pytest.raises(ModelError, match="unknown head"):
        create_model("cnn1", 4, head="transformer")  # type: ignore[arg-type]
    with pytest.raises(ModelError, match="at least one class"):
        create_model("cnn1", 0)


def test_unknown_name_lists_and_suggests() -> None:
    with pytest.raises(ModelError) as info:
        create_model("efficientnet_lite3", 3)
    message = str(info.value)
    assert "Did you mean" in message and "efficientnet_lite0" in message
    assert "fmnist_cnn" in message and "timm:NAME" in message


# --------------------------------------------------------------------------- weights files
@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict()


@pytest.mark.parametrize("form", ["safetensors", "pth", "checkpoint"])
def test_timm_model_loads_a_local_weights_file(
    form: str, resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    if form == "safetensors":
        path = tmp_path / "resnet18.safetensors"
        save_file(resnet18_state, str(path))
    elif form == "pth":
        path = tmp_path / "resnet18.pth"
        torch.save(resnet18_state, path)
    else:  # a training checkpoint saved from a DataParallel wrapper
        path = tmp_path / "resnet18.pt"
        wrapped = {f"module.{key}": tensor for key, tensor in resnet18_state.items()}
        torch.save({"model": wrapped, "epoch": 3}, path)

    model = create_model("timm:resnet18", 3, weights=path).eval()
    backbone_state = model.backbone.state_dict()
    assert not any(key.startswith("fc.") for key in backbone_state)
    for key, tensor in backbone_state.items():
        assert torch.equal(tensor, resnet18_state[key]), key
    assert model.num_features == 512
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_grayscale_model_takes_rgb_weights(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_state, str(path))
    model = create_model("timm:resnet18", 2, channels=1, weights=path)
    expected = resnet18_state["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.backbone.conv1.weight, expected)


def test_timm_preprocess_and_blocks_follow_timm() -> None:
    import timm

    cfg = timm.get_pretrained_cfg("resnet18")
    preprocess = default_preprocess("timm:resnet18")
    assert preprocess.input_size == cfg.input_size[-1]
    assert preprocess.mean == cfg.mean and preprocess.std == cfg.std
    assert preprocess.crop_pct == cfg.crop_pct and preprocess.interpolation == cfg.interpolation
    assert preprocess.resize == "center_crop"
    model = create_model("timm:resnet18", 2, pretrained=False)
    assert model.block_names == [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    assert get_spec("timm:resnet18").family == "timm"


def test_weights_of_another_architecture_are_refused(
    resnet18_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "resnet18.safetensors"
    save_file(resnet18_state, str(path))
    with pytest.raises(ModelError, match=r"does not fit model cnn2: .*missing .*unexpected"):
        create_model("cnn2", 3, weights=path)
    with pytest.raises(ModelError, match="does not fit model timm:resnet34"):
        create_model("timm:resnet34", 3, weights=path)


def test_unknown_timm_architecture() -> None:
    with pytest.raises(ModelError, match=r"unknown timm architecture .*timm:resnet18"):
        create_model("timm:resnet18x", 3)


def test_vitrina_checkpoint_round_trip(tmp_path: Path) -> None:
    model = create_model("cnn2", 4, channels=1)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": model.state_dict()}, path)

    same = create_model("cnn2", 4, channels=1, weights=path)
    for key, tensor in model.state_dict().items():
        assert torch.equal(same.state_dict()[key], tensor), key

    # Other classes: the backbone is reused, the head starts fresh.
    other = create_model("cnn2", 7, channels=1, weights=path)
    for key, tensor in model.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[key], tensor), key
    assert other.head.fc.out_features == 7

    with pytest.raises(ModelError, match="does not fit model cnn3"):
        create_model("cnn3", 4, channels=1, weights=path)


def test_unreadable_weights_files(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        create_model("cnn1", 2, weights=tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read weights"):
        create_model("cnn1", 2, weights=corrupt)
    unknown = tmp_path / "weights.h5"
    unknown.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown weights format"):
        create_model("cnn1", 2, weights=unknown)


def test_mlp_ensemble_head_averages_half_width_members_and_rebuilds_from_meta() -> None:
    from vitrina.description import ModelDescription
    from vitrina.models.checkpoint import build_from_meta
    from vitrina.models.network import ENSEMBLE_SIZE, HeadEnsemble

    model = create_model("cnn1", 4, head="mlp_ensemble", hidden=32, dropout=0.1).eval()
    head = model.head
    assert isinstance(head, HeadEnsemble) and len(head.members) == ENSEMBLE_SIZE == 3
    assert all(member.fc1.out_features == 16 for member in head.members)
    features = torch.randn(5, model.num_features)
    with torch.no_grad():
        members = torch.stack(head.member_logits(features))
        assert torch.allclose(head(features), members.mean(dim=0))
        assert not torch.allclose(members[0], members[1]), "members start from different weights"
    meta = {"model": "cnn1", "classes": list("abcd"), "preprocess": get_spec("cnn1").preprocess.to_dict(), "head": "mlp_ensemble", "hidden": 32, "dropout": 0.1}
    rebuilt = build_from_meta(ModelDescription.from_dict(meta))
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        x = torch.randn(2, 3, 40, 40)
        assert torch.allclose(rebuilt.eval()(x), model(x))
