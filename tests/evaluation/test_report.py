"""Reports and charts from a model trained on real photos, checked as a person sees them: rendered in a browser."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import DEMO
from vitrina import api, plots
from vitrina.training.report import write_run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def render(html_path: Path, png: Path, profile: Path) -> Image.Image:
    """A screenshot of the page in headless Chromium."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: the rendered-report check needs a headless browser")
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--window-size=1280,3000", f"--screenshot={png}", html_path.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    return Image.open(png).convert("RGB")


def assert_not_blank(screenshot: Image.Image) -> None:
    pixels = np.asarray(screenshot, dtype=np.float64)
    assert screenshot.size == (1280, 3000)
    assert pixels.std() > 20, "the page renders (nearly) blank"
    non_white = (pixels.min(axis=2) < 200).mean()
    assert non_white > 0.03, f"only {non_white:.1%} of the page carries content"
    coloured = (pixels.max(axis=2) - pixels.min(axis=2) > 60).mean()
    assert coloured > 0.003, f"only {coloured:.2%} of the page is coloured: no charts or photos shown"


def assert_self_contained(page: str) -> None:
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in page and "https://" not in page


def test_run_report_renders_with_every_section(demo_run: Path, tmp_path: Path) -> None:
    path = write_run_report(demo_run)
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    for heading in ("Data", "Training", "Metrics per split", "Per class (test)", "Confusion matrix and calibration (test)", "Most confident mistakes"):
        assert f"<h2>{heading}" in page, heading
    assert page.count('class="gallery"') == 1 and "predicted:" in page  # 10 classes at 64 px: some mistakes
    assert "data:image/jpeg" in page  # photo thumbnails of the mistakes
    for name in ("confusion_matrix_test.png", "confusion_matrix_test_normalized.png", "reliability_test.png"):
        assert (demo_run / name).is_file()
    shot = render(path, tmp_path / "run_report.png", tmp_path / "profile")
    assert_not_blank(shot)


def test_evaluation_report_and_gallery_render(demo_run: Path, tmp_path: Path) -> None:
    result = api.evaluate(demo_run, DEMO, out=tmp_path / "eval", tta=True, progress=False)
    assert "top3_accuracy" in result.metrics and "top5_accuracy" in result.metrics
    page = (result.out_dir / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "Test-time augmentation" in page
    gallery = (result.out_dir / "mistakes.html").read_text(encoding="utf-8")
    assert gallery.count("<figure>") == min(48, result.metrics["n_images"] - round(result.metrics["accuracy"] * result.metrics["n_images"]))
    assert_not_blank(render(result.out_dir / "report.html", tmp_path / "eval_report.png", tmp_path / "profile"))


def test_confusion_matrix_stays_readable_for_120_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    classes = [f"product category {i}" for i in range(120)]
    matrix = rng.integers(0, 3, size=(120, 120)) + np.diag(rng.integers(10, 40, size=120))
    path = plots.confusion_matrix_chart(matrix, classes, tmp_path / "cm.png", normalize=True)
    with Image.open(path) as img:
        width, height = img.size
    assert width >= 1800 and height >= 1800  # about 12 px a class for labels of 5 pt
    small = plots.confusion_matrix_chart([[5, 1], [0, 4]], ["a", "b"], tmp_path / "small.png")
    with Image.open(small) as img:
        assert img.size[0] < 800


def test_comparison_and_search_charts(tmp_path: Path) -> None:
    rows = [{"name": "cnn3-scratch", "accuracy": 0.61, "train_seconds": 420.0, "size_mb": 1.4, "images_per_second": 900.0},
            {"name": "lite0-finetune", "accuracy": 0.91, "train_seconds": 1300.0, "size_mb": 13.6, "images_per_second": 80.0}]
    plots.leaderboard_chart(rows, tmp_path / "board.png")
    history = [{"epoch": e, "train_accuracy": e / 10, "val_accuracy": e / 12, "train_loss": 1 / e, "val_loss": 1.2 / e} for e in range(1, 6)]
    plots.overlaid_curves({"a": history, "b": history[:3]}, tmp_path / "curves.png")
    plots.trials_chart([(0, 0.8, "COMPLETE"), (1, 0.7, "PRUNED"), (2, 0.85, "COMPLETE")], tmp_path / "trials.png", baseline=0.8)
    bins = [{"lower": i / 10, "upper": (i + 1) / 10, "count": i, "accuracy": i / 10, "confidence": (i + 0.5) / 10} for i in range(10)]
    plots.reliability_diagram(bins, tmp_path / "rel.png", ece=0.05)
    for name in ("board.png", "curves.png", "trials.png", "rel.png"):
        with Image.open(tmp_path / name) as img:
            img.verify()
