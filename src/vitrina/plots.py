"""Charts and image grids saved as PNG files.

Every function takes plain data (dicts, sequences, PIL images), writes one PNG and returns
what it wrote, so reports, the CLI and notebooks can share them. Charts are drawn with
matplotlib's object API on an Agg canvas: no pyplot global state, no display, safe in worker
processes and servers. Image grids are composed with PIL directly (fast for many classes).
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont

DPI = 100
SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "validation": "#DD8452", "test": "#55A868"}
_OTHER_COLOURS = ("#8172B3", "#C44E52", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")
_MAX_LABEL_CHARS = 40


def _figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A figure (size in inches) on the Agg canvas; constrained layout fits long labels."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _split_colours(splits: Sequence[str]) -> list[str]:
    others = iter(_OTHER_COLOURS * (1 + len(splits) // len(_OTHER_COLOURS)))
    return [SPLIT_COLOURS.get(s) or next(others) for s in splits]


def _short(label: str, limit: int = _MAX_LABEL_CHARS) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def class_counts_chart(
    counts: Mapping[str, Mapping[str, int]],
    path: str | os.PathLike,
    *,
    title: str = "Images per class",
) -> Path:
    """Grouped horizontal bars: ``counts`` maps split -> class -> count.

    Classes run top to bottom in the order first seen; the figure grows with the number of
    classes and splits so labels stay readable up to a few hundred classes.
    """
    splits = list(counts)
    classes = list(dict.fromkeys(c for per_class in counts.values() for c in per_class))
    n_classes, n_splits = len(classes), max(1, len(splits))
    inches_per_class = max(0.25, 0.12 + 0.09 * n_splits)
    fig = _figure(9.0, 1.6 + n_classes * inches_per_class)
    ax = fig.add_subplot()
    if not classes:
        ax.text(0.5, 0.5, "no classes", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    rows = np.arange(n_classes)
    bar_height = 0.8 / n_splits
    for i, (split, colour) in enumerate(zip(splits, _split_colours(splits), strict=True)):
        values = [counts[split].get(c, 0) for c in classes]
        offset = -0.4 + bar_height * (i + 0.5)
        bars = ax.barh(
            rows + offset, values, height=bar_height, color=colour, label=f"{split} ({sum(values):,})"
        )
        if n_classes * n_splits <= 120:
            ax.bar_label(bars, fmt="{:,.0f}", padding=2, fontsize=7, color="#444444")
    ax.set_yticks(rows, [_short(c) for c in classes], fontsize=9 if n_classes <= 60 else 8)
    ax.invert_yaxis()
    ax.margins(x=0.08, y=0.5 / n_classes)
    ax.set_xlabel("images")
    if n_classes > 30:  # tall chart: repeat the count axis on top
        ax.tick_params(axis="x", top=True, labeltop=True)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.suptitle(title)
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=n_splits, fontsize=9, frameon=False)
    return _save(fig, path)


def size_chart(
    size_counts: Mapping[tuple[int, int], int],
    path: str | os.PathLike,
    *,
    title: str = "Image sizes",
    max_points: int = 3000,
) -> Path:
    """Width/height chart of ``size_counts`` ((width, height) -> number of images).

    Up to ``max_points`` distinct sizes: a scatter with marker area proportional to the count;
    beyond that a log-scaled 2-D histogram. Marginal histograms of width and height sit on
    the top and right, and the most common sizes are listed in a corner box.
    """
    fig = _figure(8.0, 8.0, layout=None)  # fixed margins: a quarter of the time of constrained layout
    if not size_counts:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no readable images", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    sizes = np.array(list(size_counts), dtype=np.int64).reshape(-1, 2)
    counts = np.array(list(size_counts.values()), dtype=np.float64)
    widths, heights = sizes[:, 0], sizes[:, 1]

    grid = fig.add_gridspec(
        2, 2, width_ratios=(4, 1), height_ratios=(1, 4),
        left=0.1, right=0.96, bottom=0.07, top=0.94, wspace=0.04, hspace=0.04,
    )
    ax = fig.add_subplot(grid[1, 0])
    ax_top = fig.add_subplot(grid[0, 0], sharex=ax)
    ax_right = fig.add_subplot(grid[1, 1], sharey=ax)
    if len(sizes) <= max_points:
        ax.scatter(
            widths, heights, s=12 + 400 * counts / counts.max(), alpha=0.5,
            color=SPLIT_COLOURS["train"], edgecolors="none",
        )
    else:
        cells = ax.hexbin(
            widths, heights, C=counts, reduce_C_function=np.sum, gridsize=60, bins="log",
            cmap="viridis", mincnt=1,
        )
        corner = fig.add_subplot(grid[0, 1])
        corner.set_axis_off()
        colour_axis = corner.inset_axes((0.1, 0.55, 0.8, 0.12))
        fig.colorbar(cells, cax=colour_axis, orientation="horizontal", label="images per cell")
    top = max(widths.max(), heights.max())
    ax.plot([0, top], [0, top], linestyle="--", linewidth=0.8, color="#999999", label="square")
    ax.set_xlim(0, widths.max() * 1.05 + 1)
    ax.set_ylim(0, heights.max() * 1.08 + 1)
    ax.set_xlabel("width (px)")
    ax.set_ylabel("height (px)")
    ax.legend(loc="lower right", fontsize=8)
    common = "\n".join(
        f"{widths[i]}×{heights[i]}: {int(counts[i]):,}" for i in np.argsort(-counts, kind="stable")[:5]
    )
    ax.text(
        0.02, 0.98, f"most common\n{common}", transform=ax.transAxes, va="top", fontsize=8,
        family="monospace", bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "#cccccc"},
    )
    ax.grid(alpha=0.3)
    ax_top.hist(widths, bins=50, weights=counts, color="#8C8C8C")
    ax_right.hist(heights, bins=50, weights=counts, color="#8C8C8C", orientation="horizontal")
    ax_top.tick_params(labelbottom=False)
    ax_right.tick_params(labelleft=False)
    ax_top.set_ylabel("images")
    ax_right.set_xlabel("images")
    fig.suptitle(f"{title} ({int(counts.sum()):,} images, {len(sizes):,} distinct sizes)")
    return _save(fig, path)


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans (shipped with matplotlib): wide Unicode coverage for class and file names."""
    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), size)


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with a middle ellipsis until it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    keep = len(text)
    while keep > 1:
        keep -= 1
        head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
        candidate = f"{head}…{tail}"
        if draw.textlength(candidate, font=font) <= width:
            return candidate
    return "…"


