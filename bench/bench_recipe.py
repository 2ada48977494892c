"""Accuracy that holds: `vitrina train DATA` with no flags against a plain EfficientNet-Lite2
fine-tune, on every dataset, each run in its own process with a cold cache, one at a time.

Units (each a run; finished ones are reused, so the table builds up over several sittings):
  freiburg   the five official splits (mean), test split
  avito      --holdout validation, seeds 0, 1, 2 (mean)
  clothing   test split, seeds 0, 1, 2 (mean)
  fashion    test split (from scratch; no plain recipe)

The plain recipe: efficientnet_lite2, every block fine-tuned at 260 px, 6 epochs, bf16, no
selection (patience 0, no neighbour vote, no mirror average), trained on every photo but the
reported split (validation is 1% of train, the least vitrina takes). Prints per dataset the mean
accuracy with its binomial standard error, train seconds (and the plan's estimate), peak memory,
and the target. For freiburg also the accuracy on test photos with no near copy in train.

    python bench/bench_recipe.py [--only freiburg,avito,clothing,fashion] [--variants default,plain] [--runs DIR]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TARGETS = {"freiburg": 0.92, "avito": 0.977, "clothing": 0.955, "fashion": 0.945}
PLAIN = ["--model", "efficientnet_lite2", "--mode", "finetune", "--epochs", "6", "--val-fraction", "0.01",
         "--set", "train.unfreeze_blocks=-1", "--set", "model.input_size=260", "--set", "train.precision=bf16",
         "--set", "train.patience=0", "--set", "train.neighbour_vote=false", "--set", "train.flip_average=false",
         "--set", "train.budget_minutes=null"]


def freiburg_yaml(split: int, folder: Path) -> Path:
    base = SHARED / "freiburg-groceries"
    path = folder / f"freiburg-split{split}.yaml"
    path.write_text(f"root: {base / 'images'}\ntrain: {base / 'splits' / f'train{split}.txt'}\n"
                    f"test: {base / 'splits' / f'test{split}.txt'}\nclasses: {base / 'splits' / 'classid.txt'}\n")
    return path


def units(name: str, runs: Path) -> list[tuple[str, str, list[str]]]:
    """(unit name, data, flags) of a dataset's runs."""
    if name == "freiburg":
        return [(f"split{k}", str(freiburg_yaml(k, runs)), []) for k in range(5)]
    if name == "avito":
        return [(f"seed{s}", str(SHARED / "avito"), ["--holdout", "validation", "--seed", str(s), "--split-seed", str(s)]) for s in range(3)]
    if name == "clothing":
        return [(f"seed{s}", str(SHARED / "clothing-small"), ["--seed", str(s), "--split-seed", str(s)]) for s in range(3)]
    if name == "fashion":
        return [("test", str(REPO / "examples" / "fashion-mnist.yaml"), [])]
    raise SystemExit(f"unknown dataset {name!r}")


def train(out: Path, data: str, flags: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        cache = Path(tempfile.mkdtemp(prefix="vitrina-cold-"))  # a cold cache for every run
        cmd = [sys.executable, "-m", "vitrina", "train", data, "--out", str(out), "--quiet", *flags]
        print(f"  {' '.join(cmd[3:])}", flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "VITRINA_CACHE": str(cache)}, cwd=REPO)
    metrics = json.loads((out / "metrics.json").read_text())
    plan = out / "plan.json"
    metrics["estimated_s"] = json.loads(plan.read_text())["estimated_s"] if plan.is_file() else float("nan")
    return metrics


def standard_error(accuracies: list[float], counts: list[int]) -> float:
    """Binomial standard error of the mean accuracy."""
    return math.sqrt(sum(a * (1 - a) / n for a, n in zip(accuracies, counts))) / len(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="freiburg,avito,clothing,fashion")
    parser.add_argument("--variants", default="default,plain")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-recipe")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: this benchmark needs ../shared/datasets; nothing measured.")
        return
    args.runs.mkdir(parents=True, exist_ok=True)
    table = []
    for name in args.only.split(","):
        for variant in args.variants.split(","):
            if variant == "plain" and name == "fashion":
                continue
            print(f"{name} / {variant}", flush=True)
            found = [train(args.runs / name / variant / unit, data, PLAIN + flags if variant == "plain" else flags)
                     for unit, data, flags in units(name, args.runs)]
            accs, counts = [m["accuracy"] for m in found], [m["n_images"] for m in found]
            table.append((name, variant, sum(accs) / len(accs), standard_error(accs, counts), accs, found))
    print("\n| dataset | variant | accuracy (mean ± SE) | per run | target | train s (max) | plan's estimate s | peak MB (max) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, variant, mean, se, accs, found in table:
        print(f"| {name} | {variant} | {mean:.2%} ± {se:.2%} | {', '.join(f'{a:.2%}' for a in accs)} | {TARGETS[name]:.1%} | "
              f"{max(m['train_seconds'] for m in found):.0f} | {max(m['estimated_s'] for m in found):.0f} | "
              f"{max(m['peak_rss_mb'] for m in found):.0f} |")


if __name__ == "__main__":
    main()
