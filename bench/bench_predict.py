"""The prediction speed and memory users get, from the models `vitrina train` and `vitrina export` make by default.

Models (trained once with no flag but the dataset's, then reused from ``--runs``): avito
(``--holdout validation``) and freiburg official split 0, each in the default mode and with
``--mode bottleneck``. Each is exported with ``vitrina export RUN`` and no other flag. Then, per
model, in fresh processes on the 4,947 freiburg photos:

- ``vitrina predict RUN IMAGES`` end to end (interpreter start, model load, decoding, the model,
  the CSV): images/s, network passes per photo (the adaptive mirror average), CPU seconds per
  photo, peak memory of the largest process and of the whole process tree;
- the model's accuracy on its own test split as shipped, against its slowest variant (the fp32
  file with the mirror average on every photo);
- single-photo latency, already decoded, with the shipped file at its input size (p50, p99),
  beside the same figure for efficientnet_lite0 at 224 px;
and once: timm's baseline (bench/timm_baseline.py) on the same photos, and ``vitrina predict``
over 98,940 inputs (the photos 20 times under other names) with memory after the first 10,000
rows and at the end.

    python bench/bench_predict.py [--runs DIR] [--only avito-finetune,...] [--skip-flat]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from proc_sampler import measure

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
IMAGES = SHARED / "freiburg-groceries" / "images"
SPLIT0 = REPO / "examples" / "freiburg-split0.yaml"
MODELS = {
    "avito-finetune": (SHARED / "avito", ["--holdout", "validation"]),
    "freiburg-finetune": (SPLIT0, []),
    "avito-bottleneck": (SHARED / "avito", ["--holdout", "validation", "--mode", "bottleneck"]),
    "freiburg-bottleneck": (SPLIT0, ["--mode", "bottleneck"]),
}
VITRINA = [sys.executable, "-m", "vitrina"]
TARGETS = {"images_per_second": 250.0, "times_timm": 5.0, "peak_mb": 1024.0, "accuracy_points": 0.5,
           "p50_ms": 6.0, "p99_ms": 12.0, "gain_share": 0.7, "passes": 1.2, "flat": 0.10}


def check(ok: bool, text: str) -> str:
    return f"  [{'met' if ok else 'NOT MET'}] {text}"


def train_or_reuse(name: str, runs: Path) -> Path:
    run = runs / name
    if (run / "metrics.json").is_file():
        print(f"[{name}] reusing {run}", flush=True)
        return run
    data, flags = MODELS[name]
    print(f"[{name}] vitrina train {data} {' '.join(flags)}", flush=True)
    done = measure([*VITRINA, "train", str(data), *flags, "--out", str(run), "--quiet"])
    if done.returncode != 0:
        raise SystemExit(f"[{name}] training failed:\n{done.stderr[-3000:]}")
    return run


def export(name: str, run: Path) -> dict:
    done = measure([*VITRINA, "export", str(run)])
    if done.returncode != 0:
        raise SystemExit(f"[{name}] export failed:\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
    chose = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("chose ", "int8 on "))]
    for line in chose:
        print(f"[{name}]   {line}")
    return json.loads((run / "model.json").read_text())


def predict_end_to_end(name: str, run: Path, work: Path) -> dict:
    out = work / f"{name}.csv"
    done = measure([*VITRINA, "predict", str(run), str(IMAGES), "--out", str(out), "--quiet"])
    if done.returncode != 0:
        raise SystemExit(f"[{name}] predict failed:\n{done.stderr[-3000:]}")
    rows = sum(1 for _ in open(out)) - 1
    passes = re.search(r"([\d.]+) passes per photo", done.stderr)
    return {"rows": rows, "images_per_second": rows / done.wall, "cpu_ms_per_photo": 1000 * done.cpu / rows,
            "peak_process_mb": done.peak_process_mb, "peak_tree_mb": done.peak_tree_mb,
            "passes": float(passes.group(1)) if passes else 1.0, "summary": done.stderr.strip().splitlines()[-1]}


def test_split(run: Path) -> tuple[list[str], list[str]]:
    """The paths and true labels of the split a run reports (its own test or holdout split)."""
    split = json.loads((run / "metrics.json").read_text())["split"]
    with open(run / f"predictions_{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def accuracy_as_shipped(run: Path) -> dict:
    """Accuracy of the shipped file and of the slowest variant (fp32, mirror on every photo) on the run's test split."""
    from vitrina.description import MirrorAverage
    from vitrina.export.loading import load_predictor
    from vitrina.inference.predictor import onnx_predictor

    paths, labels = test_split(run)
    shipped = load_predictor(run)
    fp32_file = run / "model.fp32.onnx" if shipped.precision == "int8" else run / "model.onnx"
    slowest = onnx_predictor(fp32_file)
    slowest.description = slowest.description.with_changes(mirror=MirrorAverage(math.inf))
    figures = {"precision": shipped.precision}
    for key, predictor in (("shipped", shipped), ("slowest", slowest)):
        probs, errors = predictor.predict_paths(paths)
        predicted = [predictor.classes[i] if e is None else None for i, e in zip(probs.argmax(1), errors)]
        figures[key] = float(np.mean([p == t for p, t in zip(predicted, labels)]))
    figures["n"] = len(labels)
    return figures


