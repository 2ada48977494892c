"""Accuracy of `vitrina train` with its default settings on the real datasets, against published figures.

Each row runs `vitrina train` in its own process (so each wall time and peak memory is its own)
and prints the figures from the run's metrics.json. Rows:

  avito       --holdout validation (selection on a split carved from train); also the accuracy
              without the validation photos that duplicate a training photo
  freiburg    official split 0 (train0 / test0), default mode; and --mode bottleneck, run twice:
              the second run finds its frozen features cached (--cold: the first starts from an
              empty cache), optionally over all five splits with --all-splits
  fashion     Fashion-MNIST test, from scratch (the default for small grayscale images)
  clothing    clothing-small test

    python bench/bench_accuracy.py [--only avito,freiburg,...] [--runs DIR] [--all-splits] [--cold] [-- extra train flags]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

PUBLISHED = {
    "avito": ("87.7% (Keras CNN, 64x64)", 0.97),
    "freiburg": ("78.9% fine-tuned CaffeNet; ~85% Inception V3 bottleneck", 0.90),
    "freiburg-bottleneck": ("~85% (Inception V3 bottleneck)", 0.83),
    "fashion": ("90% (2-conv Keras CNN)", 0.935),
    "clothing": ("~89% (ImageNet transfer learning)", 0.92),
}


def freiburg_yaml(split: int, folder: Path) -> Path:
    base = SHARED / "freiburg-groceries"
    path = folder / f"freiburg-split{split}.yaml"
    path.write_text(
        f"root: {base / 'images'}\ntrain: {base / 'splits' / f'train{split}.txt'}\n"
        f"test: {base / 'splits' / f'test{split}.txt'}\nclasses: {base / 'splits' / 'classid.txt'}\n"
    )
    return path


def run_train(name: str, data: str, out: Path, flags: list[str], cache: Path | None = None) -> dict:
    cmd = [sys.executable, "-m", "vitrina", "train", data, "--out", str(out), "--quiet", *flags]
    print(f"[{name}] {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "VITRINA_CACHE": str(cache)} if cache is not None else None
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"[{name}] training failed")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["wall_seconds"] = wall
    return metrics


def file_hash(path: str) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def accuracy_without_duplicates(run: Path, split: str) -> tuple[float, int, int]:
    """Accuracy on `split` after dropping photos whose bytes equal a training photo's."""
    splits = json.loads((run / "splits.json").read_text())["splits"]
    train_hashes = {file_hash(p) for name in ("train", "val") for p in splits.get(name, [])}
    with open(run / f"predictions_{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    kept = [r for r in rows if file_hash(r["path"]) not in train_hashes]
    accuracy = sum(int(r["correct"]) for r in kept) / max(1, len(kept))
    return accuracy, len(kept), len(rows) - len(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description="Accuracy of vitrina train on the real datasets")
    parser.add_argument("--only", default="avito,freiburg,freiburg-bottleneck,fashion,clothing")
    parser.add_argument("--runs", default=None, help="keep run folders here (default: a temporary folder)")
    parser.add_argument("--all-splits", action="store_true", help="also the bottleneck mean over freiburg's five splits")
    parser.add_argument("--cold", action="store_true", help="the bottleneck row starts from an empty feature cache")
    parser.add_argument("extra", nargs="*", help="extra flags for every `vitrina train` (after --)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the accuracy benchmark needs ../shared/datasets; nothing measured.")
        return
    runs = Path(args.runs or tempfile.mkdtemp(prefix="vitrina-bench-"))
    runs.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",")
    rows = []
    notes = []
    if "avito" in wanted:
        m = run_train("avito", str(SHARED / "avito"), runs / "avito", ["--holdout", "validation", *args.extra])
        acc, kept, dropped = accuracy_without_duplicates(runs / "avito", m["split"])
        notes.append(f"avito: accuracy without the {dropped} validation photos that duplicate a training photo: {acc:.4f} ({kept} photos)")
        rows.append(("avito", m))
    if "freiburg" in wanted:
        rows.append(("freiburg", run_train("freiburg", str(freiburg_yaml(0, runs)), runs / "freiburg", args.extra)))
    if "freiburg-bottleneck" in wanted:
        cache = Path(tempfile.mkdtemp(prefix="vitrina-cold-cache-")) if args.cold else None
        bottleneck = ["--mode", "bottleneck", *args.extra]
        rows.append(("freiburg-bottleneck", run_train("freiburg-bottleneck", str(freiburg_yaml(0, runs)), runs / "freiburg-bn0", bottleneck, cache)))
        again = run_train("freiburg-bottleneck (cached)", str(freiburg_yaml(0, runs)), runs / "freiburg-bn0-cached", bottleneck, cache)
        notes.append(f"freiburg bottleneck, second run with its features cached: train {again['train_seconds']:.1f} s, "
                     f"wall {again['wall_seconds']:.1f} s, accuracy {again['accuracy']:.4f}"
                     + (" (the first run started from an empty cache)" if args.cold else ""))
        if args.all_splits:
            accs = [rows[-1][1]["accuracy"]]
            for split in range(1, 5):
                m = run_train(f"freiburg-bottleneck-{split}", str(freiburg_yaml(split, runs)), runs / f"freiburg-bn{split}", bottleneck, cache)
                accs.append(m["accuracy"])
            notes.append(f"freiburg bottleneck, mean over the five official splits: {sum(accs) / 5:.4f} ({', '.join(f'{a:.4f}' for a in accs)})")
    if "fashion" in wanted:
        rows.append(("fashion", run_train("fashion", str(REPO / "examples" / "fashion-mnist.yaml"), runs / "fashion", args.extra)))
    if "clothing" in wanted:
        rows.append(("clothing", run_train("clothing", str(SHARED / "clothing-small"), runs / "clothing", args.extra)))

    print()
    print("| dataset | split | model (mode) | published | target | vitrina | met | train s | wall s | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, m in rows:
        published, target = PUBLISHED[name]
        print(
            f"| {name} | {m['split']} ({m['n_images']}) | {m['model']} ({m['mode']}) | {published} | {target:.1%} | "
            f"{m['accuracy']:.2%} | {'yes' if m['accuracy'] >= target else 'NO'} | {m['train_seconds']:.0f} | "
            f"{m['wall_seconds']:.0f} | {m['peak_rss_mb']:.0f} |"
        )
    for note in notes:
        print(note)
    print(f"run folders: {runs}")


if __name__ == "__main__":
    main()
