"""The on-disk feature cache: lookups, duplicates, persistence, and keys that separate variants."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitrina.preprocess import Preprocess
from vitrina.training.cache import FeatureStore


def test_store_round_trip_with_duplicate_images(tmp_path: Path) -> None:
    pre = Preprocess(input_size=32)
    store = FeatureStore(tmp_path, "net|pretrained", pre)
    hashes = ["a", "b", "a", "c"]  # "a" twice: two files with the same bytes
    feats = np.arange(8, dtype=np.float32).reshape(4, 2)
    assert store.lookup(hashes) == (None, [0, 1, 2, 3])
    store.add(hashes, feats)
    again = FeatureStore(tmp_path, "net|pretrained", pre)
    found, missing = again.lookup(["c", "a", "b"])
    assert missing == []
    np.testing.assert_array_equal(found, feats[[3, 0, 1]])
    again.add(["d"], np.ones((1, 2), dtype=np.float32))
    found, missing = FeatureStore(tmp_path, "net|pretrained", pre).lookup(["d", "b"])
    assert missing == [] and found[0].tolist() == [1.0, 1.0]


def test_backbone_preprocessing_and_variant_separate_entries(tmp_path: Path) -> None:
    pre = Preprocess(input_size=32)
    FeatureStore(tmp_path, "net|pretrained", pre).add(["a"], np.zeros((1, 2), dtype=np.float32))
    assert FeatureStore(tmp_path, "other|pretrained", pre).lookup(["a"])[1] == [0]
    assert FeatureStore(tmp_path, "net|pretrained", Preprocess(input_size=40)).lookup(["a"])[1] == [0]
    assert FeatureStore(tmp_path, "net|pretrained", pre, variant="aug1").lookup(["a"])[1] == [0]
