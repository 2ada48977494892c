"""Post-fit extras: the mirror-image average is kept only where it pays for its extra passes; the
validation photos join the neighbour vote once it is chosen."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitrina.description import MirrorAverage
from vitrina.models import create_model
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.unknown import penultimate_features
from vitrina.preprocess import Preprocess, mirror_images
from vitrina.training import extras as extras_module
from vitrina.training.extras import add_validation_to_vote, choose_mirror_average, mirror_options, pays_for_itself
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


class _Voter(torch.nn.Module):
    """Just what add_validation_to_vote reads of a network: its ``vote``."""

    def __init__(self, vote: "NeighbourVote | None"):
        super().__init__()
        self.vote = vote


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of three well-separated classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return (np.eye(3, 16)[labels] * 4 + rng.normal(0, 0.3, (n, 16))).astype(np.float32), labels


def _chosen(n: int) -> NeighbourVote:
    bank, labels = _clusters(n, seed=0)
    return NeighbourVote(torch.from_numpy(bank), torch.from_numpy(labels), 3, k=5, temperature=0.1, weight=0.5)


def test_the_validation_photos_join_the_vote_once_it_is_chosen() -> None:
    chosen = _chosen(60)
    val, val_labels = _clusters(20, seed=1)
    model, lines = _Voter(chosen), []
    field = add_validation_to_vote(model, val, val_labels, seed=0, log=lines.append)
    vote = model.vote
    assert len(vote.bank) == 80 and (vote.k, vote.temperature, vote.weight) == (5, 0.1, 0.5)
    assert field["neighbours"].bank_size == 80 and field["neighbours"].validation_photos == 20
    assert vote.labels[60:].tolist() == val_labels.tolist()
    # without its last rows it is the chosen vote, exactly: the export's int8 check relies on it
    back = vote.without_last(20)
    assert torch.equal(back.bank, chosen.bank) and torch.equal(back.labels, chosen.labels) and torch.equal(back.centre, chosen.centre)
    # a validation photo's nearest photo is now itself
    sims = torch.nn.functional.normalize(torch.from_numpy(val[:1]) - vote.centre, dim=1) @ vote.bank.float().T
    assert int(sims.argmax()) == 60
    assert "20 validation photos join its bank (60 -> 80 photos)" in lines[0]


def test_the_grown_bank_keeps_at_most_max_bank_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extras_module, "MAX_BANK", 50)
    chosen = _chosen(40)
    val, val_labels = _clusters(30, seed=1)
    model = _Voter(chosen)
    field = add_validation_to_vote(model, val, val_labels, seed=0, log=lambda _: None)
    assert len(model.vote.bank) == 50 and field["neighbours"].bank_size == 50
    assert field["neighbours"].validation_photos == 10, "the training photos all stay; validation fills the room left"
    assert torch.equal(model.vote.without_last(10).bank, chosen.bank)
    monkeypatch.setattr(extras_module, "MAX_BANK", 40)
    full = _Voter(chosen)
    assert add_validation_to_vote(full, val, val_labels, seed=0, log=lambda _: None) == {} and len(full.vote.bank) == 40


def test_without_a_vote_nothing_joins() -> None:
    val, val_labels = _clusters(10, seed=0)
    model = _Voter(None)
    assert add_validation_to_vote(model, val, val_labels, seed=0, log=lambda _: None) == {}
    assert model.vote is None
