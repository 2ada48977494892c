"""The `vitrina` command line: argument parsing and printing only; every command calls the API."""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from vitrina import __version__
from vitrina.errors import VitrinaError

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


def _resolve(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from vitrina.config import resolve

    return resolve(args.config, _overrides(args))


# ------------------------------------------------------------------------------ commands
def cmd_inspect(args: argparse.Namespace) -> int:
    from vitrina import api

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


def cmd_train(args: argparse.Namespace) -> int:
    from vitrina import api

    run = api.train(args.data, config=_resolve(args), out=args.out, resume=args.resume, runs_dir=args.runs, progress=not args.quiet)
    if not run.metrics:  # a non-zero rank of a distributed run writes nothing
        return 0
    m = run.metrics
    print(f"{m['model']} ({m['mode']}): {m['split']} accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f} "
          f"on {m['n_images']} images; trained in {m['train_seconds']:.0f} s, peak memory {m['peak_rss_mb']:.0f} MB")
    for name, split in m["splits"].items():
        print(f"  {name:<12} accuracy {split['accuracy']:.4f}  ({split['n_images']} images)")
    print(f"run folder: {run.run_dir}")
    return 0


def cmd_augment_preview(args: argparse.Namespace) -> int:
    from vitrina import api

    path = api.augment_preview(args.data, config=_resolve(args), out=args.out, images=args.images, variants=args.variants, runs_dir=args.runs)
    print(f"augmentation preview: {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vitrina import api

    rows = api.list_models()
    print(f"{'name':<20} {'family':<11} {'params':>9} {'input':>9}  {'resize':<12} description")
    for row in rows:
        size = f"{row['channels']}x{row['input_size']}"
        print(f"{row['name']:<20} {row['family']:<11} {row['params'] / 1e6:>8.2f}M {size:>9}  {row['resize']:<12} {row['description']}")
    print("\nAny timm architecture is available as timm:NAME with --weights PATH (or hub weights when online).")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vitrina import api

    data = api.demo_data()
    print(f"vitrina demo on the embedded clothing photos ({data})")
    print("step 1/2: inspect the data")
    inspected = api.inspect(data, runs_dir=args.runs, progress=not args.quiet)
    print(f"  {inspected.summary['n_images']} images, {len(inspected.summary['classes'])} classes; "
          f"report: {inspected.out_dir / 'report.html'}")
    print("step 2/2: train a classifier (efficientnet_lite0, fine-tuned)")
    run = api.train(data, api.demo_config(), runs_dir=args.runs, progress=not args.quiet)
    m = run.metrics
    print(f"  {m['split']} accuracy {m['accuracy']:.3f}, macro F1 {m['macro_f1']:.3f} on {m['n_images']} photos; "
          f"trained in {m['train_seconds']:.0f} s")
    print(f"  run folder: {run.run_dir}")
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
        "demo",
        help="run the main job on the embedded demo photos",
        description="Inspect the embedded demo dataset (clothing photos, CC0) and write the results under --runs.",
    )
    p.add_argument("--runs", default="runs", metavar="DIR", help="folder for the run folders (default runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_demo)

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
