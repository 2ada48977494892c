"""Frozen-backbone features on disk.

:class:`FeatureStore` keeps backbone features keyed by image content hash + backbone identity
+ preprocessing (+ augmentation variant), so a second bottleneck run, or a hyperparameter
change, trains the head in seconds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from vitrina.data.cache import digest, touch_entry
from vitrina.preprocess import Preprocess


class FeatureStore:
    """Backbone features on disk, keyed by image content hash within one (backbone, preprocessing, variant)."""

    def __init__(self, cache_dir: str | Path, backbone_id: str, preprocess: Preprocess, variant: str = "plain"):
        self.key = digest("features-v1", backbone_id, preprocess.to_dict(), variant)
        self.folder = Path(cache_dir) / "features" / self.key
        self._rows: dict[str, int] = {}
        self._features: np.ndarray | None = None
        if (self.folder / "keys.json").is_file():
            keys = json.loads((self.folder / "keys.json").read_text())
            touch_entry(self.folder / "keys.json")
            self._features = np.load(self.folder / "features.npy")
            self._rows = {k: i for i, k in enumerate(keys)}

    def lookup(self, hashes: Sequence[str]) -> tuple[np.ndarray | None, list[int]]:
        """Features for ``hashes`` (rows of the missing ones undefined) and the missing positions."""
        missing = [i for i, h in enumerate(hashes) if h not in self._rows]
        if self._features is None:
            return None, missing
        out = np.zeros((len(hashes), self._features.shape[1]), dtype=np.float32)
        for i, h in enumerate(hashes):
            row = self._rows.get(h)
            if row is not None:
                out[i] = self._features[row]
        return out, missing

    def add(self, hashes: Sequence[str], features: np.ndarray) -> None:
        fresh: dict[str, np.ndarray] = {}  # identical images (duplicates) share one row
        for h, f in zip(hashes, features):
            if h not in self._rows and h not in fresh:
                fresh[h] = f
        new = list(fresh.items())
        if not new:
            return
        block = np.stack([f for _, f in new]).astype(np.float32)
        base = 0 if self._features is None else len(self._features)
        self._features = block if self._features is None else np.concatenate([self._features, block])
        for i, (h, _) in enumerate(new):
            self._rows[h] = base + i
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f"features.tmp{os.getpid()}.npy"
        np.save(tmp, self._features)
        os.replace(tmp, self.folder / "features.npy")
        keys = [None] * len(self._rows)
        for h, row in self._rows.items():
            keys[row] = h
        (self.folder / f"keys.tmp{os.getpid()}").write_text(json.dumps(keys))
        os.replace(self.folder / f"keys.tmp{os.getpid()}", self.folder / "keys.json")
