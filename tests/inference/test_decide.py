"""The one decision rule: flags, listing verdicts, and the same flags from every entry point."""
from __future__ import annotations

import numpy as np
import pytest

from vitrina.description import ModelDescription, Thresholds, UnknownDetector
from vitrina.inference.decide import DecisionRule, top_k
from vitrina.preprocess import Preprocess

CLASSES = ["hat", "shoes", "dress"]


def test_verdicts_follow_the_mean_of_the_photos_and_the_threshold() -> None:
    shoes = np.array([[0.1, 0.8, 0.1]])
    assert DecisionRule(0.5).verdict(shoes, None, "shoes", CLASSES).verdict == "match"
    mismatch = DecisionRule(0.5).verdict(shoes, None, "hat", CLASSES)
    assert (mismatch.verdict, mismatch.predicted, mismatch.suggestion) == ("mismatch", "shoes", "shoes")
    unsure = DecisionRule(0.9).verdict(shoes, None, "hat", CLASSES)
    assert (unsure.verdict, unsure.suggestion) == ("uncertain", None)
    assert DecisionRule().verdict(shoes, None, "hat", CLASSES).verdict == "mismatch"  # a model without a threshold
    listing = np.array([[0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.0, 0.9, 0.1]])  # one hat photo, two shoe photos
    verdict = DecisionRule(0.5).verdict(listing, None, "shoes", CLASSES)
    assert verdict.verdict == "match" and verdict.confidence == pytest.approx(2.0 / 3.0)


APPLES = ["granny-smith", "gala", "banana"]
PARENTS = {"granny-smith": "apples", "gala": "apples", "banana": "bananas"}


def test_a_taxonomy_judges_a_listing_at_the_level_it_was_declared() -> None:
    rule = DecisionRule(0.6)
    granny = np.array([[0.7, 0.25, 0.05]])
    coarse = rule.verdict(granny, None, "apples", APPLES, PARENTS)  # filed under apples: a match
    assert (coarse.verdict, coarse.predicted, coarse.declared_level) == ("match", "apples", "coarse")
    assert coarse.confidence == pytest.approx(0.95)
    fine = rule.verdict(granny, None, "gala", APPLES, PARENTS)  # filed under the other apple: a fine-level mismatch
    assert (fine.verdict, fine.suggestion, fine.suggestion_level, fine.declared_level) == ("mismatch", "granny-smith", "fine", "fine")
    unsure_apple = np.array([[0.5, 0.45, 0.05]])
    as_banana = rule.verdict(unsure_apple, None, "banana", APPLES, PARENTS)  # unsure which apple, sure it is one
    assert (as_banana.verdict, as_banana.suggestion, as_banana.suggestion_level) == ("mismatch", "apples", "coarse")
    assert rule.verdict(unsure_apple, None, "gala", APPLES, PARENTS).verdict == "uncertain"  # the right parent, the class unsure
    assert rule.verdict(unsure_apple, None, "bananas", APPLES, PARENTS).suggestion == "apples"  # the deepest level it is sure of
    assert rule.verdict(granny, None, "bananas", APPLES, PARENTS).suggestion == "granny-smith"
    assert rule.verdict(np.array([[0.3, 0.2, 0.5]]), None, "apples", APPLES, PARENTS).verdict == "uncertain"
    assert rule.verdict(granny, None, "gala", APPLES).suggestion_level == "fine"  # no taxonomy: as before
    split = np.array([[0.4, 0.0, 0.3, 0.3]])  # the top class is under the declared parent, the likeliest parent is another
    four, parents = ["a1", "b1", "b2", "b3"], {"a1": "A", "b1": "B", "b2": "B", "b3": "B"}
    assert DecisionRule().verdict(split, None, "A", four, parents).suggestion == "b2"  # a class under the predicted parent


def test_an_unknown_listing_is_uncertain_on_its_mean_score() -> None:
    probs = np.array([[0.95, 0.05, 0.0], [0.9, 0.1, 0.0]])
    rule = DecisionRule(0.5, unknown_threshold=0.3)
    assert rule.verdict(probs, np.array([0.1, 0.4]), "hat", CLASSES).verdict == "match"  # mean 0.25
    strange = rule.verdict(probs, np.array([0.2, 0.5]), "shoes", CLASSES)  # mean 0.35
    assert (strange.verdict, strange.suggestion, strange.unknown) == ("uncertain", None, True)


def test_uncertain_means_low_confidence_or_unknown() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.9, 0.1, 0.0]])
    scores = np.array([0.1, 0.1, 0.5])
    rule = DecisionRule(0.5, unknown_threshold=0.3)
    assert rule.uncertain(probs, scores).tolist() == [False, True, True]
    assert rule.unknown(scores).tolist() == [False, False, True]
    assert DecisionRule(0.5).uncertain(probs, scores).tolist() == [False, True, False]  # no detector: confidence alone
    assert DecisionRule(0.5, 0.3).unknown(None) is None  # scores not computed
    assert DecisionRule().uncertain(probs) is None and not DecisionRule().flags_uncertain


def test_the_rule_comes_from_the_model_description() -> None:
    description = ModelDescription(
        "cnn1", ("a", "b"), Preprocess(input_size=32), thresholds=Thresholds(0.6, 0.95),
        unknown=UnknownDetector("knn", 0.25, k=1, bank_size=10),
    )
    assert DecisionRule.for_model(description, detects_unknown=True) == DecisionRule(0.6, 0.25)
    assert DecisionRule.for_model(description, detects_unknown=False) == DecisionRule(0.6, None)
    assert DecisionRule.for_model(description, detects_unknown=True, confidence=0.8).confidence == 0.8


def test_top_k_orders_by_probability_and_keeps_ties_stable() -> None:
    order, probs = top_k(np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4]]), 2)
    assert order.tolist() == [[1, 2], [0, 2]]
    np.testing.assert_allclose(probs, [[0.5, 0.3], [0.4, 0.4]])
    assert top_k(np.array([[0.2, 0.8]]), 5)[0].shape == (1, 2)
