"""Prediction speed on the Freiburg grocery photos: `vitrina predict` against a naive loop.

Builds efficientnet_lite0 at 224 px for the 25 Freiburg classes (ImageNet backbone with an
untrained head: speed does not depend on the weights' values; ``--train`` fits the head on
official split 0 first so the accuracy figures mean something), exports it with vitrina
(fp32 and int8), then prints from this one run:

- the CPU's fp32 matrix-multiply peak (torch and numpy SGEMM 2048x2048),
- a naive loop: per batch of 32, PIL decode + torchvision transforms + eager PyTorch fp32,
- the model alone: eager PyTorch fp32, ONNX Runtime fp32 and int8, at several batch sizes,
- single-image latency (already decoded, model only) p50/p99 for fp32 and int8 (a run folder
  whose int8 export kept its accuracy within 1 point is predicted and served in int8),
- ``vitrina predict`` end to end over every image (read, decode, preprocess, model, write a CSV)
  in a fresh process, with its peak memory (all its processes together), for fp32 and int8, and
  for the other pipeline layout (decoding workers beside one multi-threaded model) for comparison,
- the accuracy of the default JPEG draft decoding against full-size decoding on every image,
- the ratios between them and the fraction of the matmul peak the model reaches.

Usage::

    python bench/bench_predict.py [--limit N] [--naive-images N] [--train]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASETS = REPO.parent / "shared" / "datasets"
IMAGES = DATASETS / "freiburg-groceries" / "images"
SPLIT0 = REPO / "examples" / "freiburg-split0.yaml"
MODEL = "efficientnet_lite0"
STATED_GFLOP = 0.77  # efficientnet_lite0 at 224 px, as usually quoted; the bench also counts it

# Run in a fresh interpreter so its memory and start-up are measured alone. "decoders" is the
# other pipeline layout, for comparison: workers only decode, this process runs a 2-thread model.
PREDICT_CHILD = """
import json, sys, time
started = time.perf_counter()
from vitrina.api.prediction import predict
from vitrina.export.loading import load_predictor
model, images, out, layout = sys.argv[1:5]
predictor = load_predictor(model)
if layout == "decoders":
    predictor.backend.file = None
summary = predict(predictor, [images], out=out, progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "n": summary.n_predicted + summary.n_errors,
                  "errors": summary.n_errors, "workers": summary.workers, "batch_size": summary.batch_size}))
"""


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def best_rate(work, repeats: int = 5) -> float:
    """Highest calls per second over ``repeats`` timed calls after one warm-up."""
    work()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return 1.0 / best


def matmul_peak() -> tuple[float, float]:
    """fp32 GFLOP/s of a 2048x2048 matrix product in torch and in numpy."""
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch_rate = best_rate(lambda: a @ b) * 2 * n**3 / 1e9
    x, y = a.numpy(), b.numpy()
    numpy_rate = best_rate(lambda: x @ y) * 2 * n**3 / 1e9
    return torch_rate, numpy_rate


def model_gflop(model, size: int) -> float:
    """Forward FLOPs of one image, counted by torch (multiply and add counted separately)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def build_run(folder: Path, train: bool) -> Path:
    """A run folder: trained on split 0 (``train``), or the ImageNet backbone with a fresh head."""
    from vitrina import api
    from vitrina.config import resolve
    from vitrina.description import ModelDescription
    from vitrina.models.checkpoint import save_model
    from vitrina.models.registry import create_model, default_preprocess

    if train:
        overrides = {"model.name": MODEL, "train.mode": "bottleneck", "train.precision": "fp32"}
        print("training the head on split 0 (bottleneck; features are cached for later runs)...")
        run = api.train(SPLIT0, resolve(overrides=overrides), out=folder / "run", progress=False, log=lambda _: None)
        print(f"  {run.metrics['split']} accuracy {run.metrics['accuracy']:.4f}")
        return run.run_dir
    classes = sorted(p.name for p in IMAGES.iterdir() if p.is_dir())
    model = create_model(MODEL, len(classes), pretrained=True)
    description = ModelDescription(MODEL, tuple(classes), default_preprocess(MODEL), mode="finetune", dropout=0.2)
    save_model(folder / "run", model.eval(), description)
    return folder / "run"


