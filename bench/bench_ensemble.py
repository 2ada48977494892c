"""What averaging trained models would gain: the class probabilities of several run folders,
each predicted by the model `vitrina export RUN` writes (its neighbour vote and mirror average
included), averaged photo by photo over the test photos the first run was evaluated on.

Prints each run's accuracy on those photos (and the accuracy its training run recorded), the
photos the first two disagree on and how many of those each gets right, and the averaged
models' accuracy. The runs must answer the same test photos (the same freiburg split, or avito
and clothing-small runs of different seeds, whose test photos are fixed).

    python bench/bench_ensemble.py RUN RUN [RUN ...] [--fp32]

``--fp32`` predicts with each run's fp32 export where `vitrina export` chose int8 (the models as
training evaluated them).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from vitrina import api


def test_photos(run: Path) -> tuple[list[str], list[str]]:
    """The paths and labels of the photos training evaluated ``run`` on (``predictions_test.csv``)."""
    with open(run / "predictions_test.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r["path"] for r in rows], [r["label"] for r in rows]


def recorded_accuracy(run: Path) -> float:
    with open(run / "predictions_test.csv", newline="") as fh:
        return float(np.mean([r["correct"] == "1" for r in csv.DictReader(fh)]))


def probabilities(run: Path, paths: list[str], classes: list[str], fp32: bool, out: Path) -> np.ndarray:
    """Every class's probability for each photo, predicted with the run's exported model (rows to ``out``)."""
    if not (run / "model.onnx").is_file():
        api.export(run, log=lambda _: None)
    model = run / "model.fp32.onnx" if fp32 and (run / "model.fp32.onnx").is_file() else run / "model.onnx"
    listing = out.with_suffix(".txt")
    listing.write_text("\n".join(paths) + "\n")
    api.predict(model, [listing], out, top_k=len(classes), progress=False)
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    index = {c: i for i, c in enumerate(classes)}
    probs = np.zeros((len(paths), len(classes)))
    for n, path in enumerate(paths):
        row = rows[path]
        for k in range(1, len(classes) + 1):
            if row.get(f"label_{k}"):
                probs[n, index[row[f"label_{k}"]]] = float(row[f"prob_{k}"])
    return probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fp32", action="store_true")
    args = parser.parse_args()
    if len(args.runs) < 2:
        sys.exit("give at least two run folders")
    paths, labels = test_photos(args.runs[0])
    classes = list(json.loads((args.runs[0] / "model.json").read_text())["classes"])
    truth = np.array([classes.index(label) for label in labels])
    with tempfile.TemporaryDirectory() as folder:
        probs = [probabilities(run, paths, classes, args.fp32, Path(folder) / f"run{i}.csv") for i, run in enumerate(args.runs)]
    for run, p in zip(args.runs, probs):
        print(f"{run}: {np.mean(p.argmax(1) == truth):.4f} on {len(paths)} test photos "
              f"(training recorded {recorded_accuracy(run):.4f})")
    first, second = probs[0].argmax(1), probs[1].argmax(1)
    differ = first != second
    print(f"the first two disagree on {int(differ.sum())} photos: the first gets {int((first == truth)[differ].sum())} "
          f"right, the second {int((second == truth)[differ].sum())}")
    print(f"averaged ({len(args.runs)} models): {np.mean(np.mean(probs, axis=0).argmax(1) == truth):.4f}")


if __name__ == "__main__":
    main()
