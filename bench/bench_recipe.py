"""Accuracy that holds: `vitrina train DATA` with no flags against a plain EfficientNet-Lite2
fine-tune, on every dataset, each run in its own process with a cold cache, one at a time.

Units (each a run; finished ones are reused, so the table builds up over several sittings):
  freiburg   the five official splits (mean), test split
  avito      --holdout validation, seeds 0, 1, 2 (mean)
  clothing   test split, seeds 0, 1, 2 (mean)
  fashion    test split, seeds 0, 1, 2 (mean; from scratch, no plain recipe)
  NAME@PX    a photo dataset's units with every photo shrunk to at most PX on its long side
             (``clothing@224``: the same photos and splits, as small as freiburg's), written once
             under ``--runs``: whether a change's effect follows the photos' size or the dataset

The plain recipe: efficientnet_lite2, every block fine-tuned at 260 px, 6 epochs, bf16, no
selection (patience 0, no neighbour vote, no mirror average), trained on every photo but the
reported split (validation is 1% of train, the least vitrina takes). Prints per dataset the mean
accuracy with its binomial standard error, train seconds (and the plan's estimate), peak memory,
and the target; for freiburg also the accuracy on the test photos with no near copy in train
(bursts straddle the official splits; the carve's grouping rule, across train and test); and
for every row of full-length runs (not ``--screen-epochs``) the images/s of `vitrina predict`
over the 4,947 freiburg photos with the model `vitrina export RUN` writes (first unit of each
row), so a candidate with another network or input size shows what it costs to predict.

Candidate changes (``--variants default,no-ema,llrd,trivial,mix,size224,all-blocks,lite2``) are the default plus one setting
each; for every candidate the benchmark prints its accuracy delta against the default on each
dataset with the binomial standard error of the difference, and the rule that decides a
default: kept only if it helps on average and hurts no dataset by more than one standard error.
``--screen-epochs N`` screens cheaply: the default and the candidates train N epochs with no
budget (runs kept apart from the full ones); ``--units split0,seed0`` runs only those units.
Candidates joined by ``+`` (``trivial+mix``) are screened together as one change.
A dataset's units answer the same test photos (avito's, clothing-small's and Fashion-MNIST's seeds
change the training, not the test split), so the standard error of a mean over units, which takes
each unit's photos as a sample of their own, understates the photos' sampling by up to sqrt(3).

    python bench/bench_recipe.py [--only freiburg,avito,clothing,fashion] [--variants default,plain]
                                 [--runs DIR] [--screen-epochs N] [--units U,...]
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_carve_gap import test_photos_without_near_copy

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TARGETS = {"freiburg": 0.92, "avito": 0.977, "clothing": 0.955, "fashion": 0.945}
PLAIN = ["--model", "efficientnet_lite2", "--mode", "finetune", "--epochs", "6", "--val-fraction", "0.01",
         "--set", "train.unfreeze_blocks=-1", "--set", "model.input_size=260", "--set", "train.precision=bf16",
         "--set", "train.patience=0", "--set", "train.neighbour_vote=false", "--set", "train.flip_average=false",
         "--set", "train.budget_minutes=null"]
CANDIDATES = {
    "no-ema": ["--set", "train.ema_decay=0"],  # the weight average is a default: this checks it still pays
    "ema-long": ["--set", "train.ema_decay=0.9995"],  # an average over about 2,000 steps where the default's spans about 500
    "llrd": ["--set", "train.layer_decay=0.7"],
    "trivial": ["--set", "augment.trivialaugment=true"],
    "mix": ["--set", "augment.mixup=0.2", "--set", "augment.cutmix=1.0"],
    "shift": ["--set", "augment.shift=0.09"],  # small grayscale data (photos shift 0.08 already): up to 2.5 px at 28 px, whole pixels
    "smooth": ["--set", "train.label_smoothing=0.1"],  # photos have it already: it changes small grayscale data alone
    "size224": ["--set", "model.input_size=224"],  # the backbone's own size: cheaper to predict, see docs/benchmarks.md
    "size320": ["--set", "model.input_size=320"],  # a larger input than the default's 288: about 1.23x the pixels
    "blocks4": ["--set", "train.unfreeze_blocks=4"],  # one block more than the default's 3
    "all-blocks": ["--set", "train.unfreeze_blocks=-1"],  # every block in bf16 where the CPU has it: more of the budget
    "lite2": ["--model", "efficientnet_lite2", "--set", "model.input_size=260"],  # a larger backbone at its own size
    "lite1": ["--model", "efficientnet_lite1", "--set", "model.input_size=288"],  # the middle backbone at the default's 288 px (its own 240 would give 320)
    "head-drop": ["--set", "model.dropout=0.5"],  # dropout before the classifier at 0.5 where the default has 0.2
    "droppath": ["--set", "model.drop_path=0.2"],  # stochastic depth in the residual blocks that train (timm's usual 0.2)
    "refit": ["--set", "train.refit=true"],  # trained again on train + validation where the budget has room
    "refit-60": ["--set", "train.refit=true", "--budget", "60"],  # the same with room for it: what the refit gains
    "wd05": ["--set", "train.weight_decay=0.05"],  # AdamW's decoupled decay at the usual fine-tuning figure (default 1e-4)
    "body-lr": ["--set", "train.body_lr_scale=0.3"],  # the trained blocks at 0.3x the head's rate (default 0.1x)
    "bn-train": ["--set", "train.freeze_bn=no"],  # every BatchNorm's statistics follow the new photos (no ONNX Runtime prefix: slower epochs)
    "reseed": ["--seed", "100"],  # the default from another training seed, the carve kept: two of one network averaged (bench_blend)
    "tail50": ["--set", "train.refit=true", "--set", "train.refit_tail=0.5", "--budget", "60"],  # the chosen network goes on through its schedule's last half on every photo
    "tail25": ["--set", "train.refit=true", "--set", "train.refit_tail=0.25", "--budget", "60"],  # the same through the last quarter: about half the tail's cost
    "val5": ["--val-fraction", "0.05"],  # a carve of 5% where the default takes 15%: 3,000 validation photos of Fashion-MNIST's 60,000
    "e5": ["--epochs", "5"],  # 5 epochs where the default plans 8: two such networks fit one 30-minute budget here (lite1+e5 the second)
}
PRETRAINED_ONLY = {"plain", "llrd", "size224", "size320", "blocks4", "all-blocks", "lite2", "lite1", "droppath", "wd05", "body-lr", "bn-train", "e5"}  # not for a network trained from scratch


def variant_flags(variant: str, screen_epochs: int | None) -> list[str]:
    if variant == "plain":
        return PLAIN
    parts = [] if variant == "default" else variant.split("+")
    unknown = [part for part in parts if part not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown variant {variant!r} (default, plain, {', '.join(CANDIDATES)}, or candidates joined by +)")
    screen = ["--epochs", str(screen_epochs), "--set", "train.budget_minutes=null"] if screen_epochs else []
    return screen + [flag for part in parts for flag in CANDIDATES[part]]


def is_candidate(variant: str) -> bool:
    return variant not in ("default", "plain")


def freiburg_yaml(split: int, folder: Path) -> Path:
    base = SHARED / "freiburg-groceries"
    path = folder / f"freiburg-split{split}.yaml"
    path.write_text(f"root: {base / 'images'}\ntrain: {base / 'splits' / f'train{split}.txt'}\n"
                    f"test: {base / 'splits' / f'test{split}.txt'}\nclasses: {base / 'splits' / 'classid.txt'}\n")
    return path


def units(name: str, runs: Path) -> list[tuple[str, str, list[str]]]:
    """(unit name, data, flags) of a dataset's runs."""
    if "@" in name:
        base, _, side = name.partition("@")
        if base not in ("avito", "clothing"):
            raise SystemExit(f"{name!r}: only avito and clothing can be shrunk (freiburg's splits are list files)")
        return [(unit, shrunk_copy(Path(data), int(side), runs), flags) for unit, data, flags in units(base, runs)]
    if name == "freiburg":
        return [(f"split{k}", str(freiburg_yaml(k, runs)), []) for k in range(5)]
    if name == "avito":
        return [(f"seed{s}", str(SHARED / "avito"), ["--holdout", "validation", "--seed", str(s), "--split-seed", str(s)]) for s in range(3)]
    if name == "clothing":
        return [(f"seed{s}", str(SHARED / "clothing-small"), ["--seed", str(s), "--split-seed", str(s)]) for s in range(3)]
    if name == "fashion":
        return [(f"seed{s}", str(REPO / "examples" / "fashion-mnist.yaml"), ["--seed", str(s), "--split-seed", str(s)]) for s in range(3)]
    raise SystemExit(f"unknown dataset {name!r}")


