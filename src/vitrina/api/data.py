"""The public API of data: inspect, clean, preview the augmentation, list models, manage the caches."""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from vitrina import config as config_lib
from vitrina.api.settings import resolve_config
from vitrina.artifact import prepare_out_dir
from vitrina.config import Config
from vitrina.data.cache import CACHE_KINDS, cache_entries, default_cache_dir
from vitrina.data.cache import prune_cache as prune
from vitrina.data.images import open_sample
from vitrina.data.inspect import inspect_dataset
from vitrina.data.sources import load_dataset
from vitrina.errors import ImageError, VitrinaError
from vitrina.models import registry
from vitrina.models.network import param_count
from vitrina.plots import thumbnail_grid
from vitrina.quality.clean import CleanSettings, clean_dataset, write_exclude
from vitrina.training.augment import augment_batch, build_augment
from vitrina.training.plan import make_plan, with_recommended_settings


@dataclass
class InspectResult:
    out_dir: Path
    summary: dict[str, Any]


def inspect(
    data: str | Path,
    out: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    workers: int = 2,
    progress: bool = True,
    runs_dir: str | Path = "runs",
) -> InspectResult:
    """Scan a dataset once; write report.html, summary.json and plots into one folder."""
    cfg = resolve_config(config)
    dataset = load_dataset(data, cfg.data, carve_val=False)
    out_dir = prepare_out_dir(out, runs_dir, "inspect")
    config_lib.save(cfg, out_dir)
    summary = inspect_dataset(dataset, out_dir, max_pixels=cfg.data.max_pixels, workers=workers, progress=progress)
    return InspectResult(out_dir=out_dir, summary=summary)


@dataclass
class CleanResult:
    out_dir: Path
    summary: dict[str, Any]
    exclude_file: Path  # OUT/exclude.csv (and a copy at exclude_out when asked)


def clean(
    data: str | Path,
    out: str | Path | None = None,
    config: Config | str | Path | None = None,
    *,
    settings: CleanSettings | None = None,
    model: str | None = None,
    exclude_out: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    runs_dir: str | Path = "runs",
    log: Callable[[str], None] = print,
) -> CleanResult:
    """Find unreadable, duplicate, mislabelled and off-topic images of a dataset; never touches them.

    Writes report.html, suspects.csv, duplicates.csv, unreadable.csv, suspects.png, summary.json
    and exclude.csv (for ``train --exclude``) into one folder. ``model``: backbone name(s),
    comma-separated (default: ``settings.models``); ``exclude_out``: also write the exclusion
    list to this file (which must not exist yet).
    """
    cfg = resolve_config(config)
    settings = settings or CleanSettings()
    if model:
        settings = replace(settings, models=model)
    settings.check()
    if exclude_out is not None and Path(exclude_out).exists():
        raise VitrinaError(f"{exclude_out} already exists; choose a new file for the exclusion list")
    dataset = load_dataset(data, cfg.data, carve_val=False)
    out_dir = prepare_out_dir(out, runs_dir, "clean")
    config_lib.save(cfg, out_dir)
    summary = clean_dataset(dataset, cfg, out_dir, settings, workers=workers, progress=progress, log=log)
    exclude_file = out_dir / "exclude.csv"
    if exclude_out is not None:
        with open(exclude_file, newline="", encoding="utf-8") as fh:
            write_exclude(exclude_out, list(csv.DictReader(fh)))
        summary["exclude_out"] = str(exclude_out)
    return CleanResult(out_dir, summary, exclude_file)


def augment_preview(
    data: str | Path,
    config: Config | str | Path | None = None,
    out: str | Path | None = None,
    *,
    images: int = 6,
    variants: int = 7,
    runs_dir: str | Path = "runs",
) -> Path:
    """A PNG grid: each row one training photo as the model sees it, then augmented variants."""
    cfg = resolve_config(config)
    dataset = load_dataset(data, cfg.data, carve_val=False)
    cfg = with_recommended_settings(dataset, cfg)
    preprocess = make_plan(dataset, cfg).preprocess
    transform = build_augment(cfg.augment, channels=preprocess.channels)
    rng = np.random.default_rng(cfg.train.seed)
    train = dataset.splits["train"]
    picked = [train[i] for i in rng.choice(len(train), size=min(images, len(train)), replace=False)]
    torch.manual_seed(cfg.train.seed)
    tiles, captions = [], []
    for sample in picked:
        try:
            base = preprocess.to_uint8(open_sample(sample, preprocess.mode, cfg.data.max_pixels))
        except ImageError:
            continue
        batch = torch.from_numpy(np.repeat(base[None], variants, axis=0))
        augmented = augment_batch(transform, batch).numpy()
        for k, arr in enumerate([base, *augmented]):
            tiles.append(Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr))
            captions.append(sample.label if k == 0 else f"variant {k}")
    out_path = Path(out) if out else prepare_out_dir(None, runs_dir, "augment") / "augment_preview.png"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    thumbnail_grid(tiles, captions, out_path, columns=variants + 1, cell=min(160, max(64, preprocess.input_size)),
                   title="augmentation preview: original (as the model sees it), then random variants")
    return out_path


def list_models() -> list[dict[str, Any]]:
    """The registry as rows: name, family, params, channels, input size, resize, description."""
    rows = []
    for spec in registry.list_models():
        model = registry.create_model(spec.name, num_classes=10, pretrained=False)
        rows.append({
            "name": spec.name, "family": spec.family, "params": param_count(model),
            "channels": spec.preprocess.channels, "input_size": spec.preprocess.input_size,
            "resize": spec.preprocess.resize, "description": spec.description,
        })
    return rows


def cache_summary(cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What vitrina's caches hold: the folder, and entries, bytes and last use per kind."""
    entries = cache_entries(cache_dir)
    kinds = {}
    for kind in CACHE_KINDS:
        mine = [e for e in entries if e.kind == kind]
        kinds[kind] = {"entries": len(mine), "bytes": sum(e.size for e in mine), "last_used": max((e.last_used for e in mine), default=None)}
    root = default_cache_dir(str(cache_dir) if cache_dir is not None else None)
    return {"folder": str(root), "kinds": kinds, "bytes": sum(e.size for e in entries)}


def prune_cache(
    cache_dir: str | Path | None = None, *, older_than_days: float | None = None, max_gb: float | None = None, dry_run: bool = False
) -> list[dict[str, Any]]:
    """Remove cache entries unused for ``older_than_days`` and then, least recently used first,
    until at most ``max_gb`` remain; returns the removed entries (with ``dry_run``, nothing is removed)."""
    max_bytes = None if max_gb is None else int(max_gb * 1e9)
    removed = prune(cache_dir, older_than_days=older_than_days, max_bytes=max_bytes, dry_run=dry_run)
    return [{"kind": e.kind, "path": str(e.path), "bytes": e.size, "last_used": e.last_used} for e in removed]
