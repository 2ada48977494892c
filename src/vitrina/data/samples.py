"""The sample and dataset types every stage above the dataset layer sees.

The dataset layer is the only place that knows file formats. Everything above it sees
:class:`Sample` objects grouped into named splits of a :class:`Dataset`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from vitrina.errors import DataError

SPLIT_ROLES = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Sample:
    """One labelled image.

    ``path`` names where the image comes from: a file path, or for a row of a pixel CSV a
    pseudo path ``"<csv path>#row=<n>"`` (1-based data row). ``pixels`` holds the image for
    in-memory sources (a 2-D uint8 array, grayscale), else ``None``.
    """

    path: str
    label: str
    coarse: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)

    @property
    def in_memory(self) -> bool:
        return self.pixels is not None


@dataclass
class Dataset:
    """Named splits of samples plus the class list (index order = model output order).

    ``splits`` maps a role ("train", "val", "test", or a source name reserved for reporting
    such as "validation" after ``--holdout``) to its samples. ``carved`` records which files a
    split was carved from (split name -> {"from": parent split, "fraction": f, "seed": s}).
    ``coarse_of`` maps a fine class name to its coarse (parent) class name, when known.
    """

    classes: list[str]
    splits: dict[str, list[Sample]]
    source: str = ""
    coarse_of: dict[str, str] = field(default_factory=dict)
    carved: dict[str, dict] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)

    @property
    def class_to_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    @property
    def coarse_classes(self) -> list[str]:
        return sorted(set(self.coarse_of.values()))

    def split(self, name: str) -> list[Sample]:
        try:
            return self.splits[name]
        except KeyError:
            raise DataError(
                f"{self.source or 'the dataset'} has no split {name!r}; "
                f"it has: {', '.join(self.splits) or 'none'}"
            ) from None

    def counts(self) -> dict[str, dict[str, int]]:
        """Split name -> class name -> number of samples (classes in class order)."""
        out: dict[str, dict[str, int]] = {}
        for name, samples in self.splits.items():
            per = {c: 0 for c in self.classes}
            for s in samples:
                per[s.label] = per.get(s.label, 0) + 1
            out[name] = per
        return out

    def __iter__(self) -> Iterator[tuple[str, Sample]]:
        for name, samples in self.splits.items():
            for s in samples:
                yield name, s
