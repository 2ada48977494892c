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
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrina.artifact import write_json
from vitrina.config import Config
from vitrina.data.samples import Dataset, Sample
from vitrina.errors import ConfigError, DataError

Log = Callable[[str], None]
KINDS = ("duplicates", "labels", "off-topic")
SHEET_SUSPECTS = 64  # thumbnails on suspects.png
DUPLICATE_SIDE = 128  # letterboxed datasets: the side of the whole, squashed photos duplicates are compared on


@dataclass
class CleanSettings:
    """What `vitrina clean` looks for and how hard (the CLI flags of the same names set them)."""

    # Backbones whose L2-normalised features are concatenated (comma-separated registry names).
    # Backbones, each optionally with its input size as NAME@SIZE (default: the backbone's own).
    # lite0 at 288 px: flipped-label recall 0.745 -> 0.776 on freiburg, for about 40 s more.
    models: str = "efficientnet_lite0@288,efficientnet_lite2"
    folds: int = 5  # cross-validation folds for the out-of-sample probabilities
    c: float = 10.0  # inverse L2 strength of the fold classifiers
    neighbours: int = 10  # nearest neighbours whose mean distance makes the off-topic score
    outlier_z: float = 3.0  # robust z-score of the off-topic score above which a photo is off-topic
    # Off-topic ranking: the distance above plus how atypical a photo's ImageNet concepts are for its
    # class (backbones with their ImageNet classifier); photos are flagged on the distance alone. Avito, judged by eye: 2 more real off-topic
    # photos in the top 50 of the ranking (scooters, a moped, a tricycle, an angle grinder).
    concepts: bool = True
    # Near duplicates (measured with resized, recompressed and cropped copies, bench/bench_clean.py):
    # close hashes, or fairly close hashes and similar features, make a candidate pair; it is a near
    # duplicate when the two images also line up pixel for pixel. (Freiburg: the planted copies
    # line up at 0.87-0.99, 0.97 typical; photos of one product on one shelf at 0.6-0.85, except
    # the same shelf shot twice in a row, which lines up as well as a copy.)
    hash_bits: int = 14  # perceptual hashes this close: a candidate whatever the features say
    similar_hash_bits: int = 24  # hashes this close and features at least min_similarity: a candidate
    min_similarity: float = 0.8
    min_alignment: float = 0.915  # grey correlation, allowing a small crop, a candidate needs
    exclude_kinds: str = "duplicates,labels,off-topic"  # what goes into exclude.csv
    review: int = 100  # suspects listed for review (ranked) beyond the flagged ones

    def check(self) -> "CleanSettings":
        if self.folds < 2:
            raise ConfigError(f"folds must be at least 2, got {self.folds}")
        if self.c <= 0:
            raise ConfigError(f"c must be positive, got {self.c}")
        if self.review < 0:
            raise ConfigError(f"review must be at least 0, got {self.review}")
        if self.neighbours < 1:
            raise ConfigError(f"neighbours must be at least 1, got {self.neighbours}")
        if not 0 <= self.hash_bits <= self.similar_hash_bits <= 64:
            raise ConfigError("hash distances must satisfy 0 <= hash_bits <= similar_hash_bits <= 64")
        if not -1.0 <= self.min_similarity <= 1.0:
            raise ConfigError(f"min_similarity must be in [-1, 1], got {self.min_similarity}")
        if not -1.0 <= self.min_alignment <= 1.0:
            raise ConfigError(f"min_alignment must be in [-1, 1], got {self.min_alignment}")
        _models(self)
        _exclude_kinds(self)
        return self


@dataclass
class Item:
    """One readable image of the dataset."""

    path: str
    split: str
    label: str
    sample: Sample


def _models(settings: CleanSettings) -> list[str]:
    names = [name.strip() for name in settings.models.split(",") if name.strip()]
    if not names:
        raise ConfigError("--model: name at least one pretrained backbone (see `vitrina models`)")
    for name in names:
        _model_and_size(name)
    return list(dict.fromkeys(names))


