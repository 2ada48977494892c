"""The public API of evaluation: a trained model on one split of a dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from vitrina.evaluation.run_eval import Evaluation, evaluate_run

__all__ = ["Evaluation", "evaluate"]


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
