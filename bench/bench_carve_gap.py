"""Leak-free validation: how far validation accuracy is from test accuracy with a random carve and
with the near-copy group carve (the default).

Each row is `vitrina train DATA` with the defaults, in its own process, once with
`--set data.val_carve=random` and once with the default group carve; the carved validation split
chooses the epoch, the thresholds and the extras, so a validation split that reads higher than
new photos misleads all of them. Prints, per carve: validation accuracy, test accuracy, the gap,
the groups the carve found, and test accuracy on the test photos with no near copy in train (the
same grouping rule, across train and test).

    python bench/bench_carve_gap.py [--data examples/freiburg-split0.yaml] [--runs DIR] [-- extra train flags]
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def train(data: str, out: Path, carve: str, extra: list[str]) -> tuple[dict, float]:
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text()), float("nan")
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "vitrina", "train", data, "--out", str(out), "--quiet", "--set", f"data.val_carve={carve}", *extra]
    subprocess.run(cmd, check=True, cwd=REPO)
    return json.loads((out / "metrics.json").read_text()), time.perf_counter() - started


def test_photos_without_near_copy(data: str) -> set[str]:
    """Test photos with no near copy among the training photos (the carve's grouping rule)."""
    from vitrina.config import Config
    from vitrina.data.samples import Dataset
    from vitrina.data.sources import load_dataset
    from vitrina.training.carve import near_copy_groups

    config = Config()
    dataset = load_dataset(data, config.data, carve_val=False)
    train, test = dataset.splits["train"], dataset.splits["test"]
    both = Dataset(dataset.classes, {"train": train + test}, dataset.source)
    groups, _ = near_copy_groups(train + test, both, config, log=lambda _: None)
    train_groups = set(groups[: len(train)].tolist())
    return {s.path for s, g in zip(test, groups[len(train):].tolist()) if g not in train_groups}


def accuracy_on(run: Path, paths: set[str]) -> tuple[float, int]:
    with open(run / "predictions_test.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["path"] in paths]
    return float(np.mean([r["label"] == r["predicted"] for r in rows])), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="examples/freiburg-split0.yaml")
    parser.add_argument("--runs", type=Path, default=None)
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    runs = args.runs or Path(tempfile.mkdtemp(prefix="carve-gap-"))
    unique = test_photos_without_near_copy(args.data)
    print(f"data {args.data}; runs in {runs}; {len(unique)} test photos have no near copy in train")
    print(f"{'carve':<8} {'val acc':>8} {'test acc':>9} {'gap':>7} {'test, no near copy':>19} {'groups':>7} {'in groups':>10} {'train s':>8}")
    gaps = {}
    for carve in ("random", "group"):
        out = runs / carve
        metrics, _ = train(args.data, out, carve, extra)
        carved = json.loads((out / "splits.json").read_text())["carved"].get("val", {})
        val, test = metrics["splits"]["val"]["accuracy"], metrics["splits"]["test"]["accuracy"]
        unique_acc, n_unique = accuracy_on(out, unique)
        gaps[carve] = val - test
        print(f"{carve:<8} {val:>8.2%} {test:>9.2%} {100 * (val - test):>+6.2f}p {unique_acc:>12.2%} ({n_unique}) "
              f"{carved.get('groups', '-'):>7} {carved.get('photos_in_groups', '-'):>10} {metrics['train_seconds']:>8.0f}")
    ratio = abs(gaps["group"]) / abs(gaps["random"]) if gaps["random"] else float("nan")
    print(f"|gap| group / random: {ratio:.2f} (the group carve's gap must be at most half the random carve's)")


if __name__ == "__main__":
    main()
