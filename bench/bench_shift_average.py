"""Whether averaging shifted copies of the least sure photos, beside their mirror image, would
pay for its passes on finished runs.

Training keeps a mirror-image average only where it pays on the validation photos by the rule
every extra that multiplies prediction cost must pass (:func:`vitrina.training.extras.pays_for_itself`):
costing c passes per photo, at least 0.5 x (c - 1) points and 3 photos. This tries the same
adaptive scheme with more views: for the photos whose first pass is unsure (the top probability
minus the second below a margin), the probabilities of the photo, its mirror image and the photo
moved by ``--shift`` of its side (whole pixels, at least one, edges repeated) left, right, up and
down are averaged. For each set of views and each share of the least sure validation photos
(the shares training tries for the mirror, and every photo), it prints the validation gain,
the passes and the rule's verdict; then, for the setting that pays best on validation (as
training chooses the mirror's), the reported split paired photo by photo with the first pass
alone (the vote included) and with the mirror setting chosen the same way. The vote is rebuilt
as training builds it (the training photos' bank for validation, grown by the validation photos
for the reported split); the network's body runs in ONNX Runtime fp32 and its head in PyTorch,
as training does on a CPU.

    python bench/bench_shift_average.py RUN [RUN ...] [--shift 0.035]
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from bench_vote_bank import paired_change, split_images, votes
from vitrina import config as config_lib
from vitrina.description import top_margin
from vitrina.models.checkpoint import load_model
from vitrina.models.unknown import penultimate_features
from vitrina.preprocess import mirror_images
from vitrina.training.extras import POINTS_PER_EXTRA_PASS, pays_for_itself, unsure_cuts

VIEW_SETS = {"mirror": ("mirror",), "shifts": ("left", "right", "up", "down"),
             "mirror+shifts": ("mirror", "left", "right", "up", "down")}


class Setting(NamedTuple):
    """One view set at one margin, as measured on the validation photos."""

    views: str
    margin: float
    passes: float
    gain: int  # validation photos gained over the first pass alone

    def net_points(self, n: int) -> float:
        return 100.0 * self.gain / n - POINTS_PER_EXTRA_PASS * (self.passes - 1.0)


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """uint8 N x H x W x C images moved ``dx`` pixels right and ``dy`` down, the edges repeated."""
    h, w = images.shape[1:3]
    padded = np.pad(np.asarray(images), ((0, 0), (abs(dy),) * 2, (abs(dx),) * 2, (0, 0)), mode="edge")
    top, left = abs(dy) - dy, abs(dx) - dx
    return np.ascontiguousarray(padded[:, top : top + h, left : left + w])


def view_images(images: np.ndarray, view: str, pixels: int) -> np.ndarray:
    if view == "mirror":
        return mirror_images(images)
    dx, dy = {"left": (-pixels, 0), "right": (pixels, 0), "up": (0, -pixels), "down": (0, pixels)}[view]
    return shifted(images, dx, dy)


def view_probabilities(model, vote, images: np.ndarray, preprocess, cache: Path, pixels: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Each view's class probabilities (the vote included), the photo as given under ``plain``."""
    model.vote = vote
    out = {}
    for view in ("plain", *VIEW_SETS["mirror+shifts"]):
        part = images if view == "plain" else view_images(images, view, pixels)
        features = penultimate_features(model, part, preprocess, torch.device("cpu"), "fp32", cache)
        with torch.inference_mode():
            out[view] = model.classify(torch.from_numpy(features))[0].float().numpy()
    return out


def averaged(probs: dict[str, np.ndarray], views: tuple[str, ...], margin: float) -> tuple[np.ndarray, int]:
    """The first pass with its unsure rows (margin below ``margin``) averaged over ``views``; and how many."""
    rows = np.flatnonzero(top_margin(probs["plain"]) < margin)
    out = probs["plain"].copy()
    out[rows] = (probs["plain"][rows] + sum(probs[v][rows] for v in views)) / (1 + len(views))
    return out, len(rows)


