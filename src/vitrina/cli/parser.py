"""The `vitrina` argument parser: every command, its arguments and flags, and the handler it runs."""
from __future__ import annotations

import argparse
from typing import Any

from vitrina.cli.commands import (
    cmd_augment_preview,
    cmd_cache,
    cmd_clean,
    cmd_compare,
    cmd_demo,
    cmd_evaluate,
    cmd_export,
    cmd_inspect,
    cmd_models,
    cmd_predict,
    cmd_promote,
    cmd_review_export,
    cmd_serve,
    cmd_train,
    cmd_tune,
)
from vitrina.data.fetch import FetchSettings
from vitrina.version import __version__

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
    "--budget": ("train.budget_minutes", {"type": float, "metavar": "MINUTES",
                                          "help": "wall time for the whole run: epochs are planned to fit (default 30)"}),
    "--batch-size": ("train.batch_size", {"type": int, "metavar": "N", "help": "batch size"}),
    "--lr": ("train.lr", {"type": float, "metavar": "LR", "help": "learning rate of the head (the body gets lr x train.body_lr_scale)"}),
    "--seed": ("train.seed", {"type": int, "metavar": "N", "help": "random seed for reproducible runs"}),
    "--device": ("train.device", {"metavar": "DEV", "help": "auto, cpu, cuda or cuda:N (default auto)"}),
    "--workers": ("train.workers", {"type": int, "metavar": "N", "help": "data-loading worker processes (default: automatic)"}),
    "--balance": ("train.balance", {"choices": ["none", "weights", "sampler"], "help": "class balancing: weighted loss or balanced sampler"}),
}


