"""The `vitrina` command line: argument parsing and printing only; every command calls the API."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any, Callable, Sequence

from vitrina import api
from vitrina.config import Config, resolve
from vitrina.errors import VitrinaError
from vitrina.version import __version__

Handler = Callable[[argparse.Namespace], int]

# Flags that map onto config keys: flag -> (config key, argparse kwargs).
DATA_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--root": ("data.root", {"metavar": "DIR", "help": "base folder for relative image paths in CSV and list files"}),
    "--classes-file": ("data.classes_file", {"metavar": "FILE", "help": "class names and ids ('name id' lines or a CSV)"}),
    "--coarse-map": ("data.coarse_map", {"metavar": "FILE", "help": "fine-to-coarse label map ('fine coarse' lines or a two-column CSV)"}),
    "--holdout": ("data.holdout", {"metavar": "SPLIT", "help": "reserve this split for reporting only; model selection uses a split carved from train"}),
    "--val-fraction": ("data.val_fraction", {"type": float, "metavar": "F", "help": "share of train carved as the validation split when none is given (default 0.15)"}),
    "--split-seed": ("data.split_seed", {"type": int, "metavar": "N", "help": "seed of the carved splits (default 0)"}),
    "--exclude": ("data.exclude", {"metavar": "FILE", "help": "file of image paths to leave out (one per line, or a CSV with a path column)"}),
    "--max-pixels": ("data.max_pixels", {"type": int, "metavar": "N", "help": "refuse images with more pixels than this (default 64,000,000)"}),
}

TRAIN_FLAGS: dict[str, tuple[str, dict[str, Any]]] = {
    "--model": ("model.name", {"metavar": "NAME", "help": "registry name (see `vitrina models`) or timm:NAME"}),
    "--weights": ("model.weights", {"metavar": "PATH", "help": "local weights file for the backbone (.safetensors, .pth)"}),
    "--mode": ("train.mode", {"choices": ["scratch", "bottleneck", "finetune"], "help": "training mode (default finetune)"}),
    "--epochs": ("train.epochs", {"type": int, "metavar": "N", "help": "maximum number of epochs"}),
    "--batch-size": ("train.batch_size", {"type": int, "metavar": "N", "help": "batch size"}),
    "--lr": ("train.lr", {"type": float, "metavar": "LR", "help": "learning rate of the head (the body gets lr x train.body_lr_scale)"}),
    "--seed": ("train.seed", {"type": int, "metavar": "N", "help": "random seed for reproducible runs"}),
    "--device": ("train.device", {"metavar": "DEV", "help": "auto, cpu, cuda or cuda:N (default auto)"}),
    "--workers": ("train.workers", {"type": int, "metavar": "N", "help": "data-loading worker processes (default: automatic)"}),
    "--balance": ("train.balance", {"choices": ["none", "weights", "sampler"], "help": "class balancing: weighted loss or balanced sampler"}),
}


def _add_config_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, dict[str, Any]]], title: str) -> None:
    group = parser.add_argument_group(title)
    for flag, (key, kwargs) in flags.items():
        group.add_argument(flag, dest=f"cfg:{key}", default=None, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (overridden by flags)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override any setting, e.g. --set train.label_smoothing=0.05 (repeatable)",
    )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Collect config overrides: --set pairs first, then dedicated flags (which win)."""
    out: dict[str, Any] = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VitrinaError(f"--set expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value
    for name, value in vars(args).items():
        if name.startswith("cfg:") and value is not None:
            out[name[4:]] = value
    return out


def _resolve(args: argparse.Namespace) -> Config:
    return resolve(args.config, _overrides(args))


# ------------------------------------------------------------------------------ commands
def cmd_inspect(args: argparse.Namespace) -> int:
    result = api.inspect(
        args.data, out=args.out, config=_resolve(args), workers=args.workers, progress=not args.quiet
    )
    summary = result.summary
    print(f"{summary['source']}: {summary['n_images']} readable images in {len(summary['classes'])} classes")
    for split, total in summary["totals"].items():
        print(f"  {split:<12} {total:>7}")
    print(f"  unreadable: {len(summary['skipped'])}   duplicate groups: {len(summary['duplicates'])}"
          f" ({len(summary['cross_split_duplicates'])} across splits)")
    print(f"report: {result.out_dir / 'report.html'}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    chosen = {name: getattr(args, name) for name in api.CleanSettings.__dataclass_fields__ if getattr(args, name, None) is not None}
    settings = api.CleanSettings(**chosen)
    result = api.clean(
        args.data, out=args.out, config=_resolve(args), settings=settings, exclude_out=args.exclude_out,
        workers=args.workers, progress=not args.quiet, runs_dir=args.runs, log=lambda message: print(message, file=sys.stderr),
    )
    s = result.summary
    print(f"{s['source']}: {s['n_readable']} readable images checked, {len(s['unreadable'])} unreadable")
    print(f"  duplicate groups: {s['exact_duplicate_groups']} exact, {s['near_duplicate_groups']} near ({s['leakage_groups']} across splits)")
    print(f"  likely wrong labels: {s['label_suspects']}   off-topic: {s['off_topic_suspects']}")
    for note in s["notes"]:
        print(f"  note: {note}")
    print(f"report: {result.out_dir / 'report.html'}  (suspects.csv, duplicates.csv, suspects.png)")
    print(f"exclusion list: {result.exclude_file} ({s['excluded']} files; nothing was moved or deleted)"
          + (f", copied to {s['exclude_out']}" if s.get("exclude_out") else ""))
    print(f"train without them: vitrina train {args.data} --exclude {s.get('exclude_out') or result.exclude_file}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    run = api.train(args.data, config=_resolve(args), out=args.out, resume=args.resume, runs_dir=args.runs, progress=not args.quiet)
    if not run.metrics:  # a non-zero rank of a distributed run writes nothing
        return 0
    m = run.metrics
    print(f"{m['model']} ({m['mode']}): {m['split']} accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} "
          f"on {m['n_images']} images; trained in {m['train_seconds']:.0f} s, peak memory {m['peak_rss_mb']:.0f} MB")
    for name, split in m["splits"].items():
        print(f"  {name:<12} accuracy {split['accuracy']:.4f}  ({split['n_images']} images)")
    if "excluded" in m:
        print(f"  left out {m['excluded']['count']} files listed in {m['excluded']['file']}")
    print(f"run folder: {run.run_dir}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    path = api.augment_preview(args.data, config=_resolve(args), out=args.out, images=args.images, variants=args.variants, runs_dir=args.runs)
    print(f"augmentation preview: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    result = api.export(args.run, args.out, int8=args.int8, calibration=args.calibration)
    print(f"ONNX model: {result.onnx_path}")
    print(f"model card: {result.card_path}")
    if result.int8_path is not None:
        print(f"int8 model: {result.int8_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    summary = api.predict(
        args.model, args.inputs, args.out, top_k=args.top_k, resume=args.resume, batch_size=args.batch_size,
        workers=args.workers, backend=args.backend, threads=args.threads, progress=not args.quiet,
        log=lambda message: print(message, file=sys.stderr),
    )
    where = summary.out if summary.out is not None else "standard output"
    print(
        f"{summary.n_predicted} images predicted, {summary.n_errors} unreadable"
        + (f", {summary.n_resumed} already in the output" if summary.n_resumed else "")
        + f" in {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s, {summary.backend}); rows: {where}",
        file=sys.stderr,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = api.list_models()
    print(f"{'name':<20} {'family':<11} {'params':>9} {'input':>9}  {'resize':<12} description")
    for row in rows:
        size = f"{row['channels']}x{row['input_size']}"
        print(f"{row['name']:<20} {row['family']:<11} {row['params'] / 1e6:>8.2f}M {size:>9}  {row['resize']:<12} {row['description']}")
    print("\nAny timm architecture is available as timm:NAME with --weights PATH (or hub weights when online).")
    return 0


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def cmd_cache(args: argparse.Namespace) -> int:
    if args.action == "prune":
        removed = api.prune_cache(args.cache_dir, older_than_days=args.older_than, max_gb=args.max_size, dry_run=args.dry_run)
        verb = "would remove" if args.dry_run else "removed"
        for entry in removed:
            age = (time.time() - entry["last_used"]) / 86400
            print(f"  {verb} {entry['kind']:<8} {_gb(entry['bytes']):>10}  unused for {age:.1f} days  {entry['path']}")
        print(f"{verb} {len(removed)} entries, {_gb(sum(e['bytes'] for e in removed))}")
    summary = api.cache_summary(args.cache_dir)
    print(f"cache: {summary['folder']} ({_gb(summary['bytes'])})")
    for kind, info in summary["kinds"].items():
        last = "never" if info["last_used"] is None else f"{(time.time() - info['last_used']) / 86400:.1f} days ago"
        print(f"  {kind:<9} {info['entries']:>5} entries {_gb(info['bytes']):>10}  last used {last}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    data = api.demo_data()
    print(f"vitrina demo on the embedded clothing photos ({data})")
    print("step 1/3: inspect the data")
    inspected = api.inspect(data, runs_dir=args.runs, progress=not args.quiet)
    print(f"  {inspected.summary['n_images']} images, {len(inspected.summary['classes'])} classes; "
          f"report: {inspected.out_dir / 'report.html'}")
    print("step 2/3: train a classifier (efficientnet_lite0, fine-tuned) and evaluate it on the test photos")
    run = api.train(data, api.demo_config(), runs_dir=args.runs, progress=not args.quiet)
    m = run.metrics
    print(f"  {m['split']} accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} on {m['n_images']} photos; "
          f"trained in {m['train_seconds']:.0f} s")
    print(f"  run folder: {run.run_dir} (report: {run.run_dir / 'report.html'})")
    if args.no_serve:
        return 0
    print("step 3/3: serve the model: a web page that checks a seller's photo against the chosen category")
    with contextlib.suppress(KeyboardInterrupt):
        api.serve(run.run_dir, host=args.host, port=args.port, on_ready=announce_server, log_level="warning")
    return 0

def cmd_evaluate(args: argparse.Namespace) -> int:
    result = api.evaluate(args.model, args.data, split=args.split, out=args.out, overrides=_overrides(args), tta=args.tta, progress=not args.quiet)
    m = result.metrics
    print(f"{m['model']} ({m['mode']}) on {m['split']}: {m['n_images']} images ({m['n_skipped']} unreadable, skipped)")
    tops = "".join(f", top-{k} {m[f'top{k}_accuracy']:.4f}" for k in (3, 5) if f"top{k}_accuracy" in m)
    print(f"  accuracy {m['accuracy']:.4f}{tops}")
    print(f"  macro F1 {m['macro_f1']:.4f}, weighted F1 {m['weighted_f1']:.4f}, expected calibration error {m['ece']:.4f}")
    if "coarse_accuracy" in m:
        print(f"  coarse-class accuracy {m['coarse_accuracy']:.4f}")
    if "tta" in m:
        print(f"  with test-time augmentation ({m['tta']['method']}): accuracy {m['tta']['accuracy']:.4f}, macro F1 {m['tta']['macro_f1']:.4f}")
    print(f"evaluation folder: {result.out_dir} (report.html, mistakes.html, metrics.json)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    result = api.compare(args.data, args.configs, out=args.out, overrides=_overrides(args), runs_dir=args.runs, progress=not args.quiet)
    print()
    print((result.out_dir / "leaderboard.md").read_text(encoding="utf-8"), end="")
    print(f"{len(result.rows)} configurations trained and evaluated on {result.split} in {result.total_seconds / 60:.1f} min")
    print(f"leaderboard: {result.out_dir / 'leaderboard.md'} (also .csv, .png; curves.png)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    overrides = _overrides(args)
    config = _resolve(args) if args.config or overrides else None
    search = [name.strip() for name in args.search.split(",") if name.strip()] if args.search else None
    result = api.tune(
        args.data, config, out=args.out, trials=args.trials, minutes=args.minutes, search=search,
        resume=args.resume, runs_dir=args.runs,
    )
    c = result.counts
    print(f"{c['complete']} trials complete, {c['pruned']} pruned, {c['fail']} failed")
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(f"best: trial {result.best_trial}, validation accuracy {result.best_value:.4f} ({params})")
    if result.default_value is not None:
        margin = result.best_value - result.default_value
        print(f"default config: validation accuracy {result.default_value:.4f}; margin of the best {margin * 100:+.2f} points")
    print(f"best config: {result.best_config}  (train it: vitrina train {args.data} --config {result.best_config})")
    print(f"study: {result.out_dir / 'study.db'} (resume with --out {result.out_dir} --resume)")
    return 0


def announce_server(info: Any) -> None:
    """Print what a starting server serves and the URL to open (``info``: an ``api_serve.ServeInfo``)."""
    access = "API keys required" if info.authentication else "no API keys (open to anyone who can reach it)"
    rate = f"{info.rate_limit:g} requests/s per client" if info.rate_limit else "no rate limit"
    print(f"vitrina serve: {info.model_name}, {info.classes} classes, version {info.model_version} ({info.backend}, "
          f"{info.workers} worker{'s' if info.workers > 1 else ''})")
    print(f"  moderation log: {info.database}; {access}; {rate}")
    print(f"  open {info.url} in a browser (API docs: {info.url}docs, moderation: {info.url}moderation); Ctrl+C stops the server",
          flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C is how a server ends, once its requests are answered
        api.serve(
            args.model, args.host, args.port, args.workers, on_ready=announce_server, backend=args.backend, threads=args.threads,
            database=args.db, store_images=args.store_images, api_keys_file=args.api_keys, rate_limit=args.rate_limit,
            rate_burst=args.burst, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, max_photos=args.max_photos,
            batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, queue_limit=args.queue_limit,
            reload_interval=args.reload_interval, confidence=args.confidence,
        )
    print("vitrina serve: stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitrina",
        description="Product image classification: inspect data, train and compare models, evaluate, export and serve.",
    )
    parser.add_argument("--version", action="version", version=f"vitrina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "inspect",
        help="report class balance, image sizes, unreadable files and duplicates of a dataset",
        description="Scan a dataset once and write report.html, summary.json and PNG plots.",
    )
    p.add_argument("data", metavar="DATA", help="class folders, train/val/test folders, a CSV, a pixel CSV, a list file or a dataset.yaml")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/inspect-NNN)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_common(p)
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_inspect)

    p = sub.add_parser(
        "train",
        help="train a classifier (from scratch, on frozen features, or by fine-tuning)",
        description="Train a model and write a run folder: config, history, curves, checkpoints, metrics.",
    )
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("--out", metavar="DIR", help="run folder (default: a new runs/train-NNN); with --resume, the interrupted run")
    p.add_argument("--runs", default="runs", metavar="DIR", help="parent of new run folders (default runs)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out with the same config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    _add_config_flags(p, TRAIN_FLAGS, "training options")
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "clean",
        help="find unreadable, duplicate, mislabelled and off-topic images (never changes them)",
        description="Check a dataset with frozen ImageNet features (the same cached features training uses): unreadable "
        "files; exact and near-duplicate photos within and across splits (leakage); likely wrong labels (cross-validated "
        "probabilities and confident learning, each with a suggested label); off-topic photos far from every other. Writes "
        "report.html with thumbnails, suspects.csv, duplicates.csv, suspects.png and exclude.csv, which "
        "`vitrina train --exclude` reads. Files are never deleted or moved.",
    )
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/clean-NNN)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="parent of new output folders (default runs)")
    p.add_argument("--exclude-out", metavar="FILE", help="also write the exclusion list to FILE (must not exist)")
    p.add_argument("--model", dest="models", metavar="NAMES", help="pretrained backbone(s) whose features are used, comma-separated, "
                   "each optionally NAME@SIZE for its input size (default efficientnet_lite0@288,efficientnet_lite2)")
    p.add_argument("--folds", type=int, metavar="N", help="cross-validation folds (default 5)")
    p.add_argument("--neighbours", type=int, metavar="K", help="nearest neighbours for the off-topic score and label votes (default 10)")
    p.add_argument("--outlier-z", dest="outlier_z", type=float, metavar="Z", help="robust z-score above which a photo is off-topic (default 3)")
    p.add_argument("--no-concepts", dest="concepts", action="store_false", default=None,
                   help="off-topic score from feature distance only, without the ImageNet concepts atypical of the class")
    p.add_argument("--hash-bits", dest="hash_bits", type=int, metavar="N", help="perceptual-hash distance that alone makes a near-duplicate candidate (default 14)")
    p.add_argument("--min-similarity", dest="min_similarity", type=float, metavar="S",
                   help="feature similarity that, with a close hash (24 bits), makes a near-duplicate candidate (default 0.8)")
    p.add_argument("--min-alignment", dest="min_alignment", type=float, metavar="A",
                   help="pixel alignment (grey correlation allowing a small crop) a candidate needs to be a near duplicate (default 0.915)")
    p.add_argument("--exclude-kinds", dest="exclude_kinds", metavar="KINDS",
                   help="what goes into exclude.csv: comma-separated duplicates, labels, off-topic (default all)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="decoding processes (default 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    _add_config_flags(p, {k: v for k, v in TRAIN_FLAGS.items() if k in ("--device", "--seed")}, "runtime options")
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_clean)

    p = sub.add_parser(
        "augment-preview",
        help="write a PNG grid of training photos with random augmentations",
        description="Show what the configured augmentation does: each row is one training photo, "
        "first as the model sees it after preprocessing, then random augmented variants.",
    )
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("--out", metavar="FILE.png", help="output PNG (default: runs/augment-NNN/augment_preview.png)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="parent of new run folders (default runs)")
    p.add_argument("--images", type=int, default=6, metavar="N", help="number of photos (default 6)")
    p.add_argument("--variants", type=int, default=7, metavar="N", help="augmented variants per photo (default 7)")
    _add_common(p)
    _add_config_flags(p, {k: v for k, v in TRAIN_FLAGS.items() if k in ("--model", "--mode", "--seed")}, "model options")
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_augment_preview)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a trained model on a dataset split: metrics, confusion matrices, calibration, mistakes",
        description="Evaluate a run's model on one split and write an evaluation folder (default RUN/eval-SPLIT): "
        "metrics.json, predictions.csv, confusion matrices, a reliability diagram, mistakes.html and report.html. "
        "The data is read with the run's data settings unless flags override them.",
    )
    p.add_argument("model", metavar="RUN_OR_MODEL", help="a run folder, or its model.safetensors or model.json")
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("--split", metavar="SPLIT", help="split to evaluate (default: test, else the holdout, else validation)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new RUN/eval-SPLIT)")
    p.add_argument("--tta", action="store_true", help="also report test-time augmentation (mean with the horizontal mirror)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a setting of the run, e.g. --set train.device=cpu (repeatable)")
    _add_config_flags(p, {k: v for k, v in TRAIN_FLAGS.items() if k in ("--device", "--workers")}, "runtime options")
    _add_config_flags(p, DATA_FLAGS, "data options (default: the run's)")
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "compare",
        help="train and evaluate several configurations on the same splits and write a leaderboard",
        description="Train every configuration on the same splits, evaluate each run as `vitrina evaluate` does, and write "
        "leaderboard.md/.csv, bar charts (accuracy, training time, model size, inference speed) and overlaid learning curves. "
        "CONFIG files are YAML configs (named by file), or one compare YAML with 'configs:' (name -> settings or file) and "
        "optional 'common:'. Without CONFIG: cnn1/cnn2/cnn3 from scratch, efficientnet_lite0 bottleneck and fine-tune.",
    )
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("configs", metavar="CONFIG", nargs="*", help="config YAML files, or one compare YAML")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/compare-NNN)")
    p.add_argument("--runs", default="runs", metavar="DIR", help="parent of new output folders (default runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a setting of every configuration (repeatable)")
    _add_config_flags(p, {k: v for k, v in TRAIN_FLAGS.items() if k in ("--epochs", "--seed", "--device", "--workers")}, "options for every configuration")
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_compare)

    p = sub.add_parser(
        "tune",
        help="search hyperparameters with Optuna (persistent, resumable study; pruning of bad trials)",
        description="Search learning rate, weight decay, dropout, head, augmentation strength, epochs and unfrozen blocks "
        "(those that apply to the mode) with Optuna, maximising validation accuracy. The study lives in OUT/study.db and "
        "resumes with --resume; the first trial is the given config, so the best trial's margin over it is reported. "
        "The best config is written to OUT/best_config.yaml for `vitrina train --config`.",
    )
    p.add_argument("data", metavar="DATA", help="any dataset form that `vitrina inspect` reads")
    p.add_argument("--out", metavar="DIR", help="output folder (default: a new runs/tune-NNN); with --resume, the interrupted search")
    p.add_argument("--runs", default="runs", metavar="DIR", help="parent of new output folders (default runs)")
    p.add_argument("--resume", action="store_true", help="continue the search in --out with its saved settings")
    p.add_argument("--trials", type=int, metavar="N", help="finished trials wanted in total (default 20 unless --minutes)")
    p.add_argument("--minutes", type=float, metavar="M", help="time budget of this call (checked between trials)")
    p.add_argument("--search", metavar="NAMES", help="comma-separated parameters to search (default: those of the mode): "
                   "lr, weight_decay, dropout, head, augment, epochs, unfreeze_blocks")
    _add_common(p)
    _add_config_flags(p, TRAIN_FLAGS, "training options")
    _add_config_flags(p, DATA_FLAGS, "data options")
    p.set_defaults(handler=cmd_tune)

    p = sub.add_parser(
        "serve",
        help="serve a model: REST API, a web page to check listing photos, a moderation log",
        description="Serve a run folder or an exported .onnx file over HTTP: POST /v1/predict, /v1/predict/batch and "
        "/v1/check (a listing's photos against its category: match, mismatch or uncertain), GET /v1/model, /v1/checks, "
        "/healthz, /readyz, /metrics (Prometheus), OpenAPI docs at /docs, the checking page at / and the moderators' page "
        "at /moderation. Concurrent requests are micro-batched. Every check is recorded in the moderation log. When the "
        "model files change (a new export or training into the run folder), the new model is loaded in the background and "
        "swapped in without dropping requests. API keys come from VITRINA_API_KEYS (comma-separated) and/or --api-keys.",
    )
    p.add_argument("model", metavar="MODEL", help="a run folder or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="server processes, each with its own model (default 1)")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="inference backend (default auto: ONNX Runtime when installed)")
    p.add_argument("--threads", type=int, metavar="N", help="inference threads per worker (default: the cores, shared between workers)")
    p.add_argument("--db", metavar="PATH_OR_URL", help="moderation log: an SQLite file or a database URL (default MODEL's folder/moderation.db)")
    p.add_argument("--store-images", action="store_true", help="keep the checked photos in the moderation log (default: only their SHA-256)")
    p.add_argument("--api-keys", metavar="FILE", help="file of API keys, one a line (adds to VITRINA_API_KEYS); with any key, /v1/ requires one")
    p.add_argument("--rate-limit", type=float, default=0.0, metavar="R", help="requests a second per client (API key or address); 0: none (default)")
    p.add_argument("--burst", type=int, metavar="N", help="requests a client may make at once above the rate (default: the rate)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB", help="largest photo accepted (default 10)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, metavar="N", help="most pixels a photo may have (default 40,000,000)")
    p.add_argument("--max-photos", type=int, default=10, metavar="N", help="most photos in one request (default 10)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, metavar="MS", help="how long a photo waits for others to share a model call (default 5)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="most photos per model call; 1 turns micro-batching off (default 32)")
    p.add_argument("--queue-limit", type=int, default=256, metavar="N", help="photos in progress before new requests get 503 (default 256)")
    p.add_argument("--reload-interval", type=float, default=2.0, metavar="S", help="seconds between looks at the model files for a new version; 0: never reload (default 2)")
    p.add_argument("--confidence", type=float, metavar="P", help="confidence below which a verdict is uncertain (default: the threshold calibrated with the model)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser(
        "demo",
        help="run the main job on the embedded demo photos",
        description="Inspect the embedded demo dataset (clothing photos, CC0), train and evaluate a classifier on it, "
        "then serve it (a web page and REST API) until Ctrl+C. Results are written under --runs.",
    )
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder for the run folders (default runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port of the server (default 8000; 0 picks a free one)")
    p.add_argument("--no-serve", action="store_true", help="stop after training instead of serving the model")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser(
        "export",
        help="export a trained run to a self-describing ONNX file with a model card",
        description="Export RUN to ONNX (dynamic batch; labels, preprocessing, thresholds and metrics in its metadata) "
        "and write a Markdown model card beside it. The export is checked against PyTorch on real validation images.",
    )
    p.add_argument("run", metavar="RUN", help="a run folder made by `vitrina train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument("--out", metavar="FILE", help="output .onnx file (default: RUN/model.onnx)")
    p.add_argument("--int8", action="store_true", help="also write an int8-quantised model and report its accuracy change")
    p.add_argument("--calibration", metavar="DATA", help="data for the parity check and int8 calibration (default: the run's own)")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "predict",
        help="classify single images or whole catalogues into a CSV or JSONL file",
        description="Predict every image INPUTS name: files, folders (recursive), globs, or a CSV/list of paths. "
        "Streams with bounded memory; unreadable files get an error row instead of stopping the run.",
    )
    p.add_argument("model", metavar="MODEL", help="a run folder or an exported .onnx file")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="image files, folders, globs, or CSV/list files of paths")
    p.add_argument("--out", metavar="FILE", help="output .csv or .jsonl (default: CSV on standard output)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out file without repeating rows")
    p.add_argument("--batch-size", type=int, metavar="N", help="model batch size (default: measured best for the CPU)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one per core)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto", help="runtime (default auto: ONNX Runtime)")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser(
        "cache",
        help="show or prune the caches of decoded images, frozen features and exported graphs",
        description="vitrina caches decoded images, frozen-backbone features and ONNX graphs (in ~/.cache/vitrina, "
        "$VITRINA_CACHE or train.cache_dir) so that later runs skip that work. `vitrina cache` shows what they hold; "
        "`vitrina cache prune` removes the entries no run has used lately. Your photos and run folders are never touched.",
    )
    p.add_argument("action", nargs="?", choices=["show", "prune"], default="show", help="show (default) or prune")
    p.add_argument("--cache-dir", metavar="DIR", help="the cache folder (default: $VITRINA_CACHE or ~/.cache/vitrina)")
    p.add_argument("--older-than", dest="older_than", type=float, metavar="DAYS", help="prune: remove entries unused for this many days")
    p.add_argument("--max-size", dest="max_size", type=float, metavar="GB",
                   help="prune: then remove the least recently used entries until at most this many GB remain")
    p.add_argument("--dry-run", action="store_true", help="prune: list what would be removed, remove nothing")
    p.set_defaults(handler=cmd_cache)

    p = sub.add_parser("models", help="list the model registry", description="List registered models with parameter counts and input sizes.")
    p.set_defaults(handler=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except VitrinaError as exc:
        print(f"vitrina {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vitrina {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
