"""Dataset inspection: one streaming pass over every image, then a report.

``inspect_dataset`` decodes every sample once (JPEGs in draft mode, so big photos are cheap,
yet truncated files are still caught because the whole stream is decoded), keeps only a few
numbers per image plus a small random sample of thumbnails per class, and writes into the
output folder:

- ``summary.json``: counts per split and class, skipped files with reasons, duplicate groups
  (identical bytes; those spanning splits are leakage), formats, stored colour modes, sizes;
- ``report.html``: the same as a self-contained page (charts and thumbnails embedded);
- ``class_counts.png``, ``image_sizes.png``, ``thumbnails_<nn>_<class>.png``;
- ``skipped.csv``: every sample that cannot be used, with the reason.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import heapq
import html
import io
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image
from tqdm import tqdm

from vitrina import plots
from vitrina.html import card, page, png_data_uri, table
from vitrina.data.images import DEFAULT_MAX_PIXELS, decode
from vitrina.data.samples import Dataset, Sample
from vitrina.errors import ImageError

THUMBNAIL_SIZE = 128
# Thumbnails are made for this many random candidates per kept thumbnail, so a class whose
# sampled files turn out unreadable still fills its grid without a second pass.
_CANDIDATES_PER_THUMBNAIL = 2
_THUMBNAIL_SEED = 0
_MOST_COMMON_SIZES = 10
_REPORT_MAX_SKIPPED = 500
_REPORT_MAX_DUPLICATE_GROUPS = 200
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class _Scan(NamedTuple):
    """What the pass keeps about one sample: a reason when unusable, else its properties."""

    reason: str | None = None
    digest: bytes = b""
    format: str = ""
    mode: str = ""
    width: int = 0
    height: int = 0
    thumbnail: Image.Image | None = None


def _scan_file(task: tuple[str, bool, int | None]) -> _Scan:
    """Read, hash and fully decode one file (runs in worker processes)."""
    path, want_thumbnail, max_pixels = task
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return _Scan(reason="file not found")
    except OSError as exc:
        return _Scan(reason=f"cannot read file: {exc.strerror or exc}")
    # Draft (1, 1) lets the JPEG decoder scale by 1/8: every byte is still decoded and checked.
    draft = (THUMBNAIL_SIZE, THUMBNAIL_SIZE) if want_thumbnail else (1, 1)
    try:
        img = decode(data, max_pixels=max_pixels, draft_size=draft, name=path)
    except ImageError as exc:
        return _Scan(reason=exc.reason)
    thumbnail = None
    if want_thumbnail:
        thumbnail = img.copy()  # a plain Image, which pickles cleanly out of a worker process
        thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    with Image.open(io.BytesIO(data)) as header:  # the file as stored, before any conversion
        width, height = header.size
        if header.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return _Scan(
            digest=hashlib.sha1(data).digest(),
            format=header.format or "unknown",
            mode=header.mode,
            width=width,
            height=height,
            thumbnail=thumbnail,
        )


def _scan_pixels(pixels: np.ndarray, want_thumbnail: bool) -> _Scan:
    """An in-memory grayscale sample: nothing to decode, only checks and a hash."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        return _Scan(reason=f"invalid pixel array: shape {pixels.shape}, dtype {pixels.dtype}")
    pixels = np.ascontiguousarray(pixels)
    digest = hashlib.sha1(repr(pixels.shape).encode() + pixels.tobytes()).digest()
    height, width = pixels.shape
    thumbnail = Image.fromarray(pixels, "L") if want_thumbnail else None
    return _Scan(digest=digest, format="pixels", mode="L", width=width, height=height, thumbnail=thumbnail)


def _caption(sample: Sample, split: str, scan: _Scan) -> str:
    name = sample.path.rsplit("#", 1)[1].replace("=", " ") if "#row=" in sample.path else Path(sample.path).name
    return f"{name}\n{scan.width}×{scan.height} · {split}"


def _thumbnail_ranks(dataset: Dataset, per_class: int) -> dict[int, int]:
    """Sample index -> rank for a seeded random choice of thumbnail candidates per class."""
    by_class: dict[str, list[int]] = {}
    for index, (_, sample) in enumerate(dataset):
        by_class.setdefault(sample.label, []).append(index)
    rng = random.Random(_THUMBNAIL_SEED)
    ranks: dict[int, int] = {}
    for indices in by_class.values():
        chosen = rng.sample(indices, min(len(indices), per_class * _CANDIDATES_PER_THUMBNAIL))
        ranks.update((index, rank) for rank, index in enumerate(chosen))
    return ranks


