"""The public API of evaluation: a trained model on one split of a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from vitrina.evaluation.promote import Promotion, promote as promote_model
from vitrina.evaluation.run_eval import Evaluation, evaluate_run

__all__ = ["Evaluation", "Promotion", "evaluate", "promote"]


def evaluate(
    model: str | Path,
    data: str | Path,
    *,
    split: str | None = None,
    out: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    tta: bool = False,
    progress: bool = True,
) -> Evaluation:
    """Evaluate a trained model on one split of ``data`` and write an evaluation folder.

    ``model`` is a run folder or its ``model.safetensors`` / ``model.json``. The data is read
    with the run's data settings, then ``overrides`` (dotted keys such as ``data.coarse_map``).
    ``split`` defaults to test, else the holdout, else validation (carved as in training when
    ``data`` is the training data), else all of ``data``. The folder (default
    ``RUN/eval-SPLIT``, never one already written) holds metrics.json, predictions.csv,
    confusion matrices, a reliability diagram, mistakes.html and report.html. ``tta`` adds the
    figures of flip-averaged predictions under ``tta``.
    """
    return evaluate_run(model, data, split=split, out=out, overrides=overrides, tta=tta, progress=progress)


def promote(
    new: str | Path,
    served: str | Path,
    data: str | Path,
    *,
    split: str | None = "test",
    alpha: float = 0.05,
    max_drop: float | None = None,
    force: bool = False,
    allow_class_change: bool = False,
    log: Callable[[str], None] = print,
) -> Promotion:
    """Replace the served model (a run folder or an ``.onnx`` file) by ``new`` only when it is not worse.

    Both predict the same photos of ``data``'s ``split``; the new model is refused when McNemar's
    one-sided exact test finds it worse at ``alpha``, when its accuracy drops by more than
    ``max_drop`` points, or when its classes differ (unless ``allow_class_change``); ``force``
    installs it anyway. A promoted model replaces ``served`` atomically (the old one kept as
    ``SERVED.prev``); every decision is appended to ``promotions.jsonl`` beside ``served``.
    """
    return promote_model(new, served, data, split=split, alpha=alpha, max_drop=max_drop, force=force,
                         allow_class_change=allow_class_change, log=log)
