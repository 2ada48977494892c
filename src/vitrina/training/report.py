"""A run folder's ``report.html``, built from the files in the folder alone.

Data summary, settings, learning curves, metrics per split and per class, confusion matrices, a
reliability diagram and the most confident mistakes, with the building blocks of
:mod:`vitrina.evaluation.report`.
"""
from __future__ import annotations

import csv
import html
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from vitrina.artifact import read_json
from vitrina.data.images import decode
from vitrina.description import ModelDescription
from vitrina.errors import ImageError
from vitrina.evaluation.report import (
    SPLIT_COLUMNS, MAX_MISTAKES, THUMBNAIL, Mistake, charts_html, diagnostic_charts, metric_cards, mistakes_html, page_with_heading, per_class_table,
)
from vitrina.html import table
from vitrina.models.checkpoint import WEIGHTS_FILE, read_meta
from vitrina.plots import confusion_matrix_chart, reliability_diagram
from vitrina.training.plan import RECOMMENDED



def _open_thumbnail(path: str) -> Image.Image | None:
    try:
        return decode(path, mode="RGB", draft_size=(THUMBNAIL, THUMBNAIL))
    except (ImageError, OSError):
        return None  # moved, deleted, or a row of a pixel CSV


def run_mistakes(predictions: Path, limit: int = MAX_MISTAKES) -> list[Mistake]:
    """The most confident wrong rows of a run's ``predictions_<split>.csv``, with thumbnails."""
    with open(predictions, newline="", encoding="utf-8") as fh:
        wrong = [row for row in csv.DictReader(fh) if row["correct"] == "0"]
    wrong.sort(key=lambda row: -float(row["confidence"]))
    return [
        Mistake(row["path"], row["label"], row["predicted"], float(row["confidence"]), image=_open_thumbnail(row["path"]))
        for row in wrong[:limit]
    ]


