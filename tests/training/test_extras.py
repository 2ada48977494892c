"""Post-fit extras: the mirror-image average is kept only where it pays for its extra passes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitrina.description import MirrorAverage
from vitrina.models import create_model
from vitrina.models.unknown import penultimate_features
from vitrina.preprocess import Preprocess, mirror_images
from vitrina.training.extras import choose_mirror_average, mirror_options, pays_for_itself
from vitrina.training.plan import Plan


def test_the_rule_weighs_gain_against_extra_passes() -> None:
    assert pays_for_itself(5, 1000, 2.0)  # 0.5 points for a second pass on every photo
    assert not pays_for_itself(4, 1000, 2.0)  # 0.4 points: not worth doubling the cost
    assert pays_for_itself(3, 1000, 1.2)  # 0.3 points >= 0.1
    assert not pays_for_itself(2, 100, 1.1)  # 2 points, but only 2 photos: chance
    assert pays_for_itself(3, 10_000, 1.05)  # 0.03 points >= 0.025


def unsure_photos_fixed_by_the_mirror(n: int = 200, unsure: int = 20, fixed: int = 8, seed: int = 0):
    """``unsure`` photos have a small margin; the mirror pass gets ``fixed`` of them right; sure photos stay right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    plain = np.full((n, 3), 0.05)
    plain[np.arange(n), labels] = 0.9
    flipped = plain.copy()
    for i in range(unsure):
        wrong = (labels[i] + 1) % 3
        plain[i] = 0.1
        plain[i, wrong], plain[i, labels[i]] = 0.46, 0.44  # wrong, barely
        flipped[i] = 0.1
        flipped[i, labels[i]], flipped[i, wrong] = (0.8, 0.1) if i < fixed else (0.3, 0.6)
    return plain, flipped, labels


def test_an_adaptive_margin_keeps_the_gain_at_a_fraction_of_the_passes() -> None:
    plain, flipped, labels = unsure_photos_fixed_by_the_mirror()
    options = mirror_options(plain, flipped, labels)
    full = options[-1]
    assert math.isinf(full.policy.margin) and full.policy.passes == 2.0 and full.gain_photos == 8
    adaptive = [o for o in options if o.gain_photos == 8 and o.policy.passes <= 1.2]
    assert adaptive, "mirroring the least sure photos alone gets every fixable one"
    assert all(o.policy.full_gain_points == pytest.approx(4.0) for o in options)
    best = max((o for o in options if pays_for_itself(o.gain_photos, len(labels), o.policy.passes)), key=lambda o: o.net_points(len(labels)))
    assert best.policy.passes <= 1.2 and best.gain_photos == 8


def test_a_policy_mirrors_only_the_photos_it_is_unsure_of() -> None:
    plain, flipped, _ = unsure_photos_fixed_by_the_mirror(n=50, unsure=5)
    calls = []

    def mirrored(rows: np.ndarray) -> np.ndarray:
        calls.append(rows)
        return flipped[rows]

    probs, n = MirrorAverage(margin=0.1).apply(plain, mirrored)
    assert n == 5 and calls[0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(probs[:5], (plain[:5] + flipped[:5]) / 2)
    np.testing.assert_array_equal(probs[5:], plain[5:])
    assert MirrorAverage(margin=math.inf).apply(plain, lambda rows: flipped[rows])[1] == 50


def test_training_keeps_a_mirror_average_only_when_it_pays() -> None:
    """A cnn1 whose head tells bright-left from bright-right photos: the mirror image flips its answer."""
    torch.manual_seed(0)
    model = create_model("cnn1", 3, pretrained=False, input_size=32).eval()
    preprocess = Preprocess(input_size=32)
    plan = Plan(mode="scratch", model="cnn1", preprocess=preprocess, pretrained=False, epochs=1, batch_size=8, lr=1e-3, weight_decay=0.0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (60, 32, 32, 3), dtype=np.uint8)
    images[:30, :, :12] += 180  # bright on the left
    images[30:, :, 20:] += 180  # bright on the right
    cpu = torch.device("cpu")
    features = penultimate_features(model, images, preprocess, cpu, "fp32", None)
    mirror_features = penultimate_features(model, mirror_images(images), preprocess, cpu, "fp32", None)
    linear = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # a head that tells left from right (class 0, 1) and hesitates with class 2
        centre = features.mean(0)
        left, right = features[:30].mean(0) - centre, features[30:].mean(0) - centre
        linear.weight.copy_(torch.from_numpy(np.stack([left, right, (left + right) / 2]) * 50))
        linear.bias.copy_(-linear.weight @ torch.from_numpy(centre))
        plain = model.classify(torch.from_numpy(features))[0].numpy()
        flipped = model.classify(torch.from_numpy(mirror_features))[0].numpy()
    averaged = (plain + flipped) / 2
    changed = int((averaged.argmax(1) != plain.argmax(1)).sum())
    assert changed >= 3, "the test needs photos whose mirror image changes the answer"

    policy, probs = choose_mirror_average(model, plan, images, features, averaged.argmax(1), cpu, "fp32", None, print)
    assert policy is not None and policy.gain_points > 0 and policy.passes <= 2.0
    expected, _ = policy.apply(plain, lambda rows: flipped[rows])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    policy, probs = choose_mirror_average(model, plan, images, features, plain.argmax(1), cpu, "fp32", None, print)
    assert policy is None  # the photos as given are all right already: no second pass
    np.testing.assert_allclose(probs, plain, atol=1e-5)
