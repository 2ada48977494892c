"""Self-contained HTML pages a person opens to understand a model (charts and thumbnails embedded).

:func:`write_eval_report` and :func:`write_mistakes_gallery` write the pages of one evaluation;
the building blocks (metric cards, per-class tables, charts, the mistakes gallery) also make the
run report of :mod:`vitrina.training.report`.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from vitrina.html import card, page, png_data_uri, table

THUMBNAIL = 128
MAX_MISTAKES = 48
SPLIT_COLUMNS = {"accuracy": "accuracy", "top3_accuracy": "top-3", "top5_accuracy": "top-5", "macro_f1": "macro F1",
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
    return "–" if value is None or value != value else f"{value:.1%}"


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


def page_with_heading(title: str, subtitle: str, body: Sequence[str]) -> str:
    heading = f'<h1>{html.escape(title)}</h1><p class="meta">{html.escape(subtitle)}</p>'
    return page(title, [heading, *body], _GALLERY_CSS)


def metric_cards(metrics: dict[str, Any]) -> str:
    cards = [card(_percent(metrics["accuracy"]), f"{metrics['split']} accuracy")]
    for key, label in (("top3_accuracy", "top-3 accuracy"), ("top5_accuracy", "top-5 accuracy"), ("coarse_accuracy", "coarse-class accuracy"),
                       ("macro_f1", "macro F1"), ("weighted_f1", "weighted F1")):
        if metrics.get(key) is not None:
            cards.append(card(_percent(metrics[key]), label))
    if metrics.get("ece") is not None:
        cards.append(card(f"{metrics['ece']:.3f}", "expected calibration error"))
    decisions = metrics.get("decisions") or {}
    if "uncertain_share" in decisions:
        cards.append(card(_percent(decisions["uncertain_share"]), "marked uncertain"))
        cards.append(card(_percent(decisions["accuracy_when_sure"]), "accuracy of the rest"))
    if "unknown_share" in decisions:
        cards.append(card(_percent(decisions["unknown_share"]), "marked unknown"))
    cards.append(card(int(metrics["n_images"]), "images evaluated"))
    cards.append(card(int(metrics.get("n_skipped", 0)), "unreadable, skipped", "bad" if metrics.get("n_skipped") else ""))
    return f'<div class="cards">{"".join(cards)}</div>'


def per_class_table(metrics: dict[str, Any]) -> str:
    rows = sorted(metrics["per_class"].items(), key=lambda item: (item[1]["support"] == 0, item[1]["f1"], item[0]))
    classes_table = table(
        ["class", "precision", "recall", "F1", "support"],
        ([name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", int(c["support"])] for name, c in rows),
        {1, 2, 3, 4},
    )
    averages = table(
        ["average", "precision", "recall", "F1"],
        [["macro (classes in the data)", f"{metrics.get('macro_precision', float('nan')):.3f}", f"{metrics.get('macro_recall', float('nan')):.3f}",
          f"{metrics['macro_f1']:.3f}"], ["weighted by support", "", "", f"{metrics['weighted_f1']:.3f}"]],
        {1, 2, 3},
    )
    return f'{averages}<p class="note">Weakest classes first.</p><div class="scroll">{classes_table}</div>'


def charts_html(charts: Sequence[tuple[str, Path]]) -> str:
    return "".join(f'<img class="chart" alt="{html.escape(alt)}" src="{png_data_uri(path)}">' for alt, path in charts)


def diagnostic_charts(charts: Sequence[tuple[str, Path]], n_classes: int) -> str:
    """Confusion matrices and reliability side by side; large matrices at full size in a scrolling box."""
    if n_classes <= 30:
        return f'<div class="pair">{charts_html(charts)}</div>'
    return "".join(f'<div class="wide">{charts_html([chart])}</div>' for chart in charts)


def _tta_table(metrics: dict[str, Any]) -> str:
    tta = metrics.get("tta")
    if not tta:
        return ""
    keys = [k for k in SPLIT_COLUMNS if k in tta]
    rows = [["plain", *(f"{metrics[k]:.4f}" for k in keys)], ["flip-averaged", *(f"{tta[k]:.4f}" for k in keys)]]
    header = ["", *(SPLIT_COLUMNS[k] for k in keys)]
    return f"<h2>Test-time augmentation</h2><p>{html.escape(tta['method'])}.</p>" + table(header, rows, set(range(1, len(keys) + 1)))


# ----------------------------------------------------------------------------- evaluation pages
def write_mistakes_gallery(path: Path, mistakes: Sequence[Mistake], *, title: str) -> Path:
    """A page of the most confident mistakes alone."""
    subtitle = f"{len(mistakes)} wrong predictions, most confident first; p = the model's probability"
    path.write_text(page_with_heading(title, subtitle, [mistakes_html(mistakes)]), encoding="utf-8")
    return path


def write_eval_report(path: Path, metrics: dict[str, Any], charts: Sequence[tuple[str, Path]], mistakes: Sequence[Mistake], *, title: str) -> Path:
    """The page of one evaluation: figures, per-class table, charts and mistakes."""
    body = [
        metric_cards(metrics),
        _tta_table(metrics),
        "<h2>Per class</h2>",
        per_class_table(metrics),
        "<h2>Confusion matrix and calibration</h2>",
        diagnostic_charts(charts, len(metrics["per_class"])),
        f"<h2>Most confident mistakes ({len(mistakes)} shown)</h2>",
        mistakes_html(mistakes),
    ]
    subtitle = f"model {metrics.get('model_path', '')} on {metrics.get('data', '')}, split {metrics['split']}"
    path.write_text(page_with_heading(title, subtitle, body), encoding="utf-8")
    return path
