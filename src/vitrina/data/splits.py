"""Split roles, holdout and carving.

A dataset's splits have roles: "train" to fit, "val" to select a model (early stopping,
thresholds), "test" to report only. Sources name their splits ("train", "val", "validation",
"test"); :func:`assign_roles` maps those names to roles and sets a holdout split aside for
reporting, and :func:`complete_splits` carves the missing "test" and "val" splits out of
"train", stratified per class and reproducible from a seed.
"""
from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from vitrina.data.samples import Sample
from vitrina.errors import ConfigError, DataError

ROLE_OF_SOURCE = {"train": "train", "val": "val", "validation": "val", "test": "test"}


def carve(
    samples: Sequence[Sample], fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Move about ``fraction`` of each class out of ``samples``: returns ``(kept, carved)``.

    Each class is sorted by path and shuffled with a generator seeded from ``seed`` and the
    class name, so the result depends neither on file-system order nor on the other classes.
    Every class keeps at least one sample. Both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"a split fraction must be at least 0 and below 1, got {fraction}")
    by_class: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    carved_ids: set[int] = set()
    for label, members in by_class.items():
        members = sorted(members, key=lambda s: s.path)
        random.Random(f"{seed}/{label}").shuffle(members)
        count = min(int(len(members) * fraction + 0.5), len(members) - 1)
        carved_ids.update(id(s) for s in members[:count])
    kept = [s for s in samples if id(s) not in carved_ids]
    carved = [s for s in samples if id(s) in carved_ids]
    return kept, carved


