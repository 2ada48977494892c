"""The model being served: which files it is, its version (a hash of them), loading it warmed up."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vitrina.description import META_FILE, UNKNOWN_FILE, WEIGHTS_FILE
from vitrina.errors import ModelError
from vitrina.export.loading import load_predictor
from vitrina.inference.decide import DecisionRule
from vitrina.inference.predictor import Predictor
from vitrina.serving.settings import MEBIBYTE, ServeSettings

VERSION_DIGITS = 12
Fingerprint = tuple[tuple[int, int] | None, ...]


def model_files(path: Path) -> list[Path]:
    """The files whose content is the model: the ``.onnx`` file, or a run's weights and description."""
    if path.is_file() and path.suffix.lower() == ".onnx":
        return [path]
    folder = path if path.is_dir() else path.parent
    files = [folder / META_FILE, folder / WEIGHTS_FILE]
    if (folder / UNKNOWN_FILE).is_file():  # the unknown-photo statistics, where the model has them
        files.append(folder / UNKNOWN_FILE)
    return files


def files_version(files: Sequence[Path]) -> str:
    """A short content hash of the model files: the version reported with every answer."""
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(MEBIBYTE), b""):
                digest.update(block)
    return digest.hexdigest()[:VERSION_DIGITS]


def files_fingerprint(files: Sequence[Path]) -> Fingerprint:
    """Cheap change detection: (mtime, size) of each file, None where missing."""
    stamps = []
    for file in files:
        try:
            stat = file.stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


@dataclass(frozen=True)
class LoadedModel:
    """A predictor with its version and the figures shown by ``GET /v1/model``."""

    predictor: Predictor
    version: str
    fingerprint: Fingerprint
    loaded_at: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def name(self) -> str:
        return self.predictor.description.model

    def rule(self, confidence: float | None = None) -> DecisionRule:
        """The decision rule of this model's answers (``confidence`` overrides its calibrated threshold)."""
        return self.predictor.rule(confidence)


def load_model(settings: ServeSettings) -> LoadedModel:
    """Load the model the settings name, warmed up; ModelError when it is missing or unreadable.

    The warm-up runs one full batch of blank images, so the runtime's memory is sized before the
    first request and the first answers are as fast as the rest (also after a hot reload).
    """
    path = Path(settings.model)
    if not path.exists():
        raise ModelError(f"{path}: model not found (give a run folder or an exported .onnx file)")
    files = model_files(path)
    fingerprint = files_fingerprint(files)
    predictor = load_predictor(path, settings.backend, threads=settings.threads)  # type: ignore[arg-type]
    pre = predictor.preprocess
    predictor.predict_scored(np.zeros((settings.max_batch, pre.input_size, pre.input_size, pre.channels), dtype=np.uint8))
    version = files_version(files)
    metrics = dict(predictor.description.metrics)
    metrics_file = files[0].parent / "metrics.json"
    if not metrics and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
    loaded_at = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    return LoadedModel(predictor, version, fingerprint, loaded_at, metrics)
