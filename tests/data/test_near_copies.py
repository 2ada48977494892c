from __future__ import annotations

import numpy as np
import pytest

from vitrina.data.near_copies import bounded_groups, group_ids, near_copy_pairs


def test_pairs_come_from_close_hashes_or_similar_features():
    hashes = np.array([0b0, 0b111, 0xFFFF_0000, 0xFFFF_FFFF_0000_0000], dtype=np.uint64)
    features = np.eye(4, dtype=np.float32)
    features[3] = features[2] * 0.95 + features[3] * 0.31
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    i, j, strength = near_copy_pairs(hashes, features, hash_bits=3, min_similarity=0.9, block=2)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 3)]
    assert strength.tolist() == pytest.approx([1.0, 0.95], abs=2e-3)
    i, j, _ = near_copy_pairs(hashes, None, hash_bits=3)
    assert list(zip(i.tolist(), j.tolist())) == [(0, 1)]


def test_group_ids_are_connected_components():
    ids = group_ids(6, np.array([0, 1, 4]), np.array([1, 3, 5]))
    assert ids[0] == ids[1] == ids[3]
    assert ids[4] == ids[5] != ids[0]
    assert len(set(ids.tolist())) == 3


def test_groups_that_swallow_a_class_are_broken_up_at_a_stricter_floor():
    labels = np.array(["a"] * 16 + ["b"] * 8)
    # A chain through all of class a at 0.91, a true burst (0, 1, 2) at 0.99, a pair in b at 0.95.
    pairs_i = np.array([*range(15), 16])
    pairs_j = np.array([*range(1, 16), 17])
    strength = np.array([0.99, 0.99] + [0.91] * 13 + [0.95], np.float32)
    ids, floor = bounded_groups(labels, pairs_i, pairs_j, strength)
    assert floor == pytest.approx(0.93)
    assert ids[0] == ids[1] == ids[2] != ids[3]
    assert ids[16] == ids[17]


def test_many_exact_copies_do_not_turn_feature_grouping_off():
    labels = np.array(["a"] * 30 + ["b"] * 30)
    copies = list(range(1, 15))  # photo 0 uploaded 15 times in class a: hash pairs
    pairs_i = np.array([0] * len(copies) + [30])
    pairs_j = np.array(copies + [31])
    strength = np.array([1.0] * len(copies) + [0.92], np.float32)  # a burst pair in b, by features
    ids, floor = bounded_groups(labels, pairs_i, pairs_j, strength)
    assert floor == pytest.approx(0.9)
    assert len(set(ids[:15].tolist())) == 1 and ids[30] == ids[31]