def carve_by_group(
    samples: Sequence[Sample], groups: Sequence[int], fraction: float, seed: int, photo_by_photo: list[str] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """:func:`carve`, keeping each group (near copies, see :mod:`vitrina.data.near_copies`) whole.

    A group counts for the class most of its members have. Each class's groups are shuffled
    (seeded from ``seed`` and the class name) and taken while the class is short of ``fraction``;
    a group that would overshoot by more than half its size is passed over for smaller ones.
    Every class keeps at least one sample. A class whose groups are too large to carve any (all its
    photos near copies of each other) is carved photo by photo, its name added to ``photo_by_photo``,
    so that validation still covers it. Both lists keep the input order.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"a split fraction must be at least 0 and below 1, got {fraction}")
    members: dict[int, list[int]] = defaultdict(list)
    for position, group in enumerate(groups):
        members[int(group)].append(position)
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for positions in members.values():
        labels = sorted(samples[p].label for p in positions)
        by_class[max(labels, key=labels.count)].append(sorted(positions, key=lambda p: samples[p].path))
    carved_at: set[int] = set()
    for label, class_groups in by_class.items():
        class_groups.sort(key=lambda g: samples[g[0]].path)
        random.Random(f"{seed}/{label}").shuffle(class_groups)
        size = sum(len(g) for g in class_groups)
        target, taken = int(size * fraction + 0.5), 0
        for group in class_groups:
            if taken >= target:
                break
            if taken + len(group) - target > len(group) / 2 or taken + len(group) >= size:
                continue
            carved_at.update(group)
            taken += len(group)
        if taken == 0 and target > 0 and size > 1:
            positions = sorted((p for g in class_groups for p in g), key=lambda p: samples[p].path)
            random.Random(f"{seed}/{label}").shuffle(positions)
            carved_at.update(positions[: min(target, size - 1)])
            if photo_by_photo is not None:
                photo_by_photo.append(label)
    kept = [s for p, s in enumerate(samples) if p not in carved_at]
    carved = [s for p, s in enumerate(samples) if p in carved_at]
    return kept, carved


def restore_carve(splits: dict[str, list[Sample]], val_paths: Sequence[str]) -> dict[str, list[Sample]]:
    """``splits`` (with no "val") with the training files listed in ``val_paths`` moved to "val",
    as a run's ``splits.json`` recorded them (a group carve depends on the photos' content).

    Files are matched by their real path (a dataset reached through a symbolic link still
    matches); a recorded file missing from "train" is an error, not a smaller validation split.
    """
    wanted = {os.path.realpath(p) for p in val_paths}
    train = splits.get("train", [])
    real = [os.path.realpath(s.path) for s in train]
    moved = {"train": [s for s, r in zip(train, real) if r not in wanted], "val": [s for s, r in zip(train, real) if r in wanted]}
    if len(moved["val"]) != len(wanted):
        raise DataError(f"{len(wanted) - len(moved['val'])} of the run's {len(wanted)} validation files are not among this data's "
                        "training files; give the data the run was trained on (its splits.json lists them), or another split")
    return {**moved, **{name: samples for name, samples in splits.items() if name not in moved}}


def recorded_val(run_dir: str | os.PathLike) -> list[str] | None:
    """The validation files a run carved by near-copy group (its ``splits.json``), else None."""
    path = Path(run_dir) / "splits.json"
    if not path.is_file():
        return None
    listed = json.loads(path.read_text(encoding="utf-8"))
    if listed.get("carved", {}).get("val", {}).get("method") != "group":
        return None
    return list(listed.get("splits", {}).get("val", []))


def held_split_name(holdout: str | None) -> str | None:
    """The name the ``holdout`` split goes by once :func:`assign_roles` has set it aside:
    "validation" for the validation split ("val" or "validation"), so "val" can be carved."""
    if not holdout:
        return None
    return "validation" if ROLE_OF_SOURCE.get(holdout) == "val" else holdout


def assign_roles(
    splits: dict[str, list[Sample]], holdout: str | None = None
) -> dict[str, list[Sample]]:
    """Rename source splits ("train", "val", "validation", "test") to their roles.

    ``holdout`` names a split (by source name or role) kept for reporting only: it stays under
    its source name, or "validation" when that name is "val", so "val" can be carved from train.
    """
    unknown = [name for name in splits if name not in ROLE_OF_SOURCE]
    if unknown:
        raise DataError(
            f"unknown split name {unknown[0]!r}; splits are named: {', '.join(ROLE_OF_SOURCE)}"
        )
    held = None
    if holdout:
        role = ROLE_OF_SOURCE.get(holdout, holdout)
        matches = [name for name in splits if name == holdout] or [
            name for name in splits if ROLE_OF_SOURCE[name] == role
        ]
        if not matches:
            raise DataError(
                f"holdout split {holdout!r} does not exist; the dataset has: {', '.join(splits)}"
            )
        held = matches[0]
        if ROLE_OF_SOURCE[held] == "train":
            raise DataError("the training split cannot be the holdout split")
    out: dict[str, list[Sample]] = {}
    for name, samples in splits.items():
        if name == held:
            out["validation" if name == "val" else name] = samples
        else:
            out[ROLE_OF_SOURCE[name]] = samples
    return out


def complete_splits(
    splits: dict[str, list[Sample]],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    need_test: bool = False,
    carve_val: bool = True,
) -> tuple[dict[str, list[Sample]], dict[str, dict]]:
    """Carve "test" (when ``need_test``) and then "val" (when ``carve_val``) from "train" if absent.

    Returns the splits ordered train, val, test, then any others, and a record per carved split:
    ``{"from": "train", "fraction": f, "seed": s, "paths": [...]}``. A fraction of 0 carves nothing.
    """
    splits = dict(splits)
    carved: dict[str, dict] = {}
    wanted = [("test", test_fraction, need_test), ("val", val_fraction, carve_val)]
    for name, fraction, wanted_here in wanted:
        if not wanted_here or name in splits or fraction == 0:
            continue
        splits["train"], splits[name] = carve(splits["train"], fraction, seed)
        carved[name] = {
            "from": "train",
            "fraction": fraction,
            "seed": seed,
            "paths": sorted(s.path for s in splits[name]),
        }
    order = [n for n in ("train", "val", "test") if n in splits] + [
        n for n in splits if n not in ("train", "val", "test")
    ]
    return {name: splits[name] for name in order}, carved