def _data_section(splits: dict[str, Any], split_metrics: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, paths in splits["splits"].items():
        m = split_metrics.get(name, {})
        carved = splits.get("carved", {}).get(name, {})
        source = f"{carved['fraction']:.0%} of {carved['from']} (seed {carved['seed']})" if "from" in carved else "given"
        if carved.get("method") == "group":
            source += (f", by near-copy group ({carved['grouped_by']}): {carved['groups']} groups of 2 or more, "
                       f"{carved['photos_in_groups']} photos, largest {carved['largest_group']}, each on one side")
        rows.append([name, len(paths), m.get("n_images", "–"), m.get("n_skipped", "–"), source])
    listed = table(["split", "images listed", "evaluated", "unreadable", "origin"], rows, {1, 2, 3})
    names = [n for n in split_metrics]
    support = table(
        ["class", *names],
        ([c, *(int(split_metrics[n]["per_class"].get(c, {}).get("support", 0)) for n in names)] for c in splits["classes"]),
        set(range(1, len(names) + 1)),
    )
    return (
        f'<p>Source: <span class="path">{html.escape(str(splits.get("source", "")))}</span>; {len(splits["classes"])} classes.</p>'
        f'{listed}<p class="note">Images per class in the evaluated splits:</p><div class="scroll">{support}</div>'
    )


def _settings_section(config: dict[str, Any], meta: ModelDescription, metrics: dict[str, Any], history: list[dict], run_dir: Path) -> str:
    train, model = config["train"], config["model"]
    recommended = RECOMMENDED.get(meta.mode, {})

    def setting(key: str) -> Any:
        return train[key] if train.get(key) is not None else f"{recommended.get(key)} (recommended)"

    pre = meta.preprocess
    weights = run_dir / WEIGHTS_FILE
    rows = [
        ["model", f"{meta.model} ({meta.mode})"],
        ["input", f"{pre.channels}×{pre.input_size} px, {pre.resize}"],
        ["head", f"{meta.head} (dropout {meta.dropout})"],
        ["epochs", f"{len(history)} run of {setting('epochs')}"],
        ["batch size", setting("batch_size")],
        ["learning rate", setting("lr")],
        ["weight decay", setting("weight_decay")],
        ["augmentation", "on" if config["augment"]["enabled"] else "off"],
        ["seed", train["seed"]],
        ["training time", f"{metrics.get('train_seconds', 0):,.0f} s"],
        ["peak memory", f"{metrics.get('peak_rss_mb', 0):,.0f} MB"],
        ["weights file", f"{weights.stat().st_size / 1e6:.1f} MB" if weights.is_file() else "missing"],
    ]
    if model.get("weights"):
        rows.insert(1, ["backbone weights", model["weights"]])
    if meta.refit is not None:
        before = metrics.get("before_refit", {}).get("accuracy")
        rows.insert(next(i for i, row in enumerate(rows) if row[0] == "epochs") + 1, ["refit", ("the chosen network went on for the last " if meta.refit.continued else "") + f"{meta.refit.epochs} epochs on {meta.refit.photos} photos (training and validation)"
                        + (f"; {metrics.get('split')} accuracy before it {before:.4f}" if isinstance(before, float) else "")])
    return table(["setting", "value"], rows)


def _splits_table(split_metrics: dict[str, dict[str, Any]]) -> str:
    keys = [k for k in SPLIT_COLUMNS if any(k in m for m in split_metrics.values())]
    rows = [[name, *(f"{m[k]:.4f}" if isinstance(m.get(k), float) else m.get(k, "–") for k in keys)] for name, m in split_metrics.items()]
    return table(["split", *(SPLIT_COLUMNS[k] for k in keys)], rows, set(range(1, len(keys) + 1)))


def write_run_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` of a run folder from its own files; returns its path."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    splits = read_json(run_dir / "splits.json")
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    history = read_json(run_dir / "history.json") if (run_dir / "history.json").is_file() else []
    split_metrics = {
        name: read_json(run_dir / f"metrics_{name}.json") for name in splits["splits"] if (run_dir / f"metrics_{name}.json").is_file()
    }
    chosen = metrics["split"]
    report_metrics = split_metrics.get(chosen, metrics)
    classes = list(meta.classes)
    title = f"{meta.model} ({meta.mode}), {chosen}"
    charts = []
    if "confusion_matrix" in report_metrics:
        charts += [
            ("confusion matrix (counts)", confusion_matrix_chart(report_metrics["confusion_matrix"], classes, run_dir / f"confusion_matrix_{chosen}.png", title=f"Confusion matrix: {title}")),
            ("confusion matrix (row-normalised)", confusion_matrix_chart(
                report_metrics["confusion_matrix"], classes, run_dir / f"confusion_matrix_{chosen}_normalized.png", normalize=True,
                title=f"Confusion matrix, each row sums to 1: {title}")),
        ]
    if "calibration" in report_metrics:
        charts.append(("reliability diagram", reliability_diagram(report_metrics["calibration"], run_dir / f"reliability_{chosen}.png", ece=report_metrics["ece"], title=f"Reliability: {title}")))
    predictions = run_dir / f"predictions_{chosen}.csv"
    mistakes = run_mistakes(predictions) if predictions.is_file() else []
    curves = run_dir / "curves.png"
    body = [
        metric_cards({**metrics, **report_metrics}),
        "<h2>Data</h2>",
        _data_section(splits, split_metrics),
        "<h2>Training</h2>",
        _settings_section(config, meta, metrics, history, run_dir),
        charts_html([("learning curves", curves)]) if curves.is_file() else "<p>No learning curves (no history).</p>",
        "<h2>Metrics per split</h2>",
        _splits_table(split_metrics),
        f"<h2>Per class ({html.escape(chosen)})</h2>",
        per_class_table(report_metrics),
        f"<h2>Confusion matrix and calibration ({html.escape(chosen)})</h2>",
        diagnostic_charts(charts, len(classes)),
        f"<h2>Most confident mistakes ({html.escape(chosen)}, {len(mistakes)} shown)</h2>",
        mistakes_html(mistakes),
    ]
    path = run_dir / "report.html"
    subtitle = f"run folder {run_dir.resolve()}; trained on {meta.trained_on or ''}"
    path.write_text(page_with_heading(f"Run report: {meta.model} ({meta.mode})", subtitle, body), encoding="utf-8")
    return path
