"""Self-contained HTML pages a person opens to understand a model (charts and thumbnails embedded).

:func:`write_run_report` builds ``report.html`` of a run folder from the files in it alone:
data summary, settings, learning curves, metrics per split and per class, confusion matrices,
a reliability diagram and the most confident mistakes. :func:`write_eval_report` and
:func:`write_mistakes_gallery` write the pages of one evaluation.
"""
from __future__ import annotations

import base64
import csv
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from PIL import Image

from vitrina.artifact import read_json
from vitrina.data.images import decode
from vitrina.data.inspect import _CSS, _card, _png_data_uri, _table
from vitrina.errors import ImageError
from vitrina.models.checkpoint import WEIGHTS_FILE, read_meta
from vitrina.plots import confusion_matrix_chart, reliability_diagram
from vitrina.training.plan import RECOMMENDED

THUMBNAIL = 128
MAX_MISTAKES = 48
_SPLIT_COLUMNS = {"accuracy": "accuracy", "top3_accuracy": "top-3", "top5_accuracy": "top-5", "macro_f1": "macro F1",
                  "weighted_f1": "weighted F1", "ece": "ECE", "n_images": "images"}
_GALLERY_CSS = """
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px}
.gallery figure{margin:0;border:1px solid #e3e5e8;border-radius:6px;padding:6px;font-size:12px;background:#fff}
.gallery img{display:block;width:128px;height:128px;object-fit:contain;margin:0 auto 4px;background:#eee}
.gallery .none{width:128px;height:128px;margin:0 auto 4px;background:#eee;color:#888;display:flex;align-items:center;justify-content:center}
.gallery .true{color:#2e7d32}.gallery .pred{color:#c62828}
.pair{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}.pair img.chart{max-width:calc(50% - 8px)}
.wide{overflow:auto;max-height:900px;border:1px solid #eceef1}.wide img.chart{max-width:none}
.gallery .path{color:#888;font-size:10px;word-break:break-all;font-family:ui-monospace,Menlo,Consolas,monospace}
"""


@dataclass
class Mistake:
    """One wrong prediction: the image's true and predicted class and the model's probabilities."""

    path: str
    label: str
    predicted: str
    confidence: float
    true_probability: float | None = None
    image: Image.Image | None = None


