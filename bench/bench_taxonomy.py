"""Listings declared at the coarse level: how many fine-level mismatches the taxonomy turns into matches.

A freiburg model (``--model``: a run folder trained on ``examples/freiburg-split0.yaml`` with the
defaults; the coarse map is applied at judging time, the rule being the one `vitrina serve` uses
for a model trained with it) predicts its test photos. Each photo is judged as a listing of one
photo declared at its true fine class and at its true parent (``bench/freiburg_coarse.csv``: 25
classes in 7 parents), with the model's own confidence threshold. It prints the verdict shares at
both levels and the share of photos whose fine-level verdict is a mismatch and whose coarse-level
verdict is a match (a wrong class within the right parent), and of fine-level uncertain verdicts
that are sure matches at the coarse level.

    python bench/bench_taxonomy.py --model RUN
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np

from vitrina.evaluation.run_eval import load_split, run_config
from vitrina.export.loading import load_predictor

REPO = Path(__file__).resolve().parents[1]
SPLIT0 = REPO / "examples" / "freiburg-split0.yaml"
COARSE = Path(__file__).resolve().parent / "freiburg_coarse.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    args = parser.parse_args()
    with open(COARSE, newline="") as fh:
        parents = {fine: coarse for fine, coarse in csv.reader(fh)}
    predictor = load_predictor(args.model)
    dataset, split = load_split(SPLIT0, run_config(args.model), "test")
    samples = dataset.split(split)
    probs, errors = predictor.predict_paths([s.path for s in samples])
    rule = predictor.rule()
    fine, coarse, both = Counter(), Counter(), Counter()
    for sample, row, error in zip(samples, probs, errors):
        if error is not None:
            continue
        listing = row[None].astype(np.float64)
        at_fine = rule.verdict(listing, None, sample.label, predictor.classes, parents).verdict
        at_coarse = rule.verdict(listing, None, parents[sample.label], predictor.classes, parents).verdict
        fine[at_fine] += 1
        coarse[at_coarse] += 1
        both[(at_fine, at_coarse)] += 1
    n = sum(fine.values())
    print(f"{args.model}: {n} test photos of freiburg split 0, {len(set(parents.values()))} parents, "
          f"confidence threshold {rule.confidence}")
    for name, counts in (("declared at the fine level", fine), ("declared at the coarse level", coarse)):
        print(f"  {name:<28} " + ", ".join(f"{v} {100 * counts[v] / n:.1f}%" for v in ("match", "mismatch", "uncertain")))
    print(f"  fine mismatch -> coarse match: {both[('mismatch', 'match')]} photos, {100 * both[('mismatch', 'match')] / n:.1f}% "
          f"of all, {100 * both[('mismatch', 'match')] / max(1, fine['mismatch']):.1f}% of the fine mismatches")
    print(f"  fine uncertain -> coarse match: {both[('uncertain', 'match')]} photos, {100 * both[('uncertain', 'match')] / n:.1f}% of all")


if __name__ == "__main__":
    main()