def _add_config_flags(parser: argparse.ArgumentParser, flags: dict[str, tuple[str, dict[str, Any]]], title: str) -> None:
    """Add ``flags`` (flag -> config key, argparse options) as a titled group whose values become config overrides."""
    group = parser.add_argument_group(title)
    for flag, (key, kwargs) in flags.items():
        group.add_argument(flag, dest=f"cfg:{key}", default=None, **kwargs)


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Add ``--config FILE`` and the repeatable ``--set KEY=VALUE``."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (overridden by flags)")
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override any setting, e.g. --set train.label_smoothing=0.05 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `vitrina` parser; each command's namespace carries its ``handler`` (a ``cmd_*`` function)."""
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
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out with its own settings (settings given must not change what it computes)")
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
        "promote",
        help="replace the served model by a new one only when it is not worse on the same photos",
        description="Evaluate NEW and SERVED on the same photos of DATA's split: accuracy, macro-F1, per-class changes and "
        "McNemar's exact test. When NEW is not significantly worse (one-sided, --alpha) and within --max-drop, it replaces "
        "SERVED atomically (the old one kept as SERVED.prev), so a running `vitrina serve SERVED` hot-reloads it. Each "
        "decision is appended to promotions.jsonl beside SERVED. Exit status: 0 promoted, 1 refused.",
    )
    p.add_argument("new", metavar="NEW_RUN", help="the new model: a run folder (or an exported .onnx file)")
    p.add_argument("--over", metavar="SERVED", required=True, help="the path `vitrina serve` was given: a run folder or an .onnx file")
    p.add_argument("--data", metavar="DATA", required=True, help="the dataset whose photos both models predict")
    p.add_argument("--split", metavar="SPLIT", default="test", help="the split to compare on (default test)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance of the one-sided McNemar test (default 0.05)")
    p.add_argument("--max-drop", type=float, metavar="POINTS", help="also refuse an accuracy drop of more than POINTS")
    p.add_argument("--allow-class-change", action="store_true", help="promote a model whose class list differs")
    p.add_argument("--force", action="store_true", help="promote even when refused (the decision is still logged)")
    p.set_defaults(handler=cmd_promote)

    p = sub.add_parser("review", help="the moderators' reviews: export them as training data",
                       description="Work with the reviews moderators made on the moderation page or through /v1/checks/ID/review.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = actions.add_parser("export", help="write the reviewed photos as a dataset `vitrina train` reads",
                           description="Write the reviewed photos of a moderation log into DIR: labels.csv (path, label and "
                           "provenance: check id, reviewer, time, model version), off_topic.csv and photos/. Train on "
                           "DIR/labels.csv, or list it beside the original photos in a dataset.yaml (train: [photos/, "
                           "DIR/labels.csv]). Checks whose reviews disagree are left out and counted.")
    q.add_argument("--db", metavar="PATH_OR_URL", required=True, help="the moderation log, as given to `vitrina serve --db`")
    q.add_argument("--out", metavar="DIR", required=True, help="a new (or empty) folder")
    q.set_defaults(handler=cmd_review_export)

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
    p.add_argument("--store-images", nargs="?", const="all", default="flagged", choices=["all", "flagged", "none"],
                   help="photos kept in the moderation log for review: all, flagged (mismatch and uncertain checks; the default) "
                   "or none (only their SHA-256); --store-images alone means all")
    p.add_argument("--stored-photo-mb", type=float, default=10.0, metavar="MB", help="a larger photo is logged without its bytes (default 10)")
    p.add_argument("--photo-retention-days", type=float, default=30.0, metavar="DAYS",
                   help="stored photos are removed after this many days; the checks stay (default 30)")
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
    p.add_argument("--max-decode-pixels", type=int, metavar="N", help="pixels being decoded at once, all requests together; "
                   "beyond, requests get 503 (default 4 x --max-pixels)")
    p.add_argument("--db-timeout", type=float, default=10.0, metavar="S", help="seconds a check waits for a busy moderation log "
                   "before 503; a verdict is only given once it is logged (default 10)")
    p.add_argument("--metrics-public", action="store_true", help="with API keys, serve /metrics without a key (default: it needs one)")
    p.add_argument("--trusted-proxies", metavar="ADDRS", help="comma-separated addresses or networks (CIDR) of reverse proxies "
                   "whose X-Forwarded-For names the client (default: none; the peer's address counts)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S", help="seconds for a request's line and headers to "
                   "arrive; slower connections are closed (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S", help="seconds for a request's body to arrive once its "
                   "headers have; slower requests get 408 (default 60)")
    p.add_argument("--max-connections", type=int, default=1000, metavar="N", help="open connections per server process; more are "
                   "answered 503 (default 1000)")
    p.add_argument("--model-name", default="vitrina", metavar="NAME", help="the model's name in the Open Inference Protocol "
                   "routes, /v2/models/NAME (default vitrina)")
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
        "and write a Markdown model card beside it. The export is checked against PyTorch on real validation images. "
        "int8 is written as the model when it changes validation accuracy by at most export.int8_tolerance points "
        "(default 0.5; --set export.int8_tolerance=1), else fp32; the other precision is written beside it.",
    )
    p.add_argument("run", metavar="RUN", help="a run folder made by `vitrina train`")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="export format (onnx)")
    p.add_argument("--out", metavar="FILE", help="output .onnx file (default: RUN/model.onnx); the other precision goes beside it")
    forced = p.add_mutually_exclusive_group()
    forced.add_argument("--int8", action="store_true", help="write int8 at --out whatever its accuracy change")
    forced.add_argument("--fp32", action="store_true", help="write fp32 only (no int8 quantisation)")
    p.add_argument("--calibration", metavar="DATA", help="data for the parity check and int8 calibration (default: the run's own)")
    _add_common(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "predict",
        help="classify single images or whole catalogues into a CSV, JSONL or Parquet file",
        description="Predict every photo INPUTS name: files, folders (recursive), globs, http(s) URLs, list files, "
        "or CSV/Parquet tables of paths or URLs. Streams with bounded memory; unreadable files and failed downloads "
        "get an error row instead of stopping the run.",
    )
    p.add_argument("model", metavar="MODEL", help="a run folder or an exported .onnx file")
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="image files, folders, globs, URLs, list files, or CSV/Parquet tables")
    p.add_argument("--column", metavar="NAME", help="the column of paths or URLs in CSV/Parquet inputs "
                   "(default: a path or url column, else a CSV's first)")
    p.add_argument("--out", metavar="FILE", help="output .csv, .jsonl or .parquet, or DIR/ for part-NNNNN.parquet shards "
                   "(default: CSV on standard output)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="labels per image (default 5)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted --out file without repeating rows")
    p.add_argument("--batch-size", type=int, metavar="N", help="model batch size (default: measured best for the CPU)")
    p.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one per core)")
    p.add_argument("--backend", choices=["auto", "onnx", "torch"], default="auto", help="runtime (default auto: ONNX Runtime)")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--engine", choices=["local", "ray"], default="local", help="local: this machine's processes (default); "
                   "ray: Ray Data, on a local Ray or the cluster at --address (pip install 'vitrina[ray]')")
    p.add_argument("--address", metavar="HOST:PORT", help="with --engine ray: join this Ray cluster (its head's address)")
    fetch = FetchSettings()
    p.add_argument("--fetch-timeout", type=float, default=fetch.timeout, metavar="S",
                   help=f"seconds to download one URL, whole body included (default {fetch.timeout:g})")
    p.add_argument("--fetch-retries", type=int, default=fetch.retries, metavar="N",
                   help=f"retries after a timeout, a dropped connection, 429 or 5xx, with doubling backoff (default {fetch.retries})")
    p.add_argument("--max-download-mb", type=float, default=fetch.max_mb, metavar="MB",
                   help=f"a larger photo is an error row (default {fetch.max_mb:g})")
    p.add_argument("--fetch-concurrency", type=int, default=fetch.concurrency, metavar="N",
                   help=f"downloads at once, all workers together (default {fetch.concurrency})")
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