def shrunk_copy(data: Path, side: int, runs: Path) -> str:
    """``data`` with every photo at most ``side`` px on its long side (Lanczos, JPEG quality 95),
    other files copied; written once under ``runs/data``."""
    from PIL import Image  # only this option needs it

    target = runs / "data" / f"{data.name}@{side}"
    if not target.is_dir():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for path in sorted(p for p in data.rglob("*") if p.is_file()):
            out = partial / path.relative_to(data)
            out.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                shutil.copyfile(path, out)
                continue
            try:
                with Image.open(path) as image:
                    image.load()
                    image.thumbnail((side, side), Image.Resampling.LANCZOS)
                    image.save(out, **({"quality": 95} if path.suffix.lower() != ".png" else {}))
            except OSError:  # a damaged photo stays as it was: training skips it the same way
                shutil.copyfile(path, out)
        partial.rename(target)
    return str(target)


def train(out: Path, data: str, flags: list[str]) -> dict:
    if not (out / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "vitrina", "train", data, "--out", str(out), "--quiet", *flags]
        print(f"  {' '.join(cmd[3:])}", flush=True)
        # A cold cache for every run, removed after it: a freiburg run's decoded photos take about 1.5 GB.
        with tempfile.TemporaryDirectory(prefix="vitrina-cold-") as cache:
            subprocess.run(cmd, check=True, env={**os.environ, "VITRINA_CACHE": cache}, cwd=REPO)
    metrics = json.loads((out / "metrics.json").read_text())
    plan = out / "plan.json"
    metrics["estimated_s"] = json.loads(plan.read_text())["estimated_s"] if plan.is_file() else float("nan")
    metrics["run"] = out
    return metrics


