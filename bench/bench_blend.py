"""What a second network's probabilities, blended in with a weight chosen on validation, would
gain over a finished run's own, on the photos both runs were trained and evaluated on.

For a run folder (the default's, from ``bench/bench_recipe.py``) and a second run folder with
the same splits (another backbone, or a head on frozen features: ``vitrina train DATA --mode
bottleneck --model NAME`` with the same seed), this rebuilds each run's neighbour vote from its
own network and settings: over the training photos for the validation photos (as training
chooses), grown by the validation photos for the reported split (as training saves it). It
prints, for each blend weight w, the validation and reported accuracy of
``(1 - w) * first + w * second``, then the weight validation picks (the most photos right, then
the lower log loss, then the smaller weight) and what it gives on the reported split, paired
photo by photo with the first run alone; then the same for the plain average (w 0.5, nothing
chosen), and whether the pair pays for its prediction cost by the rule every extra must pass
(:func:`vitrina.training.extras.pays_for_itself`), with the cost taken from the images/s each
run's plan expected of its export (the pair runs both networks: c = 1 + first / second images/s,
decoding counted twice, so a little above the true cost). Accuracy here is each network (its
body in ONNX Runtime fp32, its head in PyTorch) without the mirror average. With ``--against
THIRD_RUN`` (same splits) the two summary lines pair the blends with that run alone instead, and
the cost is counted against its speed:
for two networks trained with fewer epochs, so that both fit the budget one default fills.

    python bench/bench_blend.py RUN SECOND_RUN [--against THIRD_RUN]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bench_vote_bank import load_run, paired_change, votes
from vitrina.training.extras import pays_for_itself

WEIGHTS = tuple(round(0.1 * k, 1) for k in range(9))


class Blend(NamedTuple):
    """One blend weight's figures."""

    w: float
    val_right: int  # validation photos right
    val_loss: float  # validation log loss
    reported_right: np.ndarray  # which reported photos are right (bool per photo)


def probabilities(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(validation probabilities with the vote over training photos, reported probabilities with
    the grown vote, validation labels, reported labels, the reported split's name)."""
    model, reported, features, labels, seed = load_run(run)
    chosen = grown = None
    if model.vote is not None:
        chosen, grown = votes(features, labels, model.vote, seed)
    out = []
    for split, vote in (("val", chosen), (reported, grown)):
        model.vote = vote
        with torch.inference_mode():
            out.append(model.classify(torch.from_numpy(features[split]))[0].float().numpy())
    return out[0], out[1], labels["val"], labels[reported], reported


def expected_speed(run: Path) -> float | None:
    """The images/s the run's plan expected of its export (None where it did not say)."""
    plan = run / "plan.json"
    speed = json.loads(plan.read_text()).get("expected_images_per_s") if plan.is_file() else None
    return float(speed) if speed else None


def pair_cost(run: Path, second: Path, base: Path | None = None) -> float | None:
    """Prediction passes of the pair per pass of ``base`` alone (``run`` by default), from the
    plans' expected images/s."""
    speeds = [expected_speed(folder) for folder in (base or run, run, second)]
    if None in speeds:
        return None
    return speeds[0] / speeds[1] + speeds[0] / speeds[2]


def report(label: str, row: Blend, alone: Blend, reported: str, n_val: int, cost: float | None) -> None:
    """One summary line: the reported split paired with the first run alone, and the cost rule."""
    gained, lost, se = paired_change(alone.reported_right, row.reported_right)
    val_gain = row.val_right - alone.val_right
    rule = "cost unknown" if cost is None else (
        f"pair costs {cost:.2f} passes: validation {val_gain:+d} photos "
        f"({100.0 * val_gain / n_val:+.2f} points) "
        f"{'pays' if pays_for_itself(val_gain, n_val, cost) else 'does not pay'} for it")
    print(f"{label}: {reported} {alone.reported_right.mean():.2%} -> {row.reported_right.mean():.2%} "
          f"({gained - lost:+d} photos: +{gained}, -{lost}; SE {se:.2%}); {rule}")


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log probability of the true class."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def blend_row(w: float, val: np.ndarray, rep: np.ndarray, y_val: np.ndarray, y_rep: np.ndarray) -> Blend:
    """The figures of one set of validation and reported probabilities."""
    return Blend(w, int((val.argmax(1) == y_val).sum()), log_loss(val, y_val), rep.argmax(1) == y_rep)


def same_labels(run: Path, y_val: np.ndarray, y_rep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``run``'s validation and reported probabilities; exits where it labels the photos differently."""
    val, rep, other_y_val, other_y_rep, _ = probabilities(run)
    if not (np.array_equal(y_val, other_y_val) and np.array_equal(y_rep, other_y_rep)):
        raise SystemExit(f"{run} labels the photos differently (its classes must be the same, in the same order)")
    return val, rep


def against_row(run: Path, y_val: np.ndarray, y_rep: np.ndarray) -> Blend:
    """``run`` alone as a row to pair the blends with (its weight reads as nan)."""
    row = blend_row(float("nan"), *same_labels(run, y_val, y_rep), y_val, y_rep)
    print(f"paired with {run} alone: val {row.val_right} right, log loss {row.val_loss:.4f}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--against", type=Path, metavar="RUN",
                        help="pair the blends with this run alone instead of the first (same splits), "
                             "e.g. the default when both runs trained fewer epochs")
    args = parser.parse_args()
    others = [args.second] + ([args.against] if args.against else [])
    splits = json.loads((args.run / "splits.json").read_text())["splits"]
    if any(json.loads((other / "splits.json").read_text())["splits"] != splits for other in others):
        raise SystemExit("the runs do not have the same splits (train, val and the reported split must match)")
    first_val, first_rep, y_val, y_rep, reported = probabilities(args.run)
    second_val, second_rep = same_labels(args.second, y_val, y_rep)
    print(f"{args.run} + {args.second}: {len(y_val)} photos in val, {len(y_rep)} in {reported}")
    print(f"| w | val right | val log loss | {reported} right |")
    print("|---|---|---|---|")
    rows = []
    for w in WEIGHTS:
        val = (1 - w) * first_val + w * second_val
        rep = (1 - w) * first_rep + w * second_rep
        row = blend_row(w, val, rep, y_val, y_rep)
        rows.append(row)
        print(f"| {w:.1f} | {row.val_right} ({row.val_right / len(y_val):.2%}) | {row.val_loss:.4f} | "
              f"{int(row.reported_right.sum())} ({row.reported_right.mean():.2%}) |")
    best = max(rows, key=lambda r: (r.val_right, -r.val_loss, -r.w))
    alone = rows[0] if args.against is None else against_row(args.against, y_val, y_rep)
    cost = pair_cost(args.run, args.second, args.against)
    report(f"val picks w {best.w:.1f}", best, alone, reported, len(y_val), cost)
    report("plain average (w 0.5)", rows[WEIGHTS.index(0.5)], alone, reported, len(y_val), cost)
    print(f"the second run alone: {reported} {float((second_rep.argmax(1) == y_rep).mean()):.2%}")


if __name__ == "__main__":
    main()
