"""How the neighbour vote's settings are chosen on validation, compared on finished runs.

Training tries 18 settings of the vote (k, temperature, weight) on the validation photos and
keeps one that gets more of them right than the network alone (``vitrina.models.neighbours.
fit_vote``). Which one: the most validation photos right ("accuracy", then the lower log loss),
or the lowest validation log loss ("log_loss"). For each run folder given (the default's runs of
``bench/bench_recipe.py``), this rebuilds the vote from the run's own network both ways (the
training photos as the bank, as training chooses it, then grown by the validation photos, as
training saves it) and prints the reported split's accuracy with each, and the photos each gets
right that the other misses. Accuracy here is the network in fp32 PyTorch without the mirror
average (as `vitrina train` reports it when the run kept no mirror average).

    python bench/bench_vote_choice.py RUN [RUN ...]
"""
from __future__ import annotations

import numpy as np
import torch

from bench_vote_bank import accuracy_with, load_run, paired_change, print_mean_change, run_folders
from vitrina.models.neighbours import VoteCriterion, fit_vote
from vitrina.models.unknown import MAX_BANK, bank_rows

CRITERIA: tuple[VoteCriterion, ...] = ("accuracy", "log_loss")


def chosen_right(model: torch.nn.Module, features: dict, labels: dict, reported: str, val_logits: np.ndarray,
                 criterion: VoteCriterion, seed: int) -> tuple[np.ndarray, str]:
    """Which reported photos the run's network gets right with the vote ``criterion`` chooses
    (``val_logits``: its head's on the validation photos), and the choice."""
    rows = bank_rows(len(features["train"]), seed)
    choice = fit_vote(features["train"][rows], labels["train"][rows], features["val"], val_logits, labels["val"],
                      val_logits.shape[1], criterion=criterion)
    vote, described = None, "no vote"
    if choice.vote is not None:
        vote = choice.vote.with_added(features["val"], labels["val"], MAX_BANK, seed)[0]
        described = f"k {vote.k}, t {vote.temperature:g}, w {vote.weight:g}, val {choice.val_accuracy:.2%}"
    return accuracy_with(model, vote, features[reported], labels[reported]), described


def main() -> None:
    runs = run_folders(__doc__)
    print("| run | split | photos | network alone | vote by accuracy | vote by log loss | change, log loss - accuracy (SE; photos: gained, lost) |")
    print("|---|---|---|---|---|---|---|")
    changes = []
    for run in runs:
        model, reported, features, labels, seed = load_run(run)
        alone = float(accuracy_with(model, None, features[reported], labels[reported]).mean())
        with torch.inference_mode():
            val_logits = model.head_logits(torch.from_numpy(features["val"])).float().numpy()
        (by_acc, acc_desc), (by_loss, loss_desc) = (chosen_right(model, features, labels, reported, val_logits, c, seed) for c in CRITERIA)
        n, (gained, lost, se) = len(by_acc), paired_change(by_acc, by_loss)
        changes.append((float(by_acc.mean()), float(by_loss.mean())))
        print(f"| {run} | {reported} | {n} | {alone:.2%} | {by_acc.mean():.2%} ({acc_desc}) | {by_loss.mean():.2%} ({loss_desc}) | "
              f"{(gained - lost) / n:+.2%} (SE {se:.2%}; {gained - lost:+d}: +{gained}, -{lost}) |",
              flush=True)
    print_mean_change(changes)


if __name__ == "__main__":
    main()
