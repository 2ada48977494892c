"""Leak-free validation: "val" carved from "train" keeps near copies on one side.

Burst shots, consecutive video frames and re-uploads put near copies on both sides of a random
carve, and validation then reads higher than new photos score, so early stopping, the neighbour
vote and every threshold chosen on it would be chosen blind. Here the training photos are grouped
by perceptual hash and, for pretrained models, by the similarity of frozen efficientnet_lite0
features at 128 px (:mod:`vitrina.data.near_copies`); the carve then takes whole groups,
stratified by class (:func:`vitrina.data.splits.carve_by_group`). Unreadable photos stay alone.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vitrina.config import Config
from vitrina.data.cache import decode_samples, default_cache_dir
from vitrina.data.hashing import phash
from vitrina.data.near_copies import HASH_BITS, bounded_groups, near_copy_pairs
from vitrina.data.samples import Dataset, Sample
from vitrina.data.sources import load_dataset
from vitrina.data.splits import (
    carve_by_group,
    complete_splits,
    recorded_val,
    restore_carve,
)
from vitrina.errors import DataError
from vitrina.models.registry import create_model, get_spec
from vitrina.models.runtime import export_pays
from vitrina.preprocess import Preprocess
from vitrina.training.features import BackboneFeatures
from vitrina.training.plan import Plan, looks_like_small_grayscale, make_plan

Log = Callable[[str], None]
GROUPING_MODEL = "efficientnet_lite0"
GROUPING_SIZE = 128  # px: near copies agree at any size; 128 px costs a fifth of 288 px
HASH_SIZE = 32
# Without features (models trained from scratch, often on small images), hashes alone: equal ones.
# Fashion-MNIST's 60,000 training images: equal hashes pair 739 (0.95 within a class, largest group
# 17); 2 bits apart 17,057 (0.90, largest 2,721), which would chain whole classes together.
HASH_ONLY_BITS = 0


def load_training_data(
    data: str | os.PathLike, config: Config, *, progress: bool = False, log: Log = print, resume_from: Path | None = None,
) -> Dataset:
    """The dataset with "val" carved from "train" where absent: by near-copy group (``data.val_carve:
    group``, the default) or at random (``random``). ``dataset.carved["val"]`` says how.
    ``resume_from``: an interrupted run folder whose recorded carve is kept as it was."""
    dataset = load_dataset(data, config.data, carve_val=config.data.val_carve == "random")
    if "val" in dataset.splits or config.data.val_fraction == 0 or config.data.val_carve == "random":
        return dataset
    recorded = recorded_val(resume_from) if resume_from is not None else None
    splits = _restored(dataset, recorded)
    if splits is not None and resume_from is not None:
        listed = json.loads((Path(resume_from) / "splits.json").read_text(encoding="utf-8"))
        group_of = dict(zip(listed["splits"]["train"] + listed["splits"]["val"], listed["groups"]["train"] + listed["groups"]["val"]))
        record = {**listed["carved"]["val"], "paths": sorted(recorded), "group_of": group_of}
        return replace(dataset, splits=splits, carved={**dataset.carved, "val": record})
    train = dataset.splits["train"]
    started = time.perf_counter()
    groups, by = near_copy_groups(train, dataset, config, progress=progress, log=log)
    photo_by_photo: list[str] = []
    kept, val = carve_by_group(train, groups, config.data.val_fraction, config.data.split_seed, photo_by_photo)
    if photo_by_photo:
        log(f"warning: every photo of {', '.join(photo_by_photo)} is a near copy of another; "
            "validation takes some of them photo by photo, so it may read high for those classes")
    group_of = {id(s): int(g) for s, g in zip(train, groups)}
    sizes = np.bincount(groups) if len(groups) else np.zeros(0, np.int64)
    record = {
        "from": "train", "fraction": config.data.val_fraction, "seed": config.data.split_seed, "method": "group",
        "grouped_by": by, "groups": int((sizes > 1).sum()), "photos_in_groups": int(sizes[sizes > 1].sum()),
        "largest_group": int(sizes.max(initial=0)), "paths": sorted(s.path for s in val),
        "group_of": {s.path: group_of[id(s)] for s in train}, "photo_by_photo": photo_by_photo,
    }
    log(f"validation carved by near-copy group ({by}): {record['groups']} groups of 2 or more holding "
        f"{record['photos_in_groups']} of {len(train)} training photos (largest {record['largest_group']}), "
        f"each kept on one side; {len(val)} photos for validation ({time.perf_counter() - started:.1f} s)")
    splits = {"train": kept, "val": val, **{k: v for k, v in dataset.splits.items() if k != "train"}}
    ordered, _ = complete_splits(splits, val_fraction=0, test_fraction=0, seed=0)
    return replace(dataset, splits=ordered, carved={**dataset.carved, "val": record})


def _restored(dataset: Dataset, recorded: list[str] | None) -> dict[str, list[Sample]] | None:
    """The recorded carve applied to ``dataset``; None where there is none or the data differ (the
    resume check then names the difference)."""
    if recorded is None:
        return None
    try:
        return restore_carve(dataset.splits, recorded)
    except DataError:
        return None


def near_copy_groups(
    samples: list[Sample], dataset: Dataset, config: Config, *, progress: bool = False, log: Log = print,
) -> tuple[np.ndarray, str]:
    """A group id per sample and what grouped them.

    Photos are grouped by hash and features; small grayscale images (Fashion-MNIST-like, trained
    from scratch) by hash alone. The choice depends on the data only, so every configuration that
    `vitrina compare` or `vitrina tune` trains gets the same carve.
    """
    small_grayscale, _ = looks_like_small_grayscale(dataset)
    cache_dir = default_cache_dir(config.train.cache_dir)
    workers = config.train.workers if config.train.workers >= 0 else min(4, os.cpu_count() or 1)
    if not small_grayscale:
        preprocess = get_spec(GROUPING_MODEL).preprocess.with_overrides(input_size=GROUPING_SIZE, resize="squash")
    else:  # hashes only, from small images (a 32 px grey image is what the hash reads)
        preprocess = Preprocess(input_size=HASH_SIZE, resize="squash", channels=1, mean=(0.5,), std=(0.5,))
    decoded = decode_samples(samples, preprocess, cache_dir, max_pixels=config.data.max_pixels, workers=workers,
                             progress=progress, desc="grouping near copies")
    features = None
    if not small_grayscale and len(decoded.index) > 1:
        features = _features(decoded, preprocess, make_plan(dataset, config), cache_dir)
    hash_bits = HASH_BITS if features is not None else HASH_ONLY_BITS
    pairs = near_copy_pairs(phash(decoded.images), features, hash_bits=hash_bits)
    readable = decoded.index
    ids = np.full(len(samples), -1, np.int64)
    ids[readable], floor = bounded_groups(np.asarray([samples[i].label for i in readable]), *pairs)
    unreadable = np.flatnonzero(ids < 0)
    ids[unreadable] = ids.max(initial=-1) + 1 + np.arange(len(unreadable))
    if features is None:
        return ids, "equal hashes" if hash_bits == 0 else f"hashes {hash_bits} bits apart"
    return ids, f"hashes {hash_bits} bits apart or features {floor:.2f} alike" if floor < 1.0 else f"hashes {hash_bits} bits apart"


def _features(decoded, preprocess, plan: Plan, cache_dir: Path) -> np.ndarray:  # type: ignore[no-untyped-def]
    model = create_model(GROUPING_MODEL, 1, pretrained=True, input_size=GROUPING_SIZE).eval()
    grouping_plan = replace(plan, model=GROUPING_MODEL, preprocess=preprocess)
    runtime = "auto" if export_pays(len(decoded.index), GROUPING_SIZE) else "torch"
    backbone = BackboneFeatures(model, f"{GROUPING_MODEL}|pretrained", grouping_plan, cache_dir, torch.device("cpu"), "fp32",
                                runtime, log=lambda _: None)
    features = backbone(decoded)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