# ----------------------------------------------------------------------------- building blocks
def _thumbnail_uri(image: Image.Image) -> str:
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _short_path(path: str) -> str:
    """The file and its folder (the full path shows on hover)."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def mistakes_html(mistakes: Sequence[Mistake]) -> str:
    """A grid of thumbnails, most confident mistake first: true class, predicted class, probability."""
    if not mistakes:
        return "<p>No mistakes on this split.</p>"
    figures = []
    for m in mistakes:
        picture = (
            f'<img alt="{html.escape(m.path)}" src="{_thumbnail_uri(m.image)}">' if m.image is not None else '<div class="none">no preview</div>'
        )
        true_p = f" (p {m.true_probability:.2f})" if m.true_probability is not None else ""
        figures.append(
            f"<figure>{picture}<figcaption>"
            f'<div class="true">true: {html.escape(m.label)}{true_p}</div>'
            f'<div class="pred">predicted: {html.escape(m.predicted)} (p {m.confidence:.2f})</div>'
            f'<div class="path" title="{html.escape(m.path)}">{html.escape(_short_path(m.path))}</div></figcaption></figure>'
        )
    return f'<div class="gallery">{"".join(figures)}</div>'


def _page(title: str, subtitle: str, body: Sequence[str]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}{_GALLERY_CSS}</style></head><body><main>"
        f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(subtitle)}</p>{"".join(body)}</main></body></html>\n'
    )


def _metric_cards(metrics: dict[str, Any]) -> str:
    cards = [_card(_percent(metrics["accuracy"]), f"{metrics['split']} accuracy")]
    for key, label in (("top3_accuracy", "top-3 accuracy"), ("top5_accuracy", "top-5 accuracy"), ("coarse_accuracy", "coarse-class accuracy"),
                       ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")):
        if metrics.get(key) is not None:
            cards.append(_card(_percent(metrics[key]), label))
    if metrics.get("ece") is not None:
        cards.append(_card(f"{metrics['ece']:.3f}", "expected calibration error"))
    cards.append(_card(int(metrics["n_images"]), "images evaluated"))
    cards.append(_card(int(metrics.get("n_skipped", 0)), "unreadable, skipped", "bad" if metrics.get("n_skipped") else ""))
    return f'<div class="cards">{"".join(cards)}</div>'


def _per_class_table(metrics: dict[str, Any]) -> str:
    rows = sorted(metrics["per_class"].items(), key=lambda item: (item[1]["support"] == 0, item[1]["f1"], item[0]))
    table = _table(
        ["class", "precision", "recall", "F1", "support"],
        ([name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", int(c["support"])] for name, c in rows),
        {1, 2, 3, 4},
    )
    averages = _table(
        ["average", "precision", "recall", "F1"],
        [["macro (classes in the data)", f"{metrics.get('macro_precision', float('nan')):.3f}", f"{metrics.get('macro_recall', float('nan')):.3f}",
          f"{metrics['macro_f1']:.3f}"], ["weighted by support", "", "", f"{metrics['weighted_f1']:.3f}"]],
        {1, 2, 3},
    )
    return f'{averages}<p class="note">Weakest classes first.</p><div class="scroll">{table}</div>'


def _charts(charts: Sequence[tuple[str, Path]]) -> str:
    return "".join(f'<img class="chart" alt="{html.escape(alt)}" src="{_png_data_uri(path)}">' for alt, path in charts)


def _diagnostic_charts(charts: Sequence[tuple[str, Path]], n_classes: int) -> str:
    """Confusion matrices and reliability side by side; large matrices at full size in a scrolling box."""
    if n_classes <= 30:
        return f'<div class="pair">{_charts(charts)}</div>'
    return "".join(f'<div class="wide">{_charts([chart])}</div>' for chart in charts)


def _tta_table(metrics: dict[str, Any]) -> str:
    tta = metrics.get("tta")
    if not tta:
        return ""
    keys = [k for k in _SPLIT_COLUMNS if k in tta]
    rows = [["plain", *(f"{metrics[k]:.4f}" for k in keys)], ["flip-averaged", *(f"{tta[k]:.4f}" for k in keys)]]
    header = ["", *(_SPLIT_COLUMNS[k] for k in keys)]
    return f"<h2>Test-time augmentation</h2><p>{html.escape(tta['method'])}.</p>" + _table(header, rows, set(range(1, len(keys) + 1)))


# ----------------------------------------------------------------------------- evaluation pages
def write_mistakes_gallery(path: Path, mistakes: Sequence[Mistake], *, title: str) -> Path:
    """A page of the most confident mistakes alone."""
    subtitle = f"{len(mistakes)} wrong predictions, most confident first; p = the model's probability"
    path.write_text(_page(title, subtitle, [mistakes_html(mistakes)]), encoding="utf-8")
    return path


def write_eval_report(path: Path, metrics: dict[str, Any], charts: Sequence[tuple[str, Path]], mistakes: Sequence[Mistake], *, title: str) -> Path:
    """The page of one evaluation: figures, per-class table, charts and mistakes."""
    body = [
        _metric_cards(metrics),
        _tta_table(metrics),
        "<h2>Per class</h2>",
        _per_class_table(metrics),
        "<h2>Confusion matrix and calibration</h2>",
        _diagnostic_charts(charts, len(metrics["per_class"])),
        f"<h2>Most confident mistakes ({len(mistakes)} shown)</h2>",
        mistakes_html(mistakes),
    ]
    subtitle = f"model {metrics.get('model_path', '')} on {metrics.get('data', '')}, split {metrics['split']}"
    path.write_text(_page(title, subtitle, body), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- run report
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
        rows.append([name, len(paths), m.get("n_images", "–"), m.get("n_skipped", "–"), source])
    table = _table(["split", "images listed", "evaluated", "unreadable", "origin"], rows, {1, 2, 3})
    names = [n for n in split_metrics]
    support = _table(
        ["class", *names],
        ([c, *(int(split_metrics[n]["per_class"].get(c, {}).get("support", 0)) for n in names)] for c in splits["classes"]),
        set(range(1, len(names) + 1)),
    )
    return (
        f'<p>Source: <span class="path">{html.escape(str(splits.get("source", "")))}</span>; {len(splits["classes"])} classes.</p>'
        f'{table}<p class="note">Images per class in the evaluated splits:</p><div class="scroll">{support}</div>'
    )


def _settings_section(config: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any], history: list[dict], run_dir: Path) -> str:
    train, model = config["train"], config["model"]
    recommended = RECOMMENDED.get(meta["mode"], {})

    def setting(key: str) -> Any:
        return train[key] if train.get(key) is not None else f"{recommended.get(key)} (recommended)"

    pre = meta["preprocess"]
    weights = run_dir / WEIGHTS_FILE
    rows = [
        ["model", f"{meta['model']} ({meta['mode']})"],
        ["input", f"{pre['channels']}×{pre['input_size']} px, {pre['resize']}"],
        ["head", f"{meta.get('head')} (dropout {meta.get('dropout')})"],
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
    return _table(["setting", "value"], rows)


def _splits_table(split_metrics: dict[str, dict[str, Any]]) -> str:
    keys = [k for k in _SPLIT_COLUMNS if any(k in m for m in split_metrics.values())]
    rows = [[name, *(f"{m[k]:.4f}" if isinstance(m.get(k), float) else m.get(k, "–") for k in keys)] for name, m in split_metrics.items()]
    return _table(["split", *(_SPLIT_COLUMNS[k] for k in keys)], rows, set(range(1, len(keys) + 1)))


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
    classes = meta["classes"]
    title = f"{meta['model']} ({meta['mode']}), {chosen}"
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
        _metric_cards({**metrics, **report_metrics}),
        "<h2>Data</h2>",
        _data_section(splits, split_metrics),
        "<h2>Training</h2>",
        _settings_section(config, meta, metrics, history, run_dir),
        _charts([("learning curves", curves)]) if curves.is_file() else "<p>No learning curves (no history).</p>",
        "<h2>Metrics per split</h2>",
        _splits_table(split_metrics),
        f"<h2>Per class ({html.escape(chosen)})</h2>",
        _per_class_table(report_metrics),
        f"<h2>Confusion matrix and calibration ({html.escape(chosen)})</h2>",
        _diagnostic_charts(charts, len(classes)),
        f"<h2>Most confident mistakes ({html.escape(chosen)}, {len(mistakes)} shown)</h2>",
        mistakes_html(mistakes),
    ]
    path = run_dir / "report.html"
    subtitle = f"run folder {run_dir.resolve()}; trained on {meta.get('trained_on', '')}"
    path.write_text(_page(f"Run report: {meta['model']} ({meta['mode']})", subtitle, body), encoding="utf-8")
    return path
