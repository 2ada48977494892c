"""The neighbour vote: the head's probabilities mixed with the labels of the nearest training photos."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vitrina.errors import ModelError
from vitrina.models import create_model
from vitrina.models.neighbours import VOTE_KS, VOTE_TEMPERATURES, VOTE_WEIGHTS, NeighbourVote, fit_vote


def test_vote_mixes_the_head_with_the_nearest_training_labels() -> None:
    bank = torch.eye(4) * 3.0 + 1.0  # four photos, each in its own direction once centred
    vote = NeighbourVote(bank, torch.tensor([0, 1, 2, 2]), num_classes=3, k=1, temperature=0.1, weight=0.5)
    logits = torch.zeros(2, 3)  # a head without an opinion
    probs = vote(bank[[1, 3]], logits)
    np.testing.assert_allclose(probs.sum(1).numpy(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(probs.numpy(), [[1 / 6, 0.5 + 1 / 6, 1 / 6], [1 / 6, 1 / 6, 0.5 + 1 / 6]], atol=2e-3)
    vote.weight = 0.0
    np.testing.assert_allclose(vote(bank[[1, 3]], logits).numpy(), 1 / 3, atol=1e-6)


def test_vote_weights_neighbours_by_similarity() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    vote = NeighbourVote(bank, torch.tensor([0, 1, 1, 1, 1]), num_classes=2, k=2, temperature=0.05, weight=1.0)
    # the query sits on photo 0 (class 0); photo 1 (class 1) is close but less similar: class 0 leads
    p = vote(bank[:1] + 0.0, torch.zeros(1, 2))[0]
    assert 0.5 < float(p[0]) < 1.0


@pytest.mark.parametrize("k, weight, temperature", [(0, 0.5, 0.1), (3, 1.5, 0.1), (3, 0.5, 0.0)])
def test_bad_settings_are_refused(k: int, weight: float, temperature: float) -> None:
    with pytest.raises(ModelError):
        NeighbourVote(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), 2, k, temperature, weight)
    with pytest.raises(ModelError, match="one label each"):
        NeighbourVote(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), 2, 3, 0.1, 0.5)


def _bursts(rng: np.random.Generator, n_bursts: int, per_burst: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Photos in bursts: each burst a random direction with small jitter, its label random."""
    centres = rng.normal(size=(n_bursts, dim))
    labels = rng.integers(0, 3, n_bursts)
    feats = np.repeat(centres, per_burst, axis=0) + 0.2 * rng.normal(size=(n_bursts * per_burst, dim))
    return feats.astype(np.float32), np.repeat(labels, per_burst)


def test_fit_vote_uses_the_neighbours_when_they_are_right_more_often() -> None:
    rng = np.random.default_rng(0)
    feats, labels = _bursts(rng, 40, 4)
    val = np.arange(len(labels)) % 4 == 0  # one photo of every burst for validation
    head = rng.normal(size=(val.sum(), 3)).astype(np.float32)  # a head that guesses
    choice = fit_vote(feats[~val], labels[~val], feats[val], head, labels[val], num_classes=3)
    assert choice.vote is not None and choice.tried == 18
    assert choice.val_accuracy > choice.val_accuracy_head + 0.3
    probs = choice.vote(torch.from_numpy(feats[val]), torch.from_numpy(head)).numpy()
    assert (probs.argmax(1) == labels[val]).mean() == pytest.approx(choice.val_accuracy)
    assert choice.vote.describe().bank_size == (~val).sum()


@pytest.mark.parametrize("criterion", ["accuracy", "log_loss"])
def test_fit_vote_keeps_the_head_alone_when_the_neighbours_do_not_help(criterion: str) -> None:
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(200, 16)).astype(np.float32)  # features that say nothing of the label
    labels = rng.integers(0, 3, 200)
    head = np.eye(3, dtype=np.float32)[labels[150:]] * 8.0  # a head that is always right
    choice = fit_vote(feats[:150], labels[:150], feats[150:], head, labels[150:], num_classes=3, criterion=criterion)  # type: ignore[arg-type]
    assert choice.vote is None and choice.val_accuracy == choice.val_accuracy_head == 1.0


def test_a_network_with_a_vote_returns_log_probabilities_and_keeps_the_head_logits() -> None:
    torch.manual_seed(0)
    model = create_model("cnn1", 3, pretrained=False, input_size=32).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        features = model.forward_features(x)
        plain = model(x)
        model.vote = NeighbourVote(torch.randn(20, model.num_features), torch.randint(0, 3, (20,)), 3, 5, 0.1, 0.5)
        mixed = model(x)
        probs, logits = model.classify(features)
    torch.testing.assert_close(logits, plain)  # the head's own logits, for the unknown score
    torch.testing.assert_close(torch.softmax(mixed, 1), probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(probs, model.vote(features, plain))
    assert not torch.allclose(torch.softmax(plain, 1), probs)


@pytest.mark.parametrize("criterion", ["accuracy", "log_loss"])
def test_fit_vote_ranks_the_settings_that_beat_the_head_by_its_criterion(criterion: str) -> None:
    rng = np.random.default_rng(3)
    feats, labels = _bursts(rng, 40, 4)
    feats += 1.0 * rng.normal(size=feats.shape).astype(np.float32)  # looser bursts: the settings differ
    val = np.arange(len(labels)) % 4 == 0
    head = (np.eye(3, dtype=np.float32)[labels[val]] * 1.5 + rng.normal(size=(val.sum(), 3))).astype(np.float32)
    head_probs = torch.softmax(torch.from_numpy(head), 1)
    head_right = int((head_probs.argmax(1).numpy() == labels[val]).sum())
    settings = {}
    for k in VOTE_KS:
        for temperature in VOTE_TEMPERATURES:
            for weight in VOTE_WEIGHTS:
                vote = NeighbourVote(torch.from_numpy(feats[~val]), torch.from_numpy(labels[~val]), 3, k, temperature, weight)
                probs = vote(torch.from_numpy(feats[val]), torch.from_numpy(head)).numpy()
                right = int((probs.argmax(1) == labels[val]).sum())
                loss = float(-np.log(probs[np.arange(val.sum()), labels[val]]).mean())
                if right > head_right:
                    settings[(k, temperature, weight)] = (right, loss)
    by_accuracy = max(settings, key=lambda s: (settings[s][0], -settings[s][1]))
    by_loss = min(settings, key=lambda s: settings[s][1])
    assert by_accuracy != by_loss  # the case tells the criteria apart
    choice = fit_vote(feats[~val], labels[~val], feats[val], head, labels[val], num_classes=3, criterion=criterion)  # type: ignore[arg-type]
    expected = by_accuracy if criterion == "accuracy" else by_loss
    assert choice.vote is not None and (choice.vote.k, choice.vote.temperature, choice.vote.weight) == expected
    assert choice.val_accuracy == pytest.approx(settings[expected][0] / val.sum())


def test_fit_vote_refuses_an_unknown_criterion() -> None:
    feats, labels = _bursts(np.random.default_rng(0), 10, 4)
    with pytest.raises(ModelError, match="criterion"):
        fit_vote(feats[:30], labels[:30], feats[30:], np.zeros((10, 3), np.float32), labels[30:], 3, criterion="f1")  # type: ignore[arg-type]