@dataclass
class _Tally:
    """Running aggregates of the pass: per image only a content hash and an index are kept."""

    dataset: Dataset
    thumbnails_per_class: int
    readable: dict[str, dict[str, int]] = field(default_factory=dict)
    formats: Counter = field(default_factory=Counter)
    modes: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    skipped: list[tuple[int, dict]] = field(default_factory=list)
    first_with_digest: dict[bytes, int] = field(default_factory=dict)
    duplicate_indices: dict[bytes, list[int]] = field(default_factory=dict)
    # class -> max-heap (by rank) of (-rank, index, thumbnail, caption), at most k entries
    thumbnails: dict[str, list[tuple[int, int, Image.Image, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.readable = {split: {c: 0 for c in self.dataset.classes} for split in self.dataset.splits}

    def add(self, index: int, split: str, sample: Sample, scan: _Scan, rank: int | None) -> None:
        if scan.reason is not None:
            entry = {"path": sample.path, "split": split, "label": sample.label, "reason": scan.reason}
            self.skipped.append((index, entry))
            return
        per_class = self.readable[split]
        per_class[sample.label] = per_class.get(sample.label, 0) + 1
        self.formats[scan.format] += 1
        self.modes[scan.mode] += 1
        self.sizes[(scan.width, scan.height)] += 1
        first = self.first_with_digest.setdefault(scan.digest, index)
        if first != index:
            self.duplicate_indices.setdefault(scan.digest, [first]).append(index)
        if scan.thumbnail is not None and rank is not None:
            heap = self.thumbnails.setdefault(sample.label, [])
            item = (-rank, index, scan.thumbnail, _caption(sample, split, scan))
            if len(heap) < self.thumbnails_per_class:
                heapq.heappush(heap, item)
            elif -rank > heap[0][0]:
                heapq.heapreplace(heap, item)


def _size_stats(sizes: Counter) -> dict:
    if not sizes:
        return {"distinct": 0, "most_common": []}
    keys = list(sizes)
    counts = np.array([sizes[k] for k in keys])
    stats: dict = {"distinct": len(keys)}
    for axis, name in enumerate(("width", "height")):
        values = np.repeat(np.array([k[axis] for k in keys]), counts)
        stats[name] = {"min": int(values.min()), "median": float(np.median(values)), "max": int(values.max())}
    stats["most_common"] = [
        {"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common(_MOST_COMMON_SIZES)
    ]
    return stats


def _duplicate_groups(tally: _Tally, flat: list[tuple[str, Sample]]) -> list[dict]:
    groups = []
    for digest, indices in sorted(tally.duplicate_indices.items(), key=lambda item: item[1][0]):
        members = [{"path": flat[i][1].path, "split": flat[i][0], "label": flat[i][1].label} for i in indices]
        groups.append(
            {
                "sha1": digest.hex(),
                "count": len(members),
                "splits": sorted({m["split"] for m in members}),
                "labels": sorted({m["label"] for m in members}),
                "members": members,
            }
        )
    return groups


def _scan_all(
    flat: list[tuple[str, Sample]], tally: _Tally, ranks: dict[int, int],
    max_pixels: int | None, workers: int, progress: bool,
) -> None:
    """Feed every sample's scan to ``tally``: pixel samples here, files through a process pool."""
    file_indices = [i for i, (_, s) in enumerate(flat) if s.pixels is None]
    tasks = ((flat[i][1].path, i in ranks, max_pixels) for i in file_indices)
    with tqdm(
        total=len(flat), desc="inspect", unit="img", file=sys.stderr,
        disable=not progress, delay=1.0, mininterval=0.5,
    ) as bar:
        for index, (split, sample) in enumerate(flat):
            if sample.pixels is not None:
                tally.add(index, split, sample, _scan_pixels(sample.pixels, index in ranks), ranks.get(index))
                bar.update()
        scans: Iterable[_Scan]
        if workers > 1 and len(file_indices) > 1:
            pool = ProcessPoolExecutor(max_workers=workers)
            chunk = max(1, min(64, len(file_indices) // (workers * 8)))
            scans = pool.map(_scan_file, tasks, chunksize=chunk)
        else:
            pool = None
            scans = map(_scan_file, tasks)
        try:
            for index, scan in zip(file_indices, scans, strict=True):
                split, sample = flat[index]
                tally.add(index, split, sample, scan, ranks.get(index))
                bar.update()
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)


def inspect_dataset(
    dataset: Dataset,
    out_dir: str | Path,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int = 2,
    progress: bool = True,
    thumbnails_per_class: int = 8,
) -> dict:
    """Scan every sample of ``dataset`` once and write the report files into ``out_dir``.

    Returns the summary (also written as ``summary.json``). A sample counts as readable when it
    decodes completely within ``max_pixels``; ``workers`` > 1 decodes files in that many
    processes. The result does not depend on ``workers``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = list(dataset)
    tally = _Tally(dataset, thumbnails_per_class)
    ranks = _thumbnail_ranks(dataset, thumbnails_per_class) if thumbnails_per_class > 0 else {}
    _scan_all(flat, tally, ranks, max_pixels, workers, progress)

    skipped = [
        {"path": e.get("path", ""), "split": e.get("split", ""), "label": e.get("label", ""),
         "reason": e.get("reason", "")}
        for e in dataset.skipped
    ] + [entry for _, entry in sorted(tally.skipped, key=lambda item: item[0])]
    duplicates = _duplicate_groups(tally, flat)
    readable_total = sum(sum(per.values()) for per in tally.readable.values())
    summary: dict = {
        "source": dataset.source,
        "classes": list(dataset.classes),
        "splits": tally.readable,
        "totals": {split: sum(per.values()) for split, per in tally.readable.items()},
        "n_images": len(flat),
        "n_readable": readable_total,
        "n_skipped": len(skipped),
        "skipped": skipped,
        "duplicates": duplicates,
        "cross_split_duplicates": [g for g in duplicates if len(g["splits"]) > 1],
        "formats": dict(tally.formats.most_common()),
        "modes": dict(tally.modes.most_common()),
        "sizes": _size_stats(tally.sizes),
        "carved": dataset.carved,
    }

    plots.class_counts_chart(tally.readable, out_dir / "class_counts.png", title="Readable images per class")
    plots.size_chart(dict(tally.sizes), out_dir / "image_sizes.png")
    grids = _write_thumbnail_grids(dataset, tally, out_dir)
    summary["thumbnails"] = {name: file for name, (file, _) in grids.items()}
    _write_skipped_csv(skipped, out_dir / "skipped.csv")
    summary["seconds"] = round(time.perf_counter() - started, 2)
    _write_report(summary, grids, out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return summary


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"


def _write_thumbnail_grids(dataset: Dataset, tally: _Tally, out_dir: Path) -> dict[str, tuple[str, Image.Image]]:
    """One grid per class with thumbnails: class -> (file name, grid image)."""
    classes = list(dict.fromkeys([*dataset.classes, *tally.thumbnails]))
    width = len(str(len(classes)))
    grids = {}
    for number, name in enumerate(classes, start=1):
        heap = tally.thumbnails.get(name)
        if not heap:
            continue
        chosen = sorted(heap, key=lambda item: -item[0])
        file = f"thumbnails_{number:0{width}d}_{_file_safe(name)}.png"
        grid = plots.thumbnail_grid(
            [item[2] for item in chosen], [item[3] for item in chosen], out_dir / file,
            columns=8, cell=THUMBNAIL_SIZE, title=name,
        )
        grids[name] = (file, grid)
    return grids


def _write_skipped_csv(skipped: list[dict], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "split", "label", "reason"])
        writer.writeheader()
        writer.writerows(skipped)


# ----------------------------------------------------------------------------- HTML report

def _grid_data_uri(path: Path, grid: Image.Image) -> str:
    """The saved PNG or a JPEG of ``grid``, whichever is smaller (photos: JPEG, keeps the report mailable)."""
    buffer = io.BytesIO()
    grid.save(buffer, format="JPEG", quality=85)
    png = path.read_bytes()
    if len(png) <= buffer.tell():
        return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _report_counts(summary: dict) -> str:
    splits = list(summary["splits"])
    classes = list(dict.fromkeys([*summary["classes"], *(c for p in summary["splits"].values() for c in p)]))
    rows = [
        [name, *(summary["splits"][s].get(name, 0) for s in splits),
         sum(summary["splits"][s].get(name, 0) for s in splits)]
        for name in classes
    ]
    total = ["total", *(summary["totals"][s] for s in splits), summary["n_readable"]]
    numeric = set(range(1, len(splits) + 2))
    return table(["class", *splits, "all"], rows, numeric, total)


def _report_duplicates(summary: dict) -> str:
    groups = summary["duplicates"]
    if not groups:
        return "<p>No files with identical content.</p>"
    cross = summary["cross_split_duplicates"]
    ordered = cross + [g for g in groups if len(g["splits"]) == 1]
    parts = [
        f"<p>{len(groups):,} groups of identical images; <b>{len(cross):,} span more than one split</b> "
        "(the same image in training and evaluation data inflates measured accuracy).</p>"
    ]
    rows = []
    for g in ordered[:_REPORT_MAX_DUPLICATE_GROUPS]:
        flags = []
        if len(g["splits"]) > 1:
            flags.append('<span class="badge">leakage: ' + html.escape(" + ".join(g["splits"])) + "</span>")
        if len(g["labels"]) > 1:
            flags.append('<span class="badge minor">different labels</span>')
        members = "<br>".join(
            f'{html.escape(m["path"])} <span class="note">({html.escape(m["split"])}, {html.escape(m["label"])})</span>'
            for m in g["members"]
        )
        rows.append(
            f'<tr><td class="n">{g["count"]}</td><td>{" ".join(flags)}</td><td class="path">{members}</td></tr>'
        )
    parts.append(
        '<div class="scroll"><table><thead><tr><th class="n">files</th><th></th><th>members</th></tr></thead><tbody>'
        + "".join(rows) + "</tbody></table></div>"
    )
    if len(ordered) > _REPORT_MAX_DUPLICATE_GROUPS:
        parts.append(f'<p class="note">First {_REPORT_MAX_DUPLICATE_GROUPS} groups shown; all are in summary.json.</p>')
    return "".join(parts)


def _report_skipped(summary: dict) -> str:
    skipped = summary["skipped"]
    if not skipped:
        return "<p>Every image decoded.</p>"
    reasons = Counter(entry["reason"] for entry in skipped)
    parts = [table(["reason", "files"], ([r, n] for r, n in reasons.most_common()), {1})]
    rows = ([e["path"], e["split"], e["label"], e["reason"]] for e in skipped[:_REPORT_MAX_SKIPPED])
    parts.append('<div class="scroll">' + table(["path", "split", "label", "reason"], rows) + "</div>")
    if len(skipped) > _REPORT_MAX_SKIPPED:
        parts.append(f'<p class="note">First {_REPORT_MAX_SKIPPED} shown; all are in skipped.csv.</p>')
    return "".join(parts)


def _report_sizes(sizes: dict) -> str:
    if not sizes["distinct"]:
        return ""
    stats = table(
        ["", "min", "median", "max"],
        ([name, sizes[name]["min"], f'{sizes[name]["median"]:g}', sizes[name]["max"]] for name in ("width", "height")),
        {1, 2, 3},
    )
    common = table(
        ["size", "images"], ([f'{s["width"]}×{s["height"]}', s["count"]] for s in sizes["most_common"]), {1}
    )
    return f'<div class="row">{stats}{common}</div>'


def _write_report(summary: dict, grids: dict[str, tuple[str, Image.Image]], out_dir: Path) -> None:
    title = f"Dataset report: {summary['source'] or 'dataset'}"
    cross = len(summary["cross_split_duplicates"])
    cards = [
        card(summary["n_readable"], "readable images"),
        card(len(summary["classes"]), "classes"),
        *(card(n, f"{split}") for split, n in summary["totals"].items()),
        card(summary["n_skipped"], "skipped", "bad" if summary["n_skipped"] else ""),
        card(len(summary["duplicates"]), "duplicate groups", "warn" if summary["duplicates"] else ""),
        card(cross, "cross-split duplicate groups", "bad" if cross else ""),
    ]
    carved = ""
    if summary["carved"]:
        carved = "<h2>Carved splits</h2>" + table(
            ["split", "carved from", "fraction", "seed"],
            ([name, c.get("from", ""), c.get("fraction", ""), c.get("seed", "")]
             for name, c in summary["carved"].items()),
        )
    thumbnails = "".join(
        f'<img class="chart" alt="{html.escape(name)}" src="{_grid_data_uri(out_dir / file, grid)}">'
        for name, (file, grid) in grids.items()
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">{summary["n_images"]:,} samples scanned in {summary["seconds"]:g} s</p>',
        f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Images per class</h2>",
        _report_counts(summary),
        f'<img class="chart" alt="images per class" src="{png_data_uri(out_dir / "class_counts.png")}">',
        carved,
        "<h2>Image sizes</h2>",
        _report_sizes(summary["sizes"]),
        f'<img class="chart" alt="image sizes" src="{png_data_uri(out_dir / "image_sizes.png")}">',
        "<h2>Formats and colour modes (as stored)</h2>",
        '<div class="row">',
        table(["format", "images"], ([k, v] for k, v in summary["formats"].items()), {1}),
        table(["mode", "images"], ([k, v] for k, v in summary["modes"].items()), {1}),
        "</div>",
        f"<h2>Skipped files ({summary['n_skipped']:,})</h2>",
        _report_skipped(summary),
        f"<h2>Duplicates ({len(summary['duplicates']):,} groups)</h2>",
        _report_duplicates(summary),
        "<h2>Sample thumbnails</h2>",
        thumbnails or "<p>No readable images.</p>",
    ]
    (out_dir / "report.html").write_text(page(title, body), encoding="utf-8")