def naive_loop(model, paths: list[str], out: Path, batch_size: int = 32) -> float:
    """Images/s of the obvious loop: PIL + torchvision transforms + eager PyTorch, one batch at a time."""
    import torch
    from PIL import Image
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    started = time.perf_counter()
    with open(out, "w", newline="") as fh, torch.inference_mode():
        writer = csv.writer(fh)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in chunk])
            top = torch.softmax(model(batch), dim=1).topk(5)
            for path, probs, labels in zip(chunk, top.values.tolist(), top.indices.tolist()):
                writer.writerow([path, *labels, *probs])
    return len(paths) / (time.perf_counter() - started)


def model_only(run, batch: np.ndarray, windows: int = 4, window_seconds: float = 0.75) -> float:
    """Images/s of ``run`` on one normalised batch: the best of a few short windows, so that
    other programs on the machine disturb the figure less."""
    run(batch)
    best = 0.0
    for _ in range(windows):
        done, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < window_seconds or done < 2 * len(batch):
            run(batch)
            done += len(batch)
        best = max(best, done / elapsed)
    return best


def latency_ms(run, image: np.ndarray, runs: int = 200, trials: int = 3) -> tuple[float, float]:
    """p50 and p99 milliseconds of one already-decoded, normalised image through ``run``
    (``runs`` calls; of ``trials`` such series, the one with the lowest p50)."""
    single = image[None]
    for _ in range(10):
        run(single)
    series = []
    for _ in range(trials):
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            run(single)
            times.append((time.perf_counter() - started) * 1000)
        series.append((float(np.percentile(times, 50)), float(np.percentile(times, 99))))
    return min(series)