def latency(model_file_or_run: Path, photos: list[Path], runs: int = 300) -> tuple[float, float]:
    """p50 and p99 milliseconds of one already decoded photo through the shipped predictor (mirror pass included)."""
    from vitrina.export.loading import load_predictor

    predictor = load_predictor(model_file_or_run)
    images = [predictor.load(p) for p in photos]
    for image in images[:20]:
        predictor.predict_scored(image[None])
    times = []
    for i in range(runs):
        started = time.perf_counter()
        predictor.predict_scored(images[i % len(images)][None])
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def reference_224(work: Path) -> Path:
    """efficientnet_lite0 at 224 px (ImageNet backbone, a fresh head), exported as vitrina exports: the 224 px latency reference."""
    from vitrina import api
    from vitrina.description import ModelDescription
    from vitrina.models.checkpoint import save_model
    from vitrina.models.registry import create_model, default_preprocess

    classes = sorted(p.name for p in IMAGES.iterdir() if p.is_dir())
    model = create_model("efficientnet_lite0", len(classes), pretrained=True, input_size=224).eval()
    run = work / "lite0-224"
    save_model(run, model, ModelDescription("efficientnet_lite0", tuple(classes), default_preprocess("efficientnet_lite0", input_size=224)))
    (run / "splits.json").write_text(json.dumps({"source": str(SPLIT0), "splits": {}}))
    return api.export(run, precision="int8", calibration=SPLIT0, log=lambda _: None).onnx_path


def timm_baseline(work: Path) -> dict:
    done = measure([sys.executable, str(REPO / "bench" / "timm_baseline.py"), str(IMAGES), str(work / "timm.csv")])
    if done.returncode != 0:
        raise SystemExit(f"timm baseline failed:\n{done.stderr[-3000:]}")
    own = json.loads(done.stdout.strip().splitlines()[-1])
    return {"images_per_second": own["images"] / done.wall, "own_rate": own["images_per_second"], "peak_process_mb": done.peak_process_mb}


def flat_memory(run: Path, work: Path, copies: int = 20) -> dict:
    """``vitrina predict`` over the photos ``copies`` times under other names: memory after 10,000 rows and at the end."""
    names = []
    for k in range(copies):
        link = work / f"copy{k:02d}"
        if not link.exists():
            link.symlink_to(IMAGES, target_is_directory=True)
        names += [str(link / p.relative_to(IMAGES)) for p in sorted(IMAGES.rglob("*.jpg"))]
    listing = work / "catalogue.txt"
    listing.write_text("\n".join(names) + "\n")
    out = work / "flat.csv"
    marks: dict[str, float] = {}

    def watch(sample: tuple[float, float, float]) -> None:
        if "first" not in marks and out.is_file() and out.stat().st_size > 10_000 * 60:  # rows are ~60+ bytes: check by count
            if sum(1 for _ in open(out)) > 10_000:
                marks["first"] = sample[2]
        marks["last"] = sample[2]

    done = measure([*VITRINA, "predict", str(run), str(listing), "--out", str(out), "--quiet"], interval=1.0, on_sample=watch)
    if done.returncode != 0:
        raise SystemExit(f"flat-memory predict failed:\n{done.stderr[-3000:]}")
    steady = [s[2] for s in done.samples[-10:]]
    return {"inputs": len(names), "after_10000_mb": marks.get("first", float("nan")), "end_mb": float(np.median(steady)),
            "peak_tree_mb": done.peak_tree_mb, "images_per_second": len(names) / done.wall}


