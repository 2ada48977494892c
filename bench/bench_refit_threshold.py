"""Does a refit's carried unknown threshold still call about 5% of new photos unknown?

Takes a run of the defaults (the first network) and a run of the same data and seeds with
``train.refit`` (see docs/training.md#refit), and prints, on a held-out split, the share of
photos each calls unknown: the first network, the refit as saved, and the refit with its
threshold carried by the ratio of the banks' median scores and of their 95th percentiles (each
bank's photos left out of their own neighbours, ``UnknownScore.bank_scores``).

    python bench/bench_refit_threshold.py FIRST_RUN REFIT_RUN DATA --split test
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vitrina import api
from vitrina.description import ModelDescription
from vitrina.models.unknown import load_unknown


def description(run: Path) -> ModelDescription:
    return ModelDescription.from_dict(json.loads((run / "model.json").read_text()), run / "model.json")


def unknown_share(run: Path, data: str, split: str, out: Path) -> float:
    return float(api.evaluate(run, data, split=split, out=out, progress=False).metrics["decisions"]["unknown_share"])


def with_threshold(run: Path, threshold: float, folder: Path) -> Path:
    """A copy of ``run`` (its model files) whose unknown threshold is ``threshold``."""
    shutil.copytree(run, folder, ignore=shutil.ignore_patterns("tensorboard", "*.onnx", "eval-*", "predictions_*"))
    saved = json.loads((folder / "model.json").read_text())
    saved["unknown"]["threshold"] = threshold
    (folder / "model.json").write_text(json.dumps(saved))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="a run of the defaults")
    parser.add_argument("refit", type=Path, help="the same data and seeds with train.refit")
    parser.add_argument("data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    first, refit = description(args.first), description(args.refit)
    banks = [load_unknown(run, d.unknown).bank_scores() for run, d in ((args.first, first), (args.refit, refit))]
    with tempfile.TemporaryDirectory(prefix="vitrina-refit-threshold-") as tmp:
        rows = [("first network", first.unknown.threshold, 1.0, unknown_share(args.first, args.data, args.split, Path(tmp) / "a")),
                ("refit as saved", refit.unknown.threshold, refit.refit.unknown_scale if refit.refit else math.nan,
                 unknown_share(args.refit, args.data, args.split, Path(tmp) / "b"))]
        for name, measure in (("median ratio", np.median), ("95th-percentile ratio", lambda v: np.quantile(v, 0.95))):
            scale = float(measure(banks[1]) / measure(banks[0]))
            threshold = math.ceil(first.unknown.threshold * scale * 1e6) / 1e6
            copy = with_threshold(args.refit, threshold, Path(tmp) / name.split()[0])
            rows.append((f"refit, {name}", threshold, scale, unknown_share(copy, args.data, args.split, Path(tmp) / f"e-{name.split()[0]}")))
    print(f"| {args.split} photos of {args.data} | threshold | scale | called unknown |\n|---|---|---|---|")
    for name, threshold, scale, share in rows:
        print(f"| {name} | {threshold:.4f} | x {scale:.3f} | {share:.2%} |")


if __name__ == "__main__":
    main()