def _model_and_size(entry: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME@SIZE`` -> (registry name, input size or None for the backbone's own)."""
    name, _, size = entry.partition("@")
    if not size:
        return name, None
    if not size.isdigit() or not 16 <= int(size) <= 1024:
        raise ConfigError(f"--model {entry}: the size after @ must be a whole number of pixels (16-1024)")
    return name, int(size)


def _exclude_kinds(settings: CleanSettings) -> list[str]:
    kinds = [k.strip() for k in settings.exclude_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"--exclude-kinds: unknown kind {unknown[0]!r} (choose from {', '.join(KINDS)})")
    return kinds


def _backbone_features(
    dataset: Dataset, config: Config, model_name: str, cache_dir: Path, workers: int, progress: bool, log: Log,
    keep_images: bool = True,
) -> tuple[list[tuple[str, int]], list[str], np.ndarray, np.ndarray, list[dict]]:
    """Decode every split for one backbone and compute its features as training does (same cache).

    Returns (split, position) of every readable sample, their content hashes, their decoded
    images (for the perceptual hash; empty unless ``keep_images``), the features, and the
    unreadable files.
    """
    import copy

    import torch

    from vitrina.data.cache import decode_samples
    from vitrina.models.registry import create_model, get_spec
    from vitrina.models.runtime import resolve_device, resolve_precision
    from vitrina.training.plan import make_plan
    from vitrina.training.trainer import BackboneFeatures

    cfg = copy.deepcopy(config)
    model_name, size = _model_and_size(model_name)
    cfg.model.name = model_name
    cfg.train.mode = "bottleneck"
    if size is not None:
        cfg.model.input_size = size
    elif cfg.model.input_size is None:
        # The backbone's own input size (bottleneck training upscales, by 9/7), which is also what
        # fine-tuning's warm start caches.
        cfg.model.input_size = get_spec(model_name).preprocess.input_size
    plan = make_plan(dataset, cfg)
    if not plan.pretrained:
        raise ConfigError(f"clean needs a pretrained backbone; {model_name} has no pretrained weights here")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(cfg.train.seed)
    model = create_model(
        plan.model, max(1, len(dataset.classes)), pretrained=True, weights=cfg.model.weights,
        channels=plan.preprocess.channels, input_size=plan.preprocess.input_size,
    ).to(device)
    model.eval()
    # The same identity train() gives the backbone, so training and cleaning share cached features.
    model_id = f"{plan.model}|{cfg.model.weights or 'pretrained'}"
    backbone = BackboneFeatures(model, model_id, plan, cache_dir, device, precision, cfg.train.feature_runtime, log)
    where, hashes, images, feats, skipped = [], [], [], [], []
    for split, samples in dataset.splits.items():
        decoded = decode_samples(
            samples, plan.preprocess, cache_dir, max_pixels=cfg.data.max_pixels, workers=workers,
            progress=progress, desc=f"decoding {split}",
        )
        skipped += [{**item, "split": split, "label": _label_of(samples, item["path"])} for item in decoded.skipped]
        if len(decoded.index) == 0:
            continue
        feats.append(backbone(decoded))
        where += [(split, int(i)) for i in decoded.index]
        hashes += list(decoded.hashes)
        if not keep_images:
            continue
        if plan.preprocess.resize == "letterbox":
            # Duplicates are compared on whole photos without the letterbox's padding: two photos of
            # one shape share their padded bands, which would make them look alike.
            whole = decode_samples(
                [samples[int(i)] for i in decoded.index], plan.preprocess.with_overrides(resize="squash", input_size=DUPLICATE_SIDE),
                cache_dir, max_pixels=cfg.data.max_pixels, workers=workers, progress=False,
            )
            if len(whole.index) != len(decoded.index):  # pragma: no cover - the same files decode at any size
                raise DataError(f"{split}: some images decode at one size and not at another")
            images.append(whole.images)
        else:
            images.append(decoded.images)
    if not where:
        return [], [], np.zeros((0, 1, 1, 3), np.uint8), np.zeros((0, 1), np.float32), skipped
    return where, hashes, _concat_images(images), np.concatenate(feats).astype(np.float32), skipped


def _label_of(samples: list[Sample], path: str) -> str:
    return next((s.label for s in samples if s.path == path), "")


def _concat_images(parts: list[np.ndarray]) -> np.ndarray:
    if not parts:
        return np.zeros((0, 1, 1, 3), np.uint8)
    return parts[0] if len(parts) == 1 else np.concatenate([np.asarray(p) for p in parts])


def _normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def _imagenet_concepts(model_name: str, features: np.ndarray) -> np.ndarray | None:
    """N x 1000 ImageNet class probabilities from the backbone's own classifier (None without one)."""
    from vitrina.models.efficientnet_lite import imagenet_classifier

    head = imagenet_classifier(model_name)
    if head is None:
        return None
    logits = features.astype(np.float32) @ head[0].T + head[1]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(axis=1, keepdims=True)


def _concept_typicality(concepts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log of the probability that a photo's ImageNet concepts match its class's concept profile
    (the mean concept distribution of the class's other photos; all photos for a class of one)."""
    typicality = np.zeros(len(labels))
    overall = concepts.mean(axis=0)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        total = concepts[rows].sum(axis=0)
        profile = (total[None, :] - concepts[rows]) / (len(rows) - 1) if len(rows) > 1 else overall[None, :]
        typicality[rows] = np.log(np.maximum((concepts[rows] * profile).sum(axis=1), 1e-30))
    return typicality


def _robust_z(values: np.ndarray) -> np.ndarray:
    median = np.median(values)
    mad = np.median(np.abs(values - median)) * 1.4826
    return (values - median) / max(mad, 1e-9)


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
    from vitrina.data.cache import default_cache_dir
    from vitrina.quality.hashing import aligned_similarity, phash
    from vitrina.quality.mislabels import label_issues, usable_folds
    from vitrina.quality.neighbours import group_pairs, scan_pairs
    from vitrina.quality.report import write_outputs

    started = time.perf_counter()
    settings = (settings or CleanSettings()).check()
    models = _models(settings)
    kinds = _exclude_kinds(settings)
    out_dir = Path(out_dir)
    cache_dir = default_cache_dir(config.train.cache_dir)
    n_samples = sum(len(s) for s in dataset.splits.values())
    if n_samples == 0:
        raise DataError(f"{dataset.source}: no images to check")
    log(f"checking {n_samples} images in {len(dataset.classes)} classes with {', '.join(models)} features")

    timings: dict[str, float] = {}
    t = time.perf_counter()
    blocks, where, hashes, images, skipped = [], None, None, None, []
    concept_parts: list[np.ndarray] = []
    for name in models:
        w, h, imgs, feats, skipped_here = _backbone_features(
            dataset, config, name, cache_dir, workers, progress, log, keep_images=where is None
        )
        if where is None:
            where, hashes, images, skipped = w, h, imgs, skipped_here
        elif w != where:  # pragma: no cover - the same files decode (or fail) whatever the size
            raise DataError("backbones disagree on which images are readable; clean with one backbone")
        blocks.append(_normalise(feats))
        if settings.concepts and not config.model.weights and len(feats):
            probs = _imagenet_concepts(_model_and_size(name)[0], feats)
            if probs is not None:
                concept_parts.append(probs)
    assert where is not None and hashes is not None and images is not None
    features = np.concatenate(blocks, axis=1) / np.sqrt(len(blocks)) if where else np.zeros((0, 1), np.float32)
    features = features.astype(np.float32)
    timings["features"] = time.perf_counter() - t

    items = [Item(dataset.splits[split][pos].path, split, dataset.splits[split][pos].label, dataset.splits[split][pos]) for split, pos in where]
    n = len(items)
    class_index = dataset.class_to_index
    labels = np.asarray([class_index[item.label] for item in items], dtype=np.int64)

    # -- duplicates
    t = time.perf_counter()
    content_ids: dict[str, int] = {}
    content = np.asarray([content_ids.setdefault(h, len(content_ids)) for h in hashes], dtype=np.int64)
    hashes64 = phash(images)
    scan = scan_pairs(
        features if n else None, hashes64, content, k=settings.neighbours, strong_bits=settings.hash_bits,
        loose_bits=settings.similar_hash_bits, min_similarity=settings.min_similarity,
        verify=lambda i, j: aligned_similarity(images, i, j), min_alignment=settings.min_alignment,
    )
    exact_i, exact_j = [], []
    first_of: dict[int, int] = {}
    for i, c in enumerate(content.tolist()):
        if c in first_of:
            exact_i.append(first_of[c])
            exact_j.append(i)
        else:
            first_of[c] = i
    groups = group_pairs(
        n, np.concatenate([np.asarray(exact_i, np.int64), scan.pairs_i]),
        np.concatenate([np.asarray(exact_j, np.int64), scan.pairs_j]),
    )
    timings["duplicates"] = time.perf_counter() - t

    # -- wrong labels
    t = time.perf_counter()
    label_note = None
    issues = None
    if n and len(np.unique(labels)) >= 2 and usable_folds(labels, settings.folds) >= 2:
        issues = label_issues(
            features, labels, len(dataset.classes), scan.knn_index, scan.knn_similarity,
            settings.folds, settings.c, config.train.seed,
        )
    else:
        label_note = "wrong-label detection needs at least 2 classes with at least 2 readable images each"
        log(f"  {label_note}: skipped")
    timings["labels"] = time.perf_counter() - t

    # -- off-topic
    t = time.perf_counter()
    outlier_note = None
    distance = np.full(n, np.nan)
    outlier_z = np.full(n, np.nan)
    concept_z = np.full(n, np.nan)
    if n > settings.neighbours + 1:
        valid = scan.knn_index >= 0
        distance = 1.0 - np.where(valid, scan.knn_similarity, np.nan)
        distance = np.nanmean(distance, axis=1)
        outlier_z = _robust_z(distance)
        off_topic = outlier_z >= settings.outlier_z
        if concept_parts:
            concept_z = _robust_z(-_concept_typicality(sum(concept_parts) / len(concept_parts), labels))
            # The combined score ranks the photos to review; flagging (and exclude.csv) stays with
            # the distance alone, which flags fewer real products on small datasets.
            outlier_z = _robust_z(outlier_z + concept_z)
    else:
        outlier_note = f"off-topic detection needs more than {settings.neighbours + 1} readable images"
        off_topic = np.zeros(n, dtype=bool)
    timings["off_topic"] = time.perf_counter() - t

    # -- the suspects: each kind ranked on its own (labels by the probability of the given label,
    # off-topic by its score), the two rankings interleaved; a photo and its copies are listed once.
    group_of = {member: g for g, members in enumerate(groups) for member in members}
    label_flag = issues.flagged if issues is not None else np.zeros(n, bool)
    rank_label = np.full(n, np.inf)
    if issues is not None:
        rank_label[np.argsort(issues.quality, kind="stable")] = np.arange(n)
    rank_out = np.full(n, np.inf)
    if np.isfinite(outlier_z).any():
        rank_out[np.argsort(-np.nan_to_num(outlier_z, nan=-np.inf), kind="stable")] = np.arange(n)
    priority = np.minimum(rank_label, rank_out)
    flagged = label_flag | off_topic
    listed_groups: set[int] = set()
    suspects_idx: list[int] = []
    for i in np.lexsort((rank_out, priority)).tolist():
        if not np.isfinite(priority[i]):
            break
        if len(suspects_idx) >= settings.review and not flagged[i]:
            continue  # past the review list only flagged photos are listed
        if i in group_of:
            if group_of[i] in listed_groups:
                continue
            listed_groups.add(group_of[i])
        suspects_idx.append(i)

    group_size = {g: len(members) for g, members in enumerate(groups)}
    suspects = []
    for rank, i in enumerate(suspects_idx, start=1):
        kinds_here = [kind for kind, flag in (("label", label_flag[i]), ("off-topic", off_topic[i])) if flag]
        by_label = rank_label[i] <= rank_out[i]
        row = {
            "rank": rank,
            "path": items[i].path,
            "split": items[i].split,
            "label": items[i].label,
            "issue": "label" if by_label else "off-topic",
            "flagged": "+".join(kinds_here),
            "suggested": dataset.classes[int(issues.suggested[i])] if issues is not None and (by_label or label_flag[i]) else "",
            "label_probability": round(float(issues.quality[i]), 4) if issues is not None else None,
            "suggested_probability": round(float(issues.probabilities[i, issues.suggested[i]]), 4) if issues is not None else None,
            "outlier_distance": round(float(distance[i]), 4) if np.isfinite(distance[i]) else None,
            "outlier_z": round(float(outlier_z[i]), 2) if np.isfinite(outlier_z[i]) else None,
            "concept_z": round(float(concept_z[i]), 2) if np.isfinite(concept_z[i]) else None,
            "copies": group_size.get(group_of.get(i, -1), 1) - 1,
            "duplicate_group": group_of.get(i, -1) + 1 or "",
            "index": i,
        }
        suspects.append(row)

    duplicate_groups = _describe_groups(groups, items, content, scan)
    excluded = _exclusions(kinds, duplicate_groups, suspects)
    summary: dict[str, Any] = {
        "source": dataset.source,
        "classes": list(dataset.classes),
        "splits": {name: len(samples) for name, samples in dataset.splits.items()},
        "n_images": n_samples,
        "n_readable": n,
        "models": models,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "unreadable": skipped,
        "duplicate_groups": len(duplicate_groups),
        "exact_duplicate_groups": sum(g["kind"] == "exact" for g in duplicate_groups),
        "near_duplicate_groups": sum(g["kind"] == "near" for g in duplicate_groups),
        "leakage_groups": sum(g["leakage"] for g in duplicate_groups),
        "label_suspects": int(label_flag.sum()),
        "off_topic_suspects": int(off_topic.sum()),
        "off_topic_score": "feature distance + atypical ImageNet concepts" if concept_parts else "feature distance",
        "suspects": len(suspects),
        "flagged": int(sum(bool(row["flagged"]) for row in suspects)),
        "excluded": len(excluded),
        "exclude_kinds": kinds,
        "cross_validation": {"folds": issues.folds, "accuracy": round(issues.accuracy, 4)} if issues is not None else None,
        "notes": [note for note in (label_note, outlier_note) if note],
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    write_outputs(out_dir, summary, items, suspects, duplicate_groups, skipped, excluded, config.data.max_pixels)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(out_dir / "summary.json", {**summary, "top_suspects": [{k: v for k, v in s.items() if k != "index"} for s in suspects[:100]]})
    return summary


def _describe_groups(groups: list[list[int]], items: list[Item], content: np.ndarray, scan: Any) -> list[dict]:
    pair_info = {
        (int(a), int(b)): (int(bits), float(sim), float(lined))
        for a, b, bits, sim, lined in zip(scan.pairs_i, scan.pairs_j, scan.pair_bits, scan.pair_similarity, scan.pair_alignment)
    }
    out = []
    for members in groups:
        exact = len({int(content[m]) for m in members}) == 1
        splits = sorted({items[m].split for m in members})
        labels = sorted({items[m].label for m in members})
        closest = [pair_info[(a, b)] for a in members for b in members if (a, b) in pair_info]
        out.append(
            {
                "group": len(out) + 1,
                "kind": "exact" if exact else "near",
                "size": len(members),
                "splits": splits,
                "labels": labels,
                "leakage": len(splits) > 1,
                "label_conflict": len(labels) > 1,
                "max_hash_bits": max((c[0] for c in closest), default=0),
                "min_similarity": round(min((c[1] for c in closest if np.isfinite(c[1])), default=1.0), 4),
                "min_alignment": round(min((c[2] for c in closest if np.isfinite(c[2])), default=1.0), 4),
                "members": [{"index": m, "path": items[m].path, "split": items[m].split, "label": items[m].label} for m in members],
            }
        )
    # Leakage first, then label conflicts, then the rest (each in order of first member).
    return sorted(out, key=lambda g: (not g["leakage"], not g["label_conflict"], g["group"]))


_EVALUATION_FIRST = {"test": 0, "val": 1, "validation": 1}


def _exclusions(kinds: list[str], groups: list[dict], suspects: list[dict]) -> list[dict]:
    """Files suggested for leaving out, each once with its reasons.

    Duplicates: one file of each group is kept, preferring a test, then a validation file, so
    the evaluation data stays and the copies that leak into training go. Suspects: every one.
    """
    reasons: dict[str, list[str]] = {}
    order: list[str] = []

    def add(path: str, reason: str) -> None:
        if path not in reasons:
            reasons[path] = []
            order.append(path)
        if reason not in reasons[path]:
            reasons[path].append(reason)

    if "duplicates" in kinds:
        for g in groups:
            members = g["members"]
            keep = min(range(len(members)), key=lambda k: (_EVALUATION_FIRST.get(members[k]["split"], 2), k))
            kept = members[keep]
            for k, member in enumerate(members):
                if k != keep:
                    add(member["path"], f"{g['kind']} duplicate of {kept['path']} ({kept['split']})")
    for s in suspects:
        if "label" in s["flagged"] and "labels" in kinds:
            add(s["path"], f"label {s['label']!r} looks wrong (suggested {s['suggested']!r})")
        if "off-topic" in s["flagged"] and "off-topic" in kinds:
            add(s["path"], "off-topic: far from every other photo")
    return [{"path": p, "reason": "; ".join(reasons[p])} for p in order]


def write_exclude(path: str | Path, excluded: list[dict]) -> Path:
    """The exclusion list as a CSV with ``path`` and ``reason`` columns (what ``--exclude`` reads)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name for the exclusion list")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "reason"])
        writer.writeheader()
        writer.writerows(excluded)
    os.replace(tmp, path)
    return path