def report_model(name: str, run: Path, work: Path, timm_rate: float, latency_photos: list[Path]) -> list[str]:
    meta = export(name, run)
    e2e = predict_end_to_end(name, run, work)
    acc = accuracy_as_shipped(run)
    p50, p99 = latency(run, latency_photos)
    mirror = meta.get("mirror")
    size = meta["preprocess"]["input_size"]
    print(f"[{name}] {acc['precision']} at {size} px, mirror {json.dumps(mirror)}")
    print(f"[{name}]   end to end {e2e['images_per_second']:.1f} images/s ({e2e['images_per_second'] / timm_rate:.1f}x timm), "
          f"{e2e['passes']:.2f} passes per photo, {e2e['cpu_ms_per_photo']:.2f} CPU-ms per photo, peak {e2e['peak_process_mb']:.0f} MB "
          f"largest process, {e2e['peak_tree_mb']:.0f} MB process tree")
    print(f"[{name}]   {e2e['summary']}")
    print(f"[{name}]   accuracy on its test split ({acc['n']} photos): shipped {acc['shipped']:.4f}, slowest variant "
          f"(fp32, mirror on every photo) {acc['slowest']:.4f}")
    print(f"[{name}]   single photo, decoded, shipped file at {size} px: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
    lines = [
        check(e2e["images_per_second"] >= TARGETS["images_per_second"], f"{name}: {e2e['images_per_second']:.0f} images/s >= 250"),
        check(e2e["images_per_second"] >= TARGETS["times_timm"] * timm_rate, f"{name}: {e2e['images_per_second'] / timm_rate:.1f}x timm >= 5x"),
        check(e2e["peak_process_mb"] <= TARGETS["peak_mb"], f"{name}: peak {e2e['peak_process_mb']:.0f} MB <= 1 GB (largest process)"),
        check(acc["shipped"] >= acc["slowest"] - TARGETS["accuracy_points"] / 100,
              f"{name}: accuracy {acc['shipped']:.4f} within 0.5 points of the slowest variant {acc['slowest']:.4f}"),
        check(p50 <= TARGETS["p50_ms"] and p99 <= TARGETS["p99_ms"], f"{name}: single photo p50 {p50:.2f} <= 6 ms, p99 {p99:.2f} <= 12 ms"),
    ]
    if mirror:
        share = mirror["gain_points"] / mirror["full_gain_points"] if mirror.get("full_gain_points") else float("nan")
        lines.append(check(share >= TARGETS["gain_share"] and mirror["passes"] <= TARGETS["passes"],
                           f"{name}: adaptive mirror keeps {share:.0%} of the full mirror's validation gain "
                           f"({mirror['gain_points']:+.2f} of {mirror['full_gain_points']:+.2f} points) at {mirror['passes']:.2f} passes "
                           f"(validation); {e2e['passes']:.2f} passes on the freiburg photos"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=None, help="train into / reuse run folders here (default: a temporary folder)")
    parser.add_argument("--only", default=",".join(MODELS), help="models to measure")
    parser.add_argument("--skip-flat", action="store_true", help="skip the 98,940-input memory run (about 6 minutes)")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        raise SystemExit(f"{IMAGES} not found: the prediction benchmark needs ../shared/datasets; nothing measured.")
    work = Path(tempfile.mkdtemp(prefix="vitrina-bench-predict-"))
    runs = args.runs or work / "runs"
    names = [n for n in args.only.split(",") if n]
    trained = {name: train_or_reuse(name, runs) for name in names}
    timm = timm_baseline(work)
    print(f"timm baseline (tf_efficientnet_lite0, timm transforms, 2-worker DataLoader, channels_last): "
          f"{timm['images_per_second']:.1f} images/s end to end ({timm['own_rate']:.1f} by its own clock), peak {timm['peak_process_mb']:.0f} MB")
    photos = sorted(IMAGES.rglob("*.jpg"))[::50]
    p50, p99 = latency(reference_224(work), photos)
    print(f"reference: efficientnet_lite0 at 224 px, int8, single photo decoded: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    lines = []
    for name, run in trained.items():
        lines += report_model(name, run, work, timm["images_per_second"], photos)
    if not args.skip_flat:
        flat = flat_memory(trained[names[0]], work)
        growth = flat["end_mb"] / flat["after_10000_mb"] - 1
        print(f"{flat['inputs']:,} inputs ({names[0]}): process tree {flat['after_10000_mb']:.0f} MB after 10,000 rows, "
              f"{flat['end_mb']:.0f} MB at the end, peak {flat['peak_tree_mb']:.0f} MB; {flat['images_per_second']:.0f} images/s")
        lines.append(check(abs(growth) <= TARGETS["flat"], f"memory over {flat['inputs']:,} inputs: {growth:+.1%} (within 10%)"))
    one, five, _ = os.getloadavg()
    print("summary\n" + "\n".join(lines) + f"\n  load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
