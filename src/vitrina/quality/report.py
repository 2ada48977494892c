"""The files `vitrina clean` writes: report.html (self-contained), CSVs, a suspects sheet, exclude.csv."""
from __future__ import annotations

import base64
import csv
import html
import io
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image

from vitrina import plots
from vitrina.data.images import open_sample
from vitrina.errors import ImageError
from vitrina.html import card, page, table
from vitrina.quality.exclusions import write_exclude

THUMB = 96
REPORT_SUSPECTS = 300
REPORT_GROUPS = 200
REPORT_UNREADABLE = 500

_EXTRA_CSS = """
td.thumb img{display:block;max-width:96px;max-height:96px;border:1px solid #e3e5e8}
.members{display:flex;flex-wrap:wrap;gap:8px}.members figure{margin:0;width:120px;font-size:11px;color:#555;word-break:break-all}
.members img{display:block;max-width:110px;max-height:110px;border:1px solid #e3e5e8}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
"""


def _thumbnail(item: Any, max_pixels: int | None, side: int = THUMB) -> Image.Image | None:
    try:
        img = open_sample(item.sample, "RGB", max_pixels, draft_size=(side, side))
    except (ImageError, OSError):
        return None
    img = img.copy()
    img.thumbnail((side, side))
    return img


def _data_uri(img: Image.Image | None) -> str:
    if img is None:
        return ""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(img: Image.Image | None, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{_data_uri(img)}">' if img is not None else '<span class="note">(no preview)</span>'


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


SUSPECT_COLUMNS = [
    "rank", "path", "split", "label", "issue", "flagged", "suggested", "label_probability", "suggested_probability",
    "outlier_distance", "outlier_z", "concept_z", "copies", "duplicate_group",
]


def write_outputs(
    out_dir: Path,
    summary: dict[str, Any],
    items: list[Any],
    suspects: list[dict],
    groups: list[dict],
    unreadable: list[dict],
    excluded: list[dict],
    max_pixels: int | None,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "suspects.csv", suspects, SUSPECT_COLUMNS)
    dup_rows = [
        {"group": g["group"], "kind": g["kind"], "leakage": g["leakage"], "label_conflict": g["label_conflict"], **m}
        for g in groups for m in g["members"]
    ]
    write_csv(out_dir / "duplicates.csv", dup_rows, ["group", "kind", "leakage", "label_conflict", "path", "split", "label"])
    write_csv(out_dir / "unreadable.csv", unreadable, ["path", "split", "label", "reason"])
    write_exclude(out_dir / "exclude.csv", excluded)

    thumbs: dict[int, Image.Image | None] = {}

    def thumb(index: int) -> Image.Image | None:
        if index not in thumbs:
            thumbs[index] = _thumbnail(items[index], max_pixels)
        return thumbs[index]

    sheet = suspects[: 64]
    if sheet:
        tiles = [thumb(s["index"]) or Image.new("RGB", (THUMB, THUMB), "#eeeeee") for s in sheet]
        captions = [
            f"#{s['rank']} {s['label']}" + (f" → {s['suggested']}" if s["suggested"] else "")
            + f"\n{s['issue']}{'' if s['flagged'] else ' (review)'} · {Path(s['path']).name}"
            for s in sheet
        ]
        plots.thumbnail_grid(tiles, captions, out_dir / "suspects.png", columns=8, cell=128, title=f"top {len(sheet)} suspects: {summary['source']}")
    _write_html(out_dir, summary, suspects, groups, unreadable, excluded, thumb)


def _suspects_section(suspects: list[dict], thumb: Any) -> str:
    if not suspects:
        return "<p>No photo looks mislabelled or off-topic.</p>"
    rows = []
    for s in suspects[:REPORT_SUSPECTS]:
        detail = []
        if s["label_probability"] is not None:
            detail.append(f"p(given label) {s['label_probability']:.3f}")
        if s["suggested"]:
            detail.append(f"p(suggested) {s['suggested_probability']:.3f}")
        if s["outlier_z"] is not None:
            detail.append(f"outlier z {s['outlier_z']:.1f}")
        if s.get("concept_z") is not None and s["issue"] == "off-topic":
            detail.append(f"atypical concepts z {s['concept_z']:.1f}")
        badge = (
            f'<span class="badge{" minor" if s["issue"] == "off-topic" else ""}">{html.escape(s["issue"])}</span> '
            + ("" if s["flagged"] else '<span class="note">to review</span>')
        )
        if s["copies"]:
            detail.append(f"{s['copies']} more cop{'y' if s['copies'] == 1 else 'ies'} (duplicate group {s['duplicate_group']})")
        rows.append(
            f'<tr><td class="n">{s["rank"]}</td><td class="thumb">{_img(thumb(s["index"]), s["path"])}</td>'
            f"<td>{badge}</td><td>{html.escape(s['label'])}</td><td><b>{html.escape(s['suggested'])}</b></td>"
            f'<td class="note">{html.escape(", ".join(detail))}</td>'
            f'<td class="path">{html.escape(s["path"])} <span class="note">({html.escape(s["split"])})</span></td></tr>'
        )
    more = f'<p class="note">First {REPORT_SUSPECTS} of {len(suspects):,} shown; all are in suspects.csv.</p>' if len(suspects) > REPORT_SUSPECTS else ""
    return (
        '<div class="scroll"><table><thead><tr><th class="n">rank</th><th></th><th>issue</th><th>label</th>'
        "<th>suggested</th><th>scores</th><th>path</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>" + more
    )


def _groups_section(groups: list[dict], thumb: Any) -> str:
    if not groups:
        return "<p>No duplicate or near-duplicate photos.</p>"
    rows = []
    for g in groups[:REPORT_GROUPS]:
        flags = [f'<span class="badge minor">{g["kind"]}</span>']
        if g["leakage"]:
            flags.append('<span class="badge">leakage: ' + html.escape(" + ".join(g["splits"])) + "</span>")
        if g["label_conflict"]:
            flags.append('<span class="badge">different labels</span>')
        figures = "".join(
            f"<figure>{_img(thumb(m['index']), m['path'])}<figcaption>{html.escape(Path(m['path']).name)}<br>"
            f"{html.escape(m['split'])} · {html.escape(m['label'])}</figcaption></figure>"
            for m in g["members"][:8]
        )
        rows.append(f'<tr><td class="n">{g["group"]}</td><td>{" ".join(flags)}</td><td><div class="members">{figures}</div></td></tr>')
    more = f'<p class="note">First {REPORT_GROUPS} of {len(groups):,} groups shown; all are in duplicates.csv.</p>' if len(groups) > REPORT_GROUPS else ""
    return (
        '<div class="scroll"><table><thead><tr><th class="n">group</th><th></th><th>members</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table></div>" + more
    )


def _unreadable_section(unreadable: list[dict]) -> str:
    if not unreadable:
        return "<p>Every image decoded.</p>"
    reasons = Counter(entry["reason"] for entry in unreadable)
    parts = [table(["reason", "files"], ([r, n] for r, n in reasons.most_common()), {1})]
    rows = ([e["path"], e.get("split", ""), e.get("label", ""), e["reason"]] for e in unreadable[:REPORT_UNREADABLE])
    parts.append('<div class="scroll">' + table(["path", "split", "label", "reason"], rows) + "</div>")
    return "".join(parts)


def _write_html(out_dir: Path, summary: dict, suspects: list[dict], groups: list[dict], unreadable: list[dict], excluded: list[dict], thumb: Any) -> None:
    title = f"Data quality report: {summary['source'] or 'dataset'}"
    cards = [
        card(summary["n_readable"], "readable images"),
        card(len(unreadable), "unreadable", "bad" if unreadable else ""),
        card(summary["exact_duplicate_groups"], "exact duplicate groups", "warn" if summary["exact_duplicate_groups"] else ""),
        card(summary["near_duplicate_groups"], "near-duplicate groups", "warn" if summary["near_duplicate_groups"] else ""),
        card(summary["leakage_groups"], "groups across splits", "bad" if summary["leakage_groups"] else ""),
        card(summary["label_suspects"], "likely wrong labels", "warn" if summary["label_suspects"] else ""),
        card(summary["off_topic_suspects"], "off-topic photos", "warn" if summary["off_topic_suspects"] else ""),
        card(len(excluded), "files in exclude.csv"),
    ]
    cv = summary.get("cross_validation")
    method = (
        f"Features: {html.escape(', '.join(summary['models']))} (frozen, ImageNet-pretrained, the same cached features training uses). "
        + (f"Out-of-sample accuracy of the {cv['folds']}-fold classifier against the given labels: {cv['accuracy']:.1%}. " if cv else "")
        + "Wrong labels: confident learning (cleanlab) on cross-validated probabilities, ranked by the probability of the given label. "
        "Off-topic: mean cosine distance to the nearest other photos, robust z-score. Duplicates: identical bytes, or a perceptual "
        "hash and feature similarity that only copies reach."
    )
    notes = "".join(f'<p class="note">{html.escape(n)}</p>' for n in summary.get("notes", []))
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{summary["n_images"]:,} images checked; nothing was moved or deleted.</p>',
        f'<div class="cards">{"".join(cards)}</div>',
        f'<p class="note">{method}</p>{notes}',
        "<p>To train without the files in <code>exclude.csv</code> (edit it first: it is a suggestion): "
        f"<code>vitrina train DATA --exclude {html.escape(str(out_dir / 'exclude.csv'))}</code></p>",
        f"<h2>Suspects: likely wrong labels and off-topic photos ({len(suspects):,})</h2>",
        '<p class="note">Ranked: the most confident suspects of each kind first, the two kinds interleaved.</p>',
        _suspects_section(suspects, thumb),
        f"<h2>Duplicates ({len(groups):,} groups)</h2>",
        '<p class="note">Groups spanning splits first (the same photo in training and evaluation data inflates measured accuracy).</p>',
        _groups_section(groups, thumb),
        f"<h2>Unreadable files ({len(unreadable):,})</h2>",
        _unreadable_section(unreadable),
    ]
    (out_dir / "report.html").write_text(page(title, body, _EXTRA_CSS), encoding="utf-8")
