"""The public surface: what the CLI and the server call. No argument parsing, no printing."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vitrina import config as config_lib
from vitrina.artifact import prepare_out_dir
from vitrina.config import Config


def resolve_config(config: Config | str | Path | None = None, **overrides: Any) -> Config:
    """A :class:`Config` from an object, a YAML path or defaults, then dotted-key overrides."""
    if isinstance(config, Config):
        return config_lib.apply(config, overrides) if overrides else config
    return config_lib.resolve(config, overrides)


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
    from vitrina.data.inspect import inspect_dataset
    from vitrina.data.sources import load_dataset

    cfg = resolve_config(config)
    dataset = load_dataset(data, cfg.data, carve_val=False)
    out_dir = prepare_out_dir(out, runs_dir, "inspect")
    config_lib.save(cfg, out_dir)
    summary = inspect_dataset(
        dataset, out_dir, max_pixels=cfg.data.max_pixels, workers=workers, progress=progress
    )
    return InspectResult(out_dir=out_dir, summary=summary)


@dataclass
class TrainRun:
    run_dir: Path
    metrics: dict[str, Any]
    split_metrics: dict[str, dict[str, Any]]
    history: list[dict[str, float]]


def report_split(split_names: list[str], holdout: str | None) -> str:
    """The split whose figures a run reports: the holdout, else test, else validation."""
    if holdout and holdout in split_names:
        return holdout
    return "test" if "test" in split_names else "val"


def train(
    data: str | Path,
    config: Config | str | Path | None = None,
    out: str | Path | None = None,
    *,
    resume: bool = False,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainRun:
    """Train a classifier and write one run folder (config, history, curves, model, metrics)."""
    import time

    from vitrina.artifact import write_json
    from vitrina.data.cache import default_cache_dir
    from vitrina.data.sources import load_dataset
    from vitrina.errors import VitrinaError
    from vitrina.evaluation.evaluate import evaluate_images, evaluate_probabilities, write_predictions
    from vitrina.evaluation.metrics import softmax
    from vitrina.evaluation.report import write_run_report
    from vitrina.models.runtime import resolve_device
    from vitrina.plots import learning_curves
    from vitrina.preprocess import Preprocess
    from vitrina.training.distributed import broadcast, init_distributed, local_device_name, shutdown
    from vitrina.training.trainer import is_main_process, peak_rss_mb
    from vitrina.training.trainer import train as run_training

    from vitrina.training.plan import check_trainable, make_plan

    cfg = resolve_config(config)
    dataset = load_dataset(data, cfg.data, carve_val=True)
    if "excluded" in dataset.carved:
        log(f"left out {dataset.carved['excluded']['count']} files listed in {dataset.carved['excluded']['file']}")
    check_trainable(dataset)  # refuse bad data and unknown models before any folder is made
    make_plan(dataset, cfg)
    init_distributed(cfg.train.device)
    if resume:
        if out is None or not Path(out).is_dir():
            raise VitrinaError("--resume needs --out pointing at the interrupted run folder")
        run_dir = Path(out)
    else:
        run_dir = broadcast(prepare_out_dir(out, runs_dir, "train") if is_main_process() else None)
    started = time.perf_counter()
    result = run_training(dataset, cfg, run_dir, resume=resume, progress=progress, log=log)
    if not is_main_process():
        shutdown()
        return TrainRun(run_dir, {}, {}, result.history)
    device = resolve_device(local_device_name(cfg.train.device))
    preprocess = Preprocess.from_dict(result.meta["preprocess"])
    split_metrics: dict[str, dict[str, Any]] = {}
    for split in dataset.splits:
        if split == "train":
            continue
        decoded = result.decoded[split]
        if split in result.logits:  # computed in training from cached features
            probs = softmax(result.logits[split])
            split_metrics[split] = evaluate_probabilities(probs, result.labels[split], dataset.classes, split, len(decoded.skipped))
        else:
            split_metrics[split], probs = evaluate_images(
                result.model, decoded.images, result.labels[split], dataset.classes, preprocess, device,
                result.meta["precision"], split=split, n_skipped=len(decoded.skipped),
                cache_dir=default_cache_dir(cfg.train.cache_dir),
            )
        samples = dataset.splits[split]
        write_predictions(
            run_dir / f"predictions_{split}.csv", [samples[i].path for i in decoded.index],
            [samples[i].label for i in decoded.index], probs, dataset.classes,
        )
    chosen = report_split(list(split_metrics), cfg.data.holdout)
    metrics = {
        **{k: v for k, v in split_metrics[chosen].items() if k not in ("confusion_matrix", "calibration")},
        "model": result.meta["model"],
        "mode": result.meta["mode"],
        "train_seconds": round(result.train_seconds, 2),
        "total_seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "val_accuracy": split_metrics["val"]["accuracy"],
        "splits": {name: {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n_images": m["n_images"]} for name, m in split_metrics.items()},
        **({"excluded": dataset.carved["excluded"]} if "excluded" in dataset.carved else {}),
    }
    write_json(run_dir / "metrics.json", metrics)
    for name, m in split_metrics.items():
        write_json(run_dir / f"metrics_{name}.json", m)
    if result.history:
        learning_curves(result.history, run_dir / "curves.png", title=f"{result.meta['model']} ({result.meta['mode']})")
    write_run_report(run_dir)
    return TrainRun(run_dir, metrics, split_metrics, result.history)


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
    import numpy as np
    import torch

    from vitrina.augment import augment_batch, build_augment
    from vitrina.data.images import open_sample
    from vitrina.data.sources import load_dataset
    from vitrina.errors import ImageError
    from vitrina.plots import thumbnail_grid
    from vitrina.training.plan import make_plan, with_recommended_settings
    from PIL import Image

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


def demo_data() -> Path:
    """The embedded demo dataset: clothing photos in train/validation/test class folders."""
    return Path(__file__).resolve().parent / "demo" / "clothing"


def demo_config() -> Config:
    """The demo's settings: a short fine-tune that finishes in a few minutes on 2 CPU cores."""
    return config_lib.resolve(overrides={"train.mode": "finetune", "train.epochs": 4})


def cache_summary(cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What vitrina's caches hold: the folder, and entries, bytes and last use per kind."""
    from vitrina.data.cache import CACHE_KINDS, cache_entries, default_cache_dir

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
    from vitrina.data.cache import prune_cache as prune

    max_bytes = None if max_gb is None else int(max_gb * 1e9)
    removed = prune(cache_dir, older_than_days=older_than_days, max_bytes=max_bytes, dry_run=dry_run)
    return [{"kind": e.kind, "path": str(e.path), "bytes": e.size, "last_used": e.last_used} for e in removed]


def list_models() -> list[dict[str, Any]]:
    """The registry as rows: name, family, params, channels, input size, resize, description."""
    from vitrina.models import registry

    rows = []
    for spec in registry.list_models():
        model = registry.create_model(spec.name, num_classes=10, pretrained=False)
        rows.append(
            {
                "name": spec.name,
                "family": spec.family,
                "params": registry.param_count(model),
                "channels": spec.preprocess.channels,
                "input_size": spec.preprocess.input_size,
                "resize": spec.preprocess.resize,
                "description": spec.description,
            }
        )
    return rows


# The rest of the public surface lives in modules of its own; it is re-exported here so that
# `vitrina.api` is the one place the CLI, the server and users call.
from vitrina.api_eval import compare, evaluate, tune  # noqa: E402
from vitrina.api_predict import export, predict  # noqa: E402
from vitrina.api_serve import serve  # noqa: E402
from vitrina.api_quality import clean  # noqa: E402