def settings(probs: dict[str, np.ndarray], labels: np.ndarray) -> list[Setting]:
    """Every view set at every share of the least sure photos training tries, and at every photo."""
    n = len(labels)
    right = int((probs["plain"].argmax(1) == labels).sum())
    out = []
    for name, views in VIEW_SETS.items():
        for cut in unsure_cuts(probs["plain"]):
            p, k = averaged(probs, views, cut)
            out.append(Setting(name, cut, 1.0 + len(views) * k / n, int((p.argmax(1) == labels).sum()) - right))
    return out


def best(options: list[Setting], n: int, views: str | None = None) -> Setting | None:
    """The setting that pays best by the rule (of one view set where ``views`` is given), or None."""
    kept = [o for o in options if (views is None or o.views == views) and pays_for_itself(o.gain, n, o.passes)]
    return max(kept, key=lambda o: (o.net_points(n), -o.passes), default=None)


def measure(run: Path, shift: float) -> None:
    model, meta = load_model(run)
    model.eval()
    reported, images, labels, cache = split_images(run, meta.preprocess, list(meta.classes))
    pixels = max(1, round(shift * images["val"].shape[2]))
    saved = model.vote
    chosen = grown = None
    if saved is not None:
        bank = {s: penultimate_features(model, images[s], meta.preprocess, torch.device("cpu"), "fp32", cache) for s in ("train", "val")}
        chosen, grown = votes(bank, labels, saved, config_lib.resolve(run / "config.yaml").train.seed)
    val = view_probabilities(model, chosen, images["val"], meta.preprocess, cache, pixels)
    rep = view_probabilities(model, grown, images[reported], meta.preprocess, cache, pixels)
    n = len(labels["val"])
    options = settings(val, labels["val"])
    print(f"{run}: {n} validation photos, {len(labels[reported])} {reported} photos, shifts of {pixels} px")
    print("| views | share of photos | passes | validation photos gained | pays |")
    print("|---|---|---|---|---|")
    for o in options:
        share = (o.passes - 1.0) / len(VIEW_SETS[o.views])
        print(f"| {o.views} | {share:.1%} | {o.passes:.2f} | {o.gain:+d} | {'yes' if pays_for_itself(o.gain, n, o.passes) else 'no'} |")
    plain_right = rep["plain"].argmax(1) == labels[reported]
    mirror = best(options, n, "mirror")
    mirror_right = averaged(rep, VIEW_SETS["mirror"], mirror.margin)[0].argmax(1) == labels[reported] if mirror else plain_right
    for label, choice in (("mirror alone", mirror), ("any view set", best(options, n))):
        if choice is None:
            print(f"{label}: nothing pays on validation")
            continue
        p, k = averaged(rep, VIEW_SETS[choice.views], choice.margin)
        right = p.argmax(1) == labels[reported]
        gained, lost, se = paired_change(plain_right, right)
        which = "every photo" if not math.isfinite(choice.margin) else f"margin < {choice.margin:.3f}"
        line = (f"{label}: {choice.views}, {which} ({choice.passes:.2f} passes on validation, "
                f"{1 + len(VIEW_SETS[choice.views]) * k / len(right):.2f} on {reported}; validation {choice.gain:+d}): "
                f"{reported} {plain_right.mean():.2%} -> {right.mean():.2%} ({gained - lost:+d} photos: +{gained}, -{lost}; SE {se:.2%})")
        if label != "mirror alone":
            g, l, s = paired_change(mirror_right, right)
            line += f"; against the mirror alone {g - l:+d} photos (+{g}, -{l}; SE {s:.2%})"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--shift", type=float, default=0.035, help="shift as a share of the side (default 0.035: 1 px at 28 px)")
    args = parser.parse_args()
    for run in args.runs:
        measure(run, args.shift)


if __name__ == "__main__":
    main()