def predict_speed(run: Path) -> float:
    """Images/s of ``vitrina predict`` over the freiburg photos with the default export, end to end."""
    vitrina = [sys.executable, "-m", "vitrina"]
    if not (run / "model.onnx").is_file():  # exported by an earlier sitting: the run has not changed since
        subprocess.run([*vitrina, "export", str(run)], check=True, capture_output=True, cwd=REPO)
    with tempfile.TemporaryDirectory(prefix="vitrina-recipe-") as folder:
        out = Path(folder) / "rows.csv"
        started = time.perf_counter()
        subprocess.run([*vitrina, "predict", str(run), str(SHARED / "freiburg-groceries" / "images"), "--out", str(out), "--quiet"],
                       check=True, capture_output=True, cwd=REPO)
        seconds = time.perf_counter() - started
        return (sum(1 for _ in open(out)) - 1) / seconds


def accuracy_without_near_copy(runs: list[Path], unique: dict[int, set[str]]) -> tuple[float, int]:
    """Mean over freiburg's splits of the accuracy on the test photos with no near copy in train,
    and how many photos that is (summed over the splits)."""
    accuracies, photos = [], 0
    for run in runs:
        split = int(run.name.removeprefix("split"))
        correct = correct_by_photo(run)
        kept = [correct[p] for p in unique[split] if p in correct]
        accuracies.append(sum(kept) / len(kept))
        photos += len(kept)
    return sum(accuracies) / len(accuracies), photos


def standard_error(accuracies: list[float], counts: list[int]) -> float:
    """Binomial standard error of the mean accuracy."""
    return math.sqrt(sum(a * (1 - a) / n for a, n in zip(accuracies, counts))) / len(accuracies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="freiburg,avito,clothing,fashion")
    parser.add_argument("--variants", default="default,plain")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "bench-recipe")
    parser.add_argument("--screen-epochs", type=int, default=None)
    parser.add_argument("--units", default=None, help="only these units, e.g. split0,seed0")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"{SHARED} not found: this benchmark needs ../shared/datasets; nothing measured.")
        return
    args.runs.mkdir(parents=True, exist_ok=True)
    wanted = set(args.units.split(",")) if args.units else None
    screening = bool(args.screen_epochs or args.units)
    unique: dict[int, set[str]] = {}
    table = []
    for name in args.only.split(","):
        for variant in args.variants.split(","):
            if name == "fashion" and PRETRAINED_ONLY.intersection(variant.split("+")):
                continue
            folder = variant if variant == "plain" or not args.screen_epochs else f"{variant}-e{args.screen_epochs}"
            print(f"{name} / {folder}", flush=True)
            chosen = [(u, d, f) for u, d, f in units(name, args.runs) if wanted is None or u in wanted]
            # The candidate's flags come last, so a candidate may change what a unit sets (reseed).
            found = [train(args.runs / name / folder / unit, data, flags + variant_flags(variant, args.screen_epochs))
                     for unit, data, flags in chosen]
            for (unit, _, _), m in zip(chosen, found):
                if "before_refit" in m:  # the same run's network before its refit: a paired comparison
                    print(f"  {unit}: {m['before_refit']['accuracy']:.2%} before the refit, {m['accuracy']:.2%} after "
                          f"({m['n_images']} photos)", flush=True)
            if found:
                accs, counts = [m["accuracy"] for m in found], [m["n_images"] for m in found]
                extra = describe_row(name, variant, [m["run"] for m in found], bool(args.screen_epochs), unique)
                table.append((name, variant, sum(accs) / len(accs), standard_error(accs, counts), accs, found, extra))
    print_table(table)
    print_deltas(table, screening)


