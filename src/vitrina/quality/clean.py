"""`vitrina clean`: find unreadable files, duplicates, likely wrong labels and off-topic photos.

:func:`clean_dataset` decodes every image once (the decoded-image cache), computes frozen
backbone features exactly as training does (so they come from, and go to, the same feature
cache), and then:

- **unreadable**: files that cannot be decoded, with the reason;
- **duplicates**: byte-identical files, and near duplicates (resized, recompressed, slightly
  cropped copies) found by perceptual hash plus feature similarity; groups that span splits
  are leakage;
- **wrong labels**: cross-validated out-of-sample probabilities on the features, then confident
  learning (cleanlab), each suspect with a suggested label;
- **off-topic**: photos far from every other photo in feature space (mean cosine distance to
  their nearest neighbours, robust z-score), and, where the backbone has its ImageNet classifier,
  whose ImageNet concepts are atypical of their class (a moped among phones): the two robust
  z-scores are summed and standardised again to rank them; a photo is flagged on the distance.

It writes ``report.html`` (self-contained, with thumbnails), ``suspects.csv``,
``duplicates.csv``, ``unreadable.csv``, ``suspects.png`` (a sheet of the top suspects),
``summary.json`` and ``exclude.csv``: the files it suggests leaving out, which
``vitrina train --exclude`` reads. It never deletes, moves or changes the user's files.

Each step has its module: :mod:`.settings`, :mod:`.backbones` (features and ImageNet concepts),
:mod:`.duplicates`, :mod:`.mislabels`, :mod:`.offtopic`, :mod:`.suspects`, :mod:`.exclusions`
and :mod:`.report` (the files).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.cache import default_cache_dir
from vitrina.data.samples import Dataset
from vitrina.errors import DataError
from vitrina.quality.backbones import DatasetFeatures, dataset_features
from vitrina.quality.duplicates import describe_groups, find_duplicates
from vitrina.quality.exclusions import exclusions, write_exclude
from vitrina.quality.mislabels import LabelIssues, wrong_labels
from vitrina.quality.offtopic import OffTopic, find_off_topic
from vitrina.quality.report import write_outputs
from vitrina.quality.settings import (
    CleanSettings,
    Log,
    backbone_entries,
    excluded_kinds,
)
from vitrina.quality.suspects import list_suspects

# CleanSettings and write_exclude are offered here too: callers import them with clean_dataset.
__all__ = ["CleanSettings", "clean_dataset", "write_exclude"]


def clean_dataset(
    dataset: Dataset,
    config: Config,
    out_dir: str | Path,
    settings: CleanSettings | None = None,
    *,
    workers: int = 2,
    progress: bool = True,
    log: Log = print,
) -> dict[str, Any]:
    """Find unreadable, duplicate, mislabelled and off-topic images; write the report files.

    Returns the summary (also written as ``summary.json``); see the module doc for the files.
    """
    started = time.perf_counter()
    settings = (settings or CleanSettings()).check()
    models = backbone_entries(settings)
    kinds = excluded_kinds(settings)
    out_dir = Path(out_dir)
    cache_dir = default_cache_dir(config.train.cache_dir)
    n_samples = sum(len(s) for s in dataset.splits.values())
    if n_samples == 0:
        raise DataError(f"{dataset.source}: no images to check")
    log(f"checking {n_samples} images in {len(dataset.classes)} classes with {', '.join(models)} features")

    timings: dict[str, float] = {}
    with _timed(timings, "features"):
        found = dataset_features(dataset, config, models, settings.concepts, cache_dir, workers, progress, log)
    items = found.items
    labels = np.asarray([dataset.class_to_index[item.label] for item in items], dtype=np.int64)
    with _timed(timings, "duplicates"):
        duplicates = find_duplicates(found.features, found.hashes, found.images, settings)
    with _timed(timings, "labels"):
        issues, label_note = wrong_labels(
            found.features, labels, len(dataset.classes), duplicates.scan.knn_index, duplicates.scan.knn_similarity,
            settings.folds, settings.c, config.train.seed,
        )
        if label_note:
            log(f"  {label_note}: skipped")
    with _timed(timings, "off_topic"):
        off_topic = find_off_topic(duplicates.scan, labels, found.concepts, settings.neighbours, settings.outlier_z)

    suspects = list_suspects(items, dataset.classes, issues, off_topic, duplicates.groups, settings.review)
    duplicate_groups = describe_groups(duplicates, items)
    excluded = exclusions(kinds, duplicate_groups, suspects)
    summary = _summary(
        dataset, n_samples, models, settings, kinds, found, duplicate_groups, issues, off_topic, suspects, excluded,
        notes=[note for note in (label_note, off_topic.note) if note], timings=timings,
    )
    write_outputs(out_dir, summary, items, suspects, duplicate_groups, found.unreadable, excluded, config.data.max_pixels)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "summary.json", {**summary, "top_suspects": [{k: v for k, v in s.items() if k != "index"} for s in suspects[:100]]})
    return summary


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds the ``with`` block takes as ``timings[step]``."""
    start = time.perf_counter()
    yield
    timings[step] = time.perf_counter() - start


def _summary(
    dataset: Dataset, n_samples: int, models: list[str], settings: CleanSettings, kinds: list[str],
    found: DatasetFeatures, duplicate_groups: list[dict], issues: LabelIssues | None, off_topic: OffTopic,
    suspects: list[dict], excluded: list[dict], *, notes: list[str], timings: dict[str, float],
) -> dict[str, Any]:
    """The figures of summary.json (less the seconds and the top suspects)."""
    return {
        "source": dataset.source,
        "classes": list(dataset.classes),
        "splits": {name: len(samples) for name, samples in dataset.splits.items()},
        "n_images": n_samples,
        "n_readable": len(found.items),
        "models": models,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "unreadable": found.unreadable,
        "duplicate_groups": len(duplicate_groups),
        "exact_duplicate_groups": sum(g["kind"] == "exact" for g in duplicate_groups),
        "near_duplicate_groups": sum(g["kind"] == "near" for g in duplicate_groups),
        "leakage_groups": sum(g["leakage"] for g in duplicate_groups),
        "label_suspects": int(issues.flagged.sum()) if issues is not None else 0,
        "off_topic_suspects": int(off_topic.flagged.sum()),
        "off_topic_score": "feature distance + atypical ImageNet concepts" if found.concepts else "feature distance",
        "suspects": len(suspects),
        "flagged": int(sum(bool(row["flagged"]) for row in suspects)),
        "excluded": len(excluded),
        "exclude_kinds": kinds,
        "cross_validation": {"folds": issues.folds, "accuracy": round(issues.accuracy, 4)} if issues is not None else None,
        "notes": notes,
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
