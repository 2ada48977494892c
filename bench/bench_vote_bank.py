"""The neighbour vote's bank with and without the validation photos, on finished runs.

Training chooses the vote's k, temperature and weight on the validation photos with the
training photos as its bank, then puts the validation photos into the bank too
(``train.vote_includes_validation``). For each run folder given (the default's runs of
``bench/bench_recipe.py``), this rebuilds both banks from the run's own network and prints the
reported split's accuracy with each: the network alone, the vote over the training photos, the
vote over training and validation photos, and the difference in photos. The network and the
vote's settings are the run's, so the difference is the bank's alone. Accuracy here is the
network (its body in ONNX Runtime fp32, as training runs it on a CPU, its head in PyTorch)
without the mirror average (as `vitrina train` reports it when the run kept no mirror average).

    python bench/bench_vote_bank.py RUN [RUN ...]
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from vitrina import config as config_lib
from vitrina.data.cache import decode_samples, default_cache_dir
from vitrina.data.sources import load_dataset
from vitrina.models.checkpoint import load_model
from vitrina.models.neighbours import NeighbourVote
from vitrina.models.unknown import MAX_BANK, bank_rows, penultimate_features


def split_images(run: Path, preprocess, classes: list[str]) -> tuple[str, dict, dict, Path]:  # type: ignore[no-untyped-def]
    """(reported split, decoded uint8 images by split, labels by split, the cache folder) of the
    run's train, val and reported photos."""
    listed = json.loads((run / "splits.json").read_text())
    cfg = config_lib.resolve(run / "config.yaml")
    pool = {s.path: s for part in load_dataset(listed["source"], cfg.data, carve_val=False).splits.values() for s in part}
    others = [k for k in listed["splits"] if k not in ("train", "val")]
    if not others:
        raise SystemExit(f"{run}: no split beyond train and val to measure on")
    reported = "test" if "test" in others else others[0]
    cache = default_cache_dir(cfg.train.cache_dir)
    images, labels = {}, {}
    for split in ("train", "val", reported):
        samples = [pool[p] for p in listed["splits"][split]]
        decoded = decode_samples(samples, preprocess, cache, progress=False)
        images[split] = decoded.images
        labels[split] = np.array([classes.index(samples[i].label) for i in decoded.index])
    return reported, images, labels, cache


def split_features(run: Path, model: torch.nn.Module, preprocess, classes: list[str]) -> tuple[str, dict, dict]:  # type: ignore[no-untyped-def]
    """(reported split, features by split, labels by split) of the run's train, val and reported photos."""
    reported, images, labels, cache = split_images(run, preprocess, classes)
    features = {split: penultimate_features(model, part, preprocess, torch.device("cpu"), "fp32", cache) for split, part in images.items()}
    return reported, features, labels


def votes(features: dict, labels: dict, saved: NeighbourVote, seed: int) -> tuple[NeighbourVote, NeighbourVote]:
    """The vote over the training photos (as training chose it) and the same vote grown by the
    validation photos, both built as training builds them."""
    rows = bank_rows(len(features["train"]), seed)
    chosen = NeighbourVote(torch.from_numpy(features["train"][rows]), torch.from_numpy(labels["train"][rows]), saved.num_classes,
                           saved.k, saved.temperature, saved.weight)
    return chosen, chosen.with_added(features["val"], labels["val"], MAX_BANK, seed)[0]


def run_folders(description: str | None) -> list[Path]:
    """The run folders given on the command line."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    return parser.parse_args().runs


def load_run(run: Path) -> tuple[torch.nn.Module, str, dict, dict, int]:
    """A finished run's network (eval mode), its reported split, features and labels by split, and seed."""
    model, meta = load_model(run)
    model.eval()
    reported, features, labels = split_features(run, model, meta.preprocess, list(meta.classes))
    return model, reported, features, labels, config_lib.resolve(run / "config.yaml").train.seed


def accuracy_with(model: torch.nn.Module, vote: NeighbourVote | None, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Which photos the network gets right with ``vote`` (None: the network alone) as its vote."""
    model.vote = vote
    with torch.inference_mode():
        return model.classify(torch.from_numpy(features))[0].argmax(1).numpy() == labels


def paired_change(before: np.ndarray, after: np.ndarray) -> tuple[int, int, float]:
    """(photos gained, photos lost, standard error of the accuracy change), paired photo by photo,
    from which photos are right before and after."""
    n, gained, lost = len(before), int((after & ~before).sum()), int((before & ~after).sum())
    return gained, lost, math.sqrt(max(0.0, gained + lost - (gained - lost) ** 2 / n)) / n


def print_mean_change(accuracies: list[tuple[float, float]]) -> None:
    """The mean change over per-run (accuracy before, accuracy after), with the standard error across runs."""
    changes = [after - before for before, after in accuracies]
    mean = sum(changes) / len(changes)
    # paired changes: the standard error of the mean change across runs where there are several
    spread = math.sqrt(sum((c - mean) ** 2 for c in changes) / (len(changes) - 1) / len(changes)) if len(changes) > 1 else float("nan")
    print(f"mean change {mean * 100:+.2f} points over {len(changes)} runs (standard error across runs {spread * 100:.2f}); "
          f"mean accuracy {sum(a[0] for a in accuracies) / len(accuracies):.2%} -> {sum(a[1] for a in accuracies) / len(accuracies):.2%}")


def main() -> None:
    runs = run_folders(__doc__)
    print("| run | split | photos | network alone | vote, training photos | vote, training + validation photos | change (photos) |")
    print("|---|---|---|---|---|---|---|")
    changes = []
    for run in runs:
        model, reported, features, labels, seed = load_run(run)
        saved = model.vote
        n, alone = len(labels[reported]), float(accuracy_with(model, None, features[reported], labels[reported]).mean())
        if saved is None:
            print(f"| {run} | {reported} | {n} | {alone:.2%} | no vote chosen | — | — |")
            continue
        chosen, grown = votes(features, labels, saved, seed)
        train_only, with_val = (float(accuracy_with(model, v, features[reported], labels[reported]).mean()) for v in (chosen, grown))
        changes.append((train_only, with_val))
        print(f"| {run} | {reported} | {n} | {alone:.2%} | {train_only:.2%} | {with_val:.2%} | {round((with_val - train_only) * n):+d} |", flush=True)
    if changes:
        print_mean_change(changes)


if __name__ == "__main__":
    main()
