"""`vitrina compare` on the real datasets: leaderboards, wall time, and agreement with `vitrina evaluate`.

  freiburg     official split 0 (train0 / test0, validation carved from train0), four configurations:
               cnn3 from scratch at 64 px, efficientnet_lite0 bottleneck with a linear head on
               centre-crop features, bottleneck as recommended (MLP head, one augmented feature
               copy), a 3-epoch fine-tune. Target: end to end in at most 45 minutes on 2 cores.
  avito-small  the PC-vs-bag reference's small-data setting: 40 training photos per class (a seeded
               sample of avito train) of laptop and phone, 10 more per class for validation, and the
               whole avito validation folder as the test split; the 1/2/3-block scratch CNNs against
               efficientnet_lite0 bottleneck and fine-tune. Expected: transfer learning far ahead.

For each leaderboard it prints the Markdown table and the total wall time, then evaluates every run
again with `vitrina evaluate` and prints whether the accuracies agree.

    python bench/bench_compare.py [--only freiburg,avito-small] [--runs DIR] [--limit N]

``--limit N`` keeps at most N photos per class in every split and trains 2 epochs per configuration:
a quick check that the benchmark runs, not a measurement.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"

# Within the 45-minute budget on 2 cores: cnn3 at 64 px (at its default 128 px its 20 epochs alone
# took 28 minutes) and a 3-epoch fine-tune (the default 8 epochs take about 25 minutes).
FREIBURG_CONFIGS = {
    "cnn3-scratch-64px": {"train.mode": "scratch", "model.name": "cnn3", "model.input_size": 64},
    "lite0-bottleneck-linear": {"train.mode": "bottleneck", "model.name": "efficientnet_lite0", "model.head": "linear", "train.feature_copies": 0},
    "lite0-bottleneck": {"train.mode": "bottleneck", "model.name": "efficientnet_lite0"},  # MLP head, one augmented copy
    "lite0-finetune-3ep": {"train.mode": "finetune", "model.name": "efficientnet_lite0", "train.epochs": 3},
}
AVITO_CONFIGS = {
    "cnn1-scratch": {"train.mode": "scratch", "model.name": "cnn1"},
    "cnn2-scratch": {"train.mode": "scratch", "model.name": "cnn2"},
    "cnn3-scratch": {"train.mode": "scratch", "model.name": "cnn3"},
    "lite0-bottleneck": {"train.mode": "bottleneck", "model.name": "efficientnet_lite0"},
    "lite0-finetune": {"train.mode": "finetune", "model.name": "efficientnet_lite0"},
}


def per_class_sample(lines: list[tuple[str, str]], limit: int | None, seed: int) -> list[tuple[str, str]]:
    """At most ``limit`` (path, label) pairs per label, a seeded sample; all of them without a limit."""
    if limit is None:
        return lines
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in lines:
        by_label[line[1]].append(line)
    rng = random.Random(seed)
    return [pair for label in sorted(by_label) for pair in rng.sample(by_label[label], min(limit, len(by_label[label])))]


def write_list(path: Path, lines: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{p} {label}\n" for p, label in lines))
    return path


def freiburg_data(folder: Path, limit: int | None) -> Path:
    base = SHARED / "freiburg-groceries"
    splits = {}
    for split in ("train", "test"):
        lines = [tuple(line.split()) for line in (base / "splits" / f"{split}0.txt").read_text().splitlines() if line.strip()]
        splits[split] = write_list(folder / f"freiburg-{split}0.txt", per_class_sample(lines, limit, seed=0))
    spec = {"root": str(base / "images"), "train": str(splits["train"]), "test": str(splits["test"]), "classes": str(base / "splits" / "classid.txt")}
    path = folder / "freiburg-split0.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def avito_small_data(folder: Path, limit: int | None, per_class: int = 40, val_per_class: int = 10) -> Path:
    base = SHARED / "avito"
    rng = random.Random(0)
    train, val = [], []
    for label in ("laptop", "phone"):
        photos = sorted(f"train/{label}/{p.name}" for p in (base / "train" / label).iterdir())
        chosen = rng.sample(photos, per_class + val_per_class)
        train += [(p, label) for p in chosen[:per_class]]
        val += [(p, label) for p in chosen[per_class:]]
    test = [(f"validation/{label}/{p.name}", label) for label in ("laptop", "phone") for p in sorted((base / "validation" / label).iterdir())]
    spec = {
        "root": str(base),
        "train": str(write_list(folder / "avito-small-train.txt", per_class_sample(train, limit, 0))),
        "val": str(write_list(folder / "avito-small-val.txt", per_class_sample(val, limit, 0))),
        "test": str(write_list(folder / "avito-small-test.txt", per_class_sample(test, limit, 0))),
    }
    path = folder / "avito-small.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def vitrina(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "vitrina", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"vitrina {args[0]} failed")
    return proc


def run_compare(name: str, data: Path, configs: dict[str, dict], out: Path, limit: int | None) -> None:
    spec = out.parent / f"{name}-compare.yaml"
    spec.write_text(yaml.safe_dump({"configs": configs, "common": {"train.epochs": 2} if limit else {}}))
    print(f"[{name}] vitrina compare {data} {spec} --out {out}", flush=True)
    started = time.perf_counter()
    vitrina("compare", str(data), str(spec), "--out", str(out), "--quiet")
    wall = time.perf_counter() - started
    print((out / "leaderboard.md").read_text())
    print(f"[{name}] total wall time {wall / 60:.1f} min for {len(configs)} configurations")
    board = json.loads((out / "compare.json").read_text())
    for row in board["rows"]:
        metrics_path = Path(row["run"]) / "eval-bench" / "metrics.json"
        vitrina("evaluate", row["run"], str(data), "--split", board["split"], "--out", str(metrics_path.parent), "--quiet")
        evaluated = json.loads(metrics_path.read_text())["accuracy"]
        verdict = "agrees" if abs(evaluated - row["accuracy"]) < 1e-9 else "DIFFERS"
        print(f"[{name}] {row['name']}: leaderboard {row['accuracy']:.4f}, vitrina evaluate {evaluated:.4f}: {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description="vitrina compare on the real datasets")
    parser.add_argument("--only", default="freiburg,avito-small", help="comma-separated: freiburg, avito-small")
    parser.add_argument("--runs", default=None, help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="at most N photos per class per split, 2 epochs (a quick check)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: the comparison benchmark needs ../shared/datasets; nothing measured.")
        return
    runs = Path(args.runs or tempfile.mkdtemp(prefix="vitrina-bench-compare-"))
    runs.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",")
    if "freiburg" in wanted:
        run_compare("freiburg", freiburg_data(runs, args.limit), FREIBURG_CONFIGS, runs / "freiburg", args.limit)
    if "avito-small" in wanted:
        run_compare("avito-small", avito_small_data(runs, args.limit), AVITO_CONFIGS, runs / "avito-small", args.limit)
    print(f"outputs: {runs}")


if __name__ == "__main__":
    main()