def _fit_image(img: Image.Image, cell: int) -> Image.Image:
    """Shrink to fit a ``cell`` square, or enlarge small images by a whole factor (crisp pixels)."""
    img = img.convert("RGB")
    factor = cell // max(img.size)
    if factor >= 2:
        return img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
    if max(img.size) > cell:
        img = img.copy()
        img.thumbnail((cell, cell), Image.Resampling.BILINEAR)
    return img


def thumbnail_grid(
    images: Sequence[Image.Image],
    captions: Sequence[str],
    path: str | os.PathLike,
    *,
    columns: int = 8,
    cell: int = 128,
    title: str | None = None,
) -> Image.Image:
    """Save a grid of ``images`` (each fitted into a ``cell`` square) with captions as a PNG.

    A caption may hold two lines separated by a newline; long lines are shortened with an
    ellipsis. Returns the grid image (so a report can also embed a smaller encoding of it).
    """
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    caption_font, title_font = _font(11), _font(15)
    line_height, pad = 15, 6
    caption_height = 2 * line_height + 4
    title_height = 30 if title else 0
    cols = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / cols))
    width = pad + cols * (cell + pad)
    height = title_height + pad + rows * (cell + caption_height + pad)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((pad, 6), _fit_text(draw, title, title_font, width - 2 * pad), fill="#222222", font=title_font)
    if not images:
        draw.text((pad, title_height + pad), "no readable images", fill="#888888", font=caption_font)
    for i, (img, caption) in enumerate(zip(images, captions, strict=True)):
        x = pad + (i % cols) * (cell + pad)
        y = title_height + pad + (i // cols) * (cell + caption_height + pad)
        draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill="#EEEEEE")
        fitted = _fit_image(img, cell)
        grid.paste(fitted, (x + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        for line_no, line in enumerate(caption.split("\n")[:2]):
            draw.text(
                (x, y + cell + 2 + line_no * line_height),
                _fit_text(draw, line, caption_font, cell),
                fill="#333333" if line_no == 0 else "#777777",
                font=caption_font,
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return grid


def learning_curves(history: Sequence[Mapping[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Accuracy and loss per epoch, train vs validation, side by side."""
    epochs = [row["epoch"] for row in history]
    fig = _figure(10, 4)
    for ax, metric in zip(fig.subplots(1, 2), ("accuracy", "loss")):
        for split, colour in (("train", SPLIT_COLOURS["train"]), ("val", SPLIT_COLOURS["val"])):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, color=colour, label="validation" if split == "val" else split)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix_chart(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = False,
    title: str = "Confusion matrix",
) -> Path:
    """Rows are true classes, columns predicted; ``normalize`` shows each row as shares of its total.

    Cells are labelled with their values up to 30 classes; beyond that the colour carries the
    value and the figure grows so tick labels stay readable up to about 120 classes.
    """
    counts = np.asarray(matrix, dtype=np.float64).reshape(len(classes), len(classes))
    n = len(classes)
    rows = counts.sum(axis=1, keepdims=True)
    values = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalize else counts
    side = max(4.5, 2.5 + (0.38 if n <= 30 else 0.15) * n)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, values.max()), interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.6, label="share of the true class" if normalize else "images")
    font = 9 if n <= 30 else (7 if n <= 60 else 5)
    labels = [_short(c, 28) for c in classes]
    ax.set_xticks(range(n), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(n), labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        threshold = 0.5 * (1 if normalize else max(1.0, values.max()))
        for (i, j), value in np.ndenumerate(values):
            if counts[i, j]:
                text = f"{value:.2f}" if normalize else f"{int(value):,}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if value > threshold else "#222222")
    fig.suptitle(title)
    return _save(fig, path)


def reliability_diagram(bins: Sequence[Mapping[str, float]], path: str | os.PathLike, *, ece: float | None = None, title: str = "Reliability") -> Path:
    """Accuracy against confidence per bin (``lower``, ``upper``, ``count``, ``accuracy``), with the counts below."""
    fig = _figure(6, 6.5)
    ax, ax_count = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    accuracy = np.array([b["accuracy"] if b["count"] else 0.0 for b in bins])
    confidence = np.array([b["confidence"] if b["count"] else 0.0 for b in bins])
    filled = counts > 0
    ax.bar(lower[filled], accuracy[filled], width=width[filled], align="edge", color=SPLIT_COLOURS["train"], edgecolor="white", label="accuracy")
    ax.bar(lower[filled], confidence[filled], width=width[filled], align="edge", fill=False, edgecolor="#C44E52", linewidth=1.2,
           label="mean confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if ece is not None:
        ax.text(0.97, 0.05, f"ECE {ece:.3f}", transform=ax.transAxes, ha="right", fontsize=11,
                bbox={"facecolor": "white", "edgecolor": "#cccccc"})
    ax_count.bar(lower, counts, width=width, align="edge", color="#8C8C8C", edgecolor="white")
    ax_count.set_xlabel("confidence (largest probability)")
    ax_count.set_ylabel("images")
    ax_count.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def leaderboard_chart(rows: Sequence[Mapping[str, float | str]], path: str | os.PathLike, *, split: str = "test") -> Path:
    """Four bar charts, one bar per configuration (``name``): accuracy, training time, size, speed."""
    panels = (
        ("accuracy", f"{split} accuracy", "{:.1%}"),
        ("train_seconds", "training time (s)", "{:,.0f}"),
        ("size_mb", "model file (MB)", "{:.1f}"),
        ("images_per_second", "PyTorch inference (images/s, batch 32)", "{:,.0f}"),
    )
    names = [_short(str(row["name"]), 28) for row in rows]
    fig = _figure(12, 2.4 + 0.55 * len(rows))
    colours = [_OTHER_COLOURS[i % len(_OTHER_COLOURS)] for i in range(len(rows))]
    for ax, (key, label, fmt) in zip(fig.subplots(1, 4, sharey=True).flat, panels):
        values = [float(row[key]) for row in rows]
        bars = ax.barh(range(len(rows)), values, color=colours)
        ax.bar_label(bars, labels=[fmt.format(v) for v in values], padding=2, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.margins(x=0.3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        if key == "accuracy":
            ax.set_xlim(0, 1.15)
    ax0 = fig.axes[0]
    ax0.set_yticks(range(len(rows)), names)
    ax0.invert_yaxis()
    fig.suptitle("Leaderboard")
    return _save(fig, path)


def overlaid_curves(histories: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike, title: str = "Learning curves") -> Path:
    """Validation accuracy and loss per epoch of several runs on shared axes (training dashed)."""
    fig = _figure(11, 4.5)
    axes = fig.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        colour = _OTHER_COLOURS[i % len(_OTHER_COLOURS)]
        epochs = [row["epoch"] for row in history]
        for ax, metric in zip(axes, ("accuracy", "loss")):
            ax.plot(epochs, [row.get(f"val_{metric}") for row in history], color=colour, marker="o", markersize=2, label=name)
            ax.plot(epochs, [row.get(f"train_{metric}") for row in history], color=colour, linestyle="--", linewidth=0.8, alpha=0.6)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric} (validation solid, training dashed)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def trials_chart(values: Sequence[tuple[int, float, str]], path: str | os.PathLike, *, baseline: float | None = None) -> Path:
    """Search progress: each trial's objective (``(number, value, state)``), the best so far, and the default's value."""
    fig = _figure(9, 4.5)
    ax = fig.add_subplot()
    styles = {"COMPLETE": (SPLIT_COLOURS["train"], "complete"), "PRUNED": ("#8C8C8C", "pruned")}
    for state, (colour, label) in styles.items():
        points = [(n, v) for n, v, s in values if s == state and v is not None]
        if points:
            ax.scatter(*zip(*points), color=colour, s=22, label=label, zorder=3)
    complete = sorted((n, v) for n, v, s in values if s == "COMPLETE")
    if complete:
        best = np.maximum.accumulate([v for _, v in complete])
        ax.step([n for n, _ in complete], best, where="post", color="#C44E52", label="best so far")
    if baseline is not None:
        ax.axhline(baseline, color="#555555", linestyle="--", linewidth=1, label="default config")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Hyperparameter search")
    return _save(fig, path)