def describe_row(name: str, variant: str, runs: list[Path], short_runs: bool, unique: dict[int, set[str]]) -> dict:
    """A row's figures beyond accuracy: freiburg's test photos with no near copy in train, and
    the exported model's prediction speed (runs of the full length)."""
    extra = {"no_near_copy": "—", "images_per_s": float("nan")}
    if name == "freiburg":
        for run in runs:
            split = int(run.name.removeprefix("split"))
            if split not in unique:
                found = test_photos_without_near_copy(str(freiburg_yaml(split, run.parent.parent.parent)))
                unique[split] = {os.path.realpath(path) for path in found}  # matched by file, as correct_by_photo keys
        accuracy, photos = accuracy_without_near_copy(runs, unique)
        extra["no_near_copy"] = f"{accuracy:.2%} ({photos} photos)"
    if not short_runs:
        extra["images_per_s"] = predict_speed(runs[0])
    return extra


def print_table(table: list) -> None:
    print("\n| dataset | variant | accuracy (mean ± SE) | per run | target | test, no near copy in train | train s (max) "
          "| plan's estimate s | peak MB (max) | predict images/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, variant, mean, se, accs, found, extra in table:
        print(f"| {name} | {variant} | {mean:.2%} ± {se:.2%} | {', '.join(f'{a:.2%}' for a in accs)} | {TARGETS[name.partition('@')[0]]:.1%} | "
              f"{extra['no_near_copy']} | {max(m['train_seconds'] for m in found):.0f} | "
              f"{max(m['estimated_s'] for m in found):.0f} | {max(m['peak_rss_mb'] for m in found):.0f} | "
              f"{extra['images_per_s']:.1f} |")


def correct_by_photo(run: Path) -> dict[str, int]:
    """Each reported photo's correctness (1 or 0), from the run's predictions on its reported split."""
    split = json.loads((run / "metrics.json").read_text())["split"]
    with open(run / f"predictions_{split}.csv", newline="") as fh:
        return {os.path.realpath(row["path"]): int(row["correct"]) for row in csv.DictReader(fh)}  # a file by any route


def paired_delta(candidate: list[Path], default: list[Path]) -> tuple[float, float, int]:
    """Mean accuracy difference over the units, its standard error, paired photo by photo (both
    variants answer the same photos, so their errors are not independent), and the net photos."""
    import numpy as np  # here, not at the top: the process that launches and times the runs stays free of torch
    from bench_vote_bank import paired_change

    deltas, variances, net = [], [], 0
    for a, b in zip(candidate, default):
        ca, cb = correct_by_photo(a), correct_by_photo(b)
        shared = sorted(ca.keys() & cb.keys())
        gained, lost, se = paired_change(np.array([cb[p] for p in shared], bool), np.array([ca[p] for p in shared], bool))
        deltas.append((gained - lost) / len(shared))
        variances.append(se**2)
        net += gained - lost
    return sum(deltas) / len(deltas), math.sqrt(sum(variances)) / len(deltas), net


def print_deltas(table: list, screening: bool) -> None:
    """Each candidate against the default, per dataset (paired standard errors), and the rule's verdict."""
    default = {name: found for name, variant, _, _, _, found, _ in table if variant == "default"}
    for candidate in dict.fromkeys(v for _, v, *_ in table if is_candidate(v)):
        rows = []
        for name, variant, _, _, _, found, _ in table:
            if variant != candidate or name not in default or (candidate in ("llrd", "size224") and name == "fashion"):
                continue  # layer-wise rates and transfer input sizes apply to pretrained backbones only
            rows.append((name, *paired_delta([m["run"] for m in found], [m["run"] for m in default[name]])))
        if not rows:
            continue
        average = sum(d for _, d, _, _ in rows) / len(rows)
        hurt = [name for name, d, se, _ in rows if d < -se * (1 + 1e-9)]  # exactly one SE (one photo of n) is not more
        verdict = "keep" if average > 0 and not hurt else "do not keep"
        complete = not screening and len(rows) == (3 if candidate in ("llrd", "size224") else 4)
        cells = ", ".join(f"{name} {d:+.2%} (SE {se:.2%}, {net:+d} photos)" for name, d, se, net in rows)
        print(f"{candidate}: {cells}; mean {average:+.2%}; hurts by more than one SE: {', '.join(hurt) or 'none'} -> "
              + (verdict if complete else f"screen: {verdict} (a default is decided on full runs of every dataset)"))


if __name__ == "__main__":
    main()