def draft_decoding_effect(model_file: Path, predictions_csv: Path) -> dict[str, float]:
    """Top-1 accuracy of `vitrina predict`'s rows (JPEG draft decoding) and of the same model on
    fully decoded files; the true label is each photo's class folder."""
    from vitrina.data.images import decode
    from vitrina.export.loading import load_predictor

    predictor = load_predictor(model_file)
    with open(predictions_csv, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if not r["error"]]
    paths = [r["path"] for r in rows]
    truth = np.array([Path(p).resolve().parent.name for p in paths])
    drafted = np.array([r["label_1"] for r in rows])
    full = []
    for start in range(0, len(paths), 64):
        images = np.stack([predictor.preprocess.to_uint8(decode(p, predictor.preprocess.mode)) for p in paths[start : start + 64]])
        full += [predictor.classes[i] for i in predictor.backend(predictor.preprocess.normalize(images)).argmax(1)]
    full_top1 = np.array(full)
    return {"n": len(paths), "draft": float((drafted == truth).mean()), "full": float((full_top1 == truth).mean()),
            "agree": float((drafted == full_top1).mean())}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/statm") as fh:
                rss[int(entry)] = int(fh.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


def predict_in_child(model: Path, images: Path, out: Path, layout: str = "default") -> dict:
    """Run `vitrina predict` in a fresh process; add its wall time and peak memory."""
    out.unlink(missing_ok=True)
    started = time.perf_counter()
    cpu_before = children_cpu_seconds()
    command = [sys.executable, "-c", PREDICT_CHILD, str(model), str(images), str(out), layout]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak = 0.0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.wait(0.05):
            peak = max(peak, tree_rss_mb(child.pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    output, _ = child.communicate()
    stop.set()
    watcher.join()
    if child.returncode != 0:
        raise SystemExit(f"vitrina predict failed (exit {child.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - started
    result["cpu_seconds"] = children_cpu_seconds() - cpu_before
    result["peak_tree_mb"] = peak
    return result


def children_cpu_seconds() -> float:
    """CPU time (user + system) of every finished child process and their children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(paths: list[str], args: argparse.Namespace, work: Path) -> None:
    """Every figure, printed as it is measured; ``work`` holds the run folder and outputs."""

    import torch

    from vitrina.api.prediction import export
    from vitrina.export.loading import load_predictor
    from vitrina.inference.predictor import OnnxBackend, TorchBackend
    from vitrina.models.checkpoint import load_model

    for path in paths:  # warm the file cache: every figure below reads from memory
        Path(path).read_bytes()
    print(f"{len(paths):,} images from {IMAGES}")
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads; {load_average()}")

    torch_peak, numpy_peak = matmul_peak()
    peak = max(torch_peak, numpy_peak)
    print(f"\nfp32 matmul 2048x2048: torch {torch_peak:.0f} GFLOP/s, numpy {numpy_peak:.0f} GFLOP/s")

    run = build_run(work, args.train)
    print("\nexport (vitrina export RUN --int8):")
    result = export(run, int8=True, calibration=SPLIT0, log=lambda line: print(f"  {line}"))
    model, _ = load_model(run)
    gflop = model_gflop(model, 224)
    print(f"model cost: {gflop:.2f} GFLOP per image counted by torch (usually quoted: {STATED_GFLOP})")

    predictor = load_predictor(result.onnx_path)
    images = np.stack([predictor.load(p) for p in paths[:64]])
    batch32, batch64 = predictor.preprocess.normalize(images[:32]), predictor.preprocess.normalize(images)
    fp32 = OnnxBackend.from_file(result.onnx_path)
    int8 = OnnxBackend.from_file(result.int8_path)
    eager = TorchBackend(model)

    shipped = load_predictor(run).precision  # what `vitrina predict RUN` and `vitrina serve RUN` use
    time.sleep(5)  # let the export's worker threads wind down: latency is a quiet-machine figure
    print(f"\nsingle image, model only, already decoded (200 runs, the best of 3 series); a run folder is "
          f"served in {shipped}; {load_average()}")
    latency = {}
    for name, backend in (("fp32", fp32), ("int8", int8)):
        latency[name] = latency_ms(backend, batch32[0])
        print(f"  ORT {name}{' (default)' if name == shipped else '':<10} p50 {latency[name][0]:.2f} ms   p99 {latency[name][1]:.2f} ms")

    print(f"\nmodel only (already decoded and normalised images), images/s, best of 4 windows; ORT with "
          f"{fp32.session.get_session_options().intra_op_num_threads} threads unless said; {load_average()}")
    figures: dict[str, float] = {"eager torch fp32 b32": model_only(eager, batch32)}
    figures["ORT fp32 1 thread b32"] = model_only(OnnxBackend.from_file(result.onnx_path, threads=1), batch32)
    for name, backend in (("ORT fp32", fp32), ("ORT int8", int8)):
        for size in (1, 8, 32, 64):
            figures[f"{name} b{size}"] = model_only(backend, batch64[:size])
    for name, value in figures.items():
        share = "" if "int8" in name else f"   {value * gflop / peak:5.1%} of the fp32 matmul peak"
        print(f"  {name:<22} {value:7.1f}{share}")

    naive_paths = paths[: args.naive_images]
    print(f"\nnaive loop over {len(naive_paths)} images (PIL + torchvision + eager PyTorch fp32, batch 32)...")
    naive = naive_loop(model.eval(), naive_paths, work / "naive.csv")
    print(f"  {naive:.1f} images/s")

    del eager, fp32, int8, predictor
    images_arg = IMAGES if args.limit is None else work / "subset"
    if args.limit is not None:
        (work / "subset").mkdir()
        for i, p in enumerate(paths):
            os.symlink(p, work / "subset" / f"{i:06d}.jpg")
    print(f"\nvitrina predict end to end over {len(paths):,} images (fresh process, default settings, CSV out):")
    print(f"  {load_average()}")
    cases = {
        "fp32": (result.onnx_path, "default"),
        "int8": (result.int8_path, "default"),
        "fp32, decoders + 2-thread model": (result.onnx_path, "decoders"),
    }
    e2e = {name: predict_in_child(model_file, images_arg, work / f"e2e{i}.csv", layout) for i, (name, (model_file, layout)) in enumerate(cases.items())}
    cores = os.cpu_count() or 1
    for name, r in e2e.items():
        rate = r["n"] / r["seconds"]
        cpu_ms = r["cpu_seconds"] / r["n"] * 1000
        print(
            f"  {name}: {rate:.1f} images/s ({r['n']} rows, {r['errors']} errors, {r['seconds']:.1f} s from model load to last row; "
            f"{r['wall_seconds']:.1f} s with interpreter start), batch {r['batch_size']}, {r['workers']} worker(s), "
            f"peak memory {r['peak_tree_mb']:.0f} MB (all processes); {cpu_ms:.1f} CPU-ms per image, "
            f"so {cores / cpu_ms * 1000:.0f} images/s if it had the {cores} cores to itself"
        )

    draft = draft_decoding_effect(result.int8_path if shipped == "int8" else result.onnx_path, work / ("e2e1.csv" if shipped == "int8" else "e2e0.csv"))
    print(f"\nJPEG draft decoding (the default) against full-size decoding, {shipped}, all {draft['n']:,} images "
          f"(training photos included): top-1 accuracy {draft['draft']:.4f} vs {draft['full']:.4f} "
          f"({(draft['draft'] - draft['full']) * 100:+.2f} points), same top-1 on {draft['agree']:.1%}")

    rate = e2e["fp32"]["n"] / e2e["fp32"]["seconds"]
    int8_rate = e2e["int8"]["n"] / e2e["int8"]["seconds"]
    default_rate = int8_rate if shipped == "int8" else rate
    report = result.int8 or {}
    print("\nsummary")
    print(f"  vitrina predict fp32      {rate:7.1f} images/s = {rate / naive:.1f}x the naive loop ({naive:.1f}), "
          f"{rate * gflop / peak:.0%} of the matmul peak ({peak:.0f} GFLOP/s)")
    print(f"  vitrina predict int8      {int8_rate:7.1f} images/s = {int8_rate / naive:.1f}x the naive loop")
    print(f"  ORT fp32 / eager torch    {figures['ORT fp32 b32'] / figures['eager torch fp32 b32']:.1f}x (model only, batch 32)")
    print(f"  ORT int8 / ORT fp32       {figures['ORT int8 b32'] / figures['ORT fp32 b32']:.1f}x (model only, batch 32)")
    print(f"  end to end / model only   {rate / figures['ORT fp32 b32']:.0%} (fp32, batch 32)")
    other = e2e["fp32, decoders + 2-thread model"]
    print(f"  model workers / decoders  {rate / (other['n'] / other['seconds']):.2f}x (the two pipeline layouts, fp32)")
    if report:
        print(f"  int8 accuracy change      {report['accuracy_change_points']:+.2f} points on {report['n_images']} validation images "
              f"({report['fp32_accuracy']:.4f} -> {report['int8_accuracy']:.4f})"
              + ("" if args.train else "; untrained head: run with --train for a meaningful figure"))
    targets = [
        (f"end to end >= 150 images/s ({shipped}, the default)", default_rate >= 150),
        (f"end to end >= 4x the naive loop ({shipped})", default_rate >= 4 * naive),
        ("peak memory <= 1.5 GB (fp32 and int8)", max(e2e["fp32"]["peak_tree_mb"], e2e["int8"]["peak_tree_mb"]) <= 1500),
        (f"single image p50 <= 5 ms ({shipped})", latency[shipped][0] <= 5),
        (f"single image p99 <= 10 ms ({shipped})", latency[shipped][1] <= 10),
    ]
    for name, met in targets:
        print(f"  [{'met' if met else 'MISSED'}] {name}")
    print(f"  {load_average()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N images (default: all 4,947)")
    parser.add_argument("--naive-images", type=int, default=640, help="images timed in the naive loop (default 640)")
    parser.add_argument("--train", action="store_true", help="fit the head on split 0 first (meaningful accuracy figures)")
    args = parser.parse_args()
    if not IMAGES.is_dir():
        print(f"Freiburg images not found at {IMAGES}; nothing to measure.")
        return 0
    paths = [str(p) for p in sorted(IMAGES.glob("*/*.jpg"))[: args.limit]]
    if not paths:
        print(f"No JPEG files under {IMAGES}; nothing to measure.")
        return 0
    with tempfile.TemporaryDirectory(prefix="vitrina-bench-") as work:
        measure(paths, args, Path(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
