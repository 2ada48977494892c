"""What a trained model says about itself: one typed description for every artifact.

A run folder's ``model.json``, the ``vitrina`` metadata entry of an exported ``.onnx`` file and the
model card all carry a :class:`ModelDescription`: the classes (and their coarse classes), the
preprocessing, the decision thresholds, the unknown-photo detector, the neighbour vote, the
mirror-image average, versions and the weights' digest. It is parsed and validated here, once
(:meth:`ModelDescription.from_dict`), and read by attribute everywhere else.

The names of the ONNX graph's inputs and outputs live beside it: an exported file is this
description plus a graph with these names.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitrina.errors import ConfigError, ModelError
from vitrina.preprocess import Preprocess

FORMAT = "vitrina-model/1"
# The ONNX interface: one input, the probabilities, and the unknown-photo score where the model has one.
INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
SCORE_OUTPUT = "unknown_score"
METADATA_KEY = "vitrina"  # the ONNX metadata entry holding the description as JSON
# A run folder's model files: the weights, this description, the unknown-photo statistics.
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
UNKNOWN_FILE = "unknown.safetensors"
UNKNOWN_SCORES = ("knn", "knn_energy", "mahalanobis", "energy", "msp")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def _number(value: Any, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(value: Any, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def _optional(data: Mapping[str, Any], key: str, parse: Any) -> Any:
    value = data.get(key)
    return None if value is None else parse(value, key)


def _dict(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True)
class Thresholds:
    """Below ``confidence`` (the top probability) a prediction is uncertain; chosen so that
    ``accept_rate`` of the validation photos are answered."""

    confidence: float | None = None
    accept_rate: float | None = None

    @classmethod
    def parse(cls, data: Any, name: str = "thresholds") -> "Thresholds":
        data = _dict(data, name)
        return cls(_optional(data, "confidence", lambda v, k: _number(v, f"{name}.{k}", 0.0, 1.0)),
                   _optional(data, "accept_rate", lambda v, k: _number(v, f"{name}.{k}", 0.0, 1.0)))

    def to_dict(self) -> dict[str, float]:
        return {k: v for k, v in (("confidence", self.confidence), ("accept_rate", self.accept_rate)) if v is not None}


@dataclass(frozen=True)
class UnknownDetector:
    """The unknown-photo score (see :mod:`vitrina.models.unknown`): above ``threshold`` a photo
    looks unlike the training photos. ``file`` holds its statistics beside the weights."""

    score: str
    threshold: float
    accept_rate: float = 0.95
    file: str | None = None
    output: str = SCORE_OUTPUT
    k: int | None = None
    bank_size: int | None = None

    @classmethod
    def parse(cls, data: Any, name: str = "unknown") -> "UnknownDetector":
        data = _dict(data, name)
        score = data.get("score")
        if score not in UNKNOWN_SCORES:
            raise ValueError(f"{name}.score must be one of {', '.join(UNKNOWN_SCORES)}, got {score!r}")
        threshold = data.get("threshold")
        # an empty validation split gives an infinite threshold, stored as null by JSON writers
        threshold = math.inf if threshold is None else _number(threshold, f"{name}.threshold")
        file = data.get("file")
        if file is not None and (not isinstance(file, str) or Path(file).name != file):
            raise ValueError(f"{name}.file must be a file name beside the model, got {file!r}")
        return cls(
            score, threshold, _number(data.get("accept_rate", 0.95), f"{name}.accept_rate", 0.0, 1.0), file,
            str(data.get("output", SCORE_OUTPUT)), _optional(data, "k", lambda v, k: _count(v, f"{name}.{k}")),
            _optional(data, "bank_size", lambda v, k: _count(v, f"{name}.{k}")),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {"score": self.score, "threshold": self.threshold if math.isfinite(self.threshold) else None,
               "accept_rate": self.accept_rate, "file": self.file, "output": self.output}
        out.update({k: v for k, v in (("k", self.k), ("bank_size", self.bank_size)) if v is not None})
        return out


@dataclass(frozen=True)
class NeighbourVote:
    """The vote of the ``k`` most similar of ``bank_size`` training photos, mixed with the head's
    probabilities at ``weight`` (see :mod:`vitrina.models.neighbours`); ``validation_photos`` of
    the bank are the run's validation photos, added once everything chosen on them was chosen."""

    k: int
    temperature: float
    weight: float
    bank_size: int
    validation_photos: int = 0

    @classmethod
    def parse(cls, data: Any, name: str = "neighbours") -> "NeighbourVote":
        data = _dict(data, name)
        try:
            return cls(_count(data["k"], f"{name}.k"), _number(data["temperature"], f"{name}.temperature", 1e-9),
                       _number(data["weight"], f"{name}.weight", 0.0, 1.0), _count(data["bank_size"], f"{name}.bank_size"),
                       _count(data.get("validation_photos", 0), f"{name}.validation_photos", low=0))
        except KeyError as exc:
            raise ValueError(f"{name} lacks {exc.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        extra = {"validation_photos": self.validation_photos} if self.validation_photos else {}  # older model files lack it
        return {"k": self.k, "temperature": self.temperature, "weight": self.weight, "bank_size": self.bank_size, **extra}


@dataclass(frozen=True)
class Refit:
    """The network was trained again on the training and validation photos together (``photos``
    in all, ``epochs`` as validation had chosen), once everything was chosen on validation; the
    unknown score's threshold was carried over scaled by ``unknown_scale`` (see
    :mod:`vitrina.training.refit`). ``continued``: the network validation chose went on learning
    for the last ``epochs`` of its schedule, rather than a new one from the same start."""

    epochs: int
    photos: int
    validation_photos: int
    unknown_scale: float | None = None
    continued: bool = False

    @classmethod
    def parse(cls, data: Any, name: str = "refit") -> "Refit":
        data = _dict(data, name)
        try:
            return cls(_count(data["epochs"], f"{name}.epochs"), _count(data["photos"], f"{name}.photos"),
                       _count(data["validation_photos"], f"{name}.validation_photos", low=0),
                       _optional(data, "unknown_scale", lambda v, k: _number(v, f"{name}.{k}", 0.0)),
                       _flag(data.get("continued", False), f"{name}.continued"))
        except KeyError as exc:
            raise ValueError(f"{name} lacks {exc.args[0]!r}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"epochs": self.epochs, "photos": self.photos, "validation_photos": self.validation_photos}
        out.update({"unknown_scale": self.unknown_scale} if self.unknown_scale is not None else {})
        return {**out, "continued": True} if self.continued else out  # older model files lack it


@dataclass(frozen=True)
class MirrorAverage:
    """Average a photo's probabilities with its mirror image's when the first pass is unsure: its
    margin (top probability minus the second) is below ``margin`` (infinite: every photo).

    Chosen on the validation photos, where it cost ``passes`` network passes per photo on average
    and gained ``gain_points`` points of accuracy (``full_gain_points`` for every photo mirrored).
    """

    margin: float
    passes: float | None = None
    gain_points: float | None = None
    full_gain_points: float | None = None

    @classmethod
    def parse(cls, data: Any, name: str = "mirror") -> "MirrorAverage":
        data = _dict(data, name)
        margin = data.get("margin")
        margin = math.inf if margin is None else _number(margin, f"{name}.margin", 0.0)
        optional = {k: _optional(data, k, lambda v, key: _number(v, f"{name}.{key}")) for k in ("passes", "gain_points", "full_gain_points")}
        return cls(margin, **optional)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"margin": self.margin if math.isfinite(self.margin) else None}
        out.update({k: v for k, v in (("passes", self.passes), ("gain_points", self.gain_points),
                                      ("full_gain_points", self.full_gain_points)) if v is not None})
        return out

    def unsure(self, probs: np.ndarray) -> np.ndarray:
        """Rows whose first-pass margin is below the policy's margin: the photos to mirror."""
        if not math.isfinite(self.margin):
            return np.ones(len(probs), dtype=bool)
        return top_margin(probs) < self.margin

    def apply(self, probs: np.ndarray, mirrored: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, int]:
        """``probs`` with the unsure rows averaged with ``mirrored(rows)`` (their mirror images'
        probabilities); returns the probabilities and how many photos took the second pass."""
        rows = np.flatnonzero(self.unsure(probs))
        if len(rows) == 0:
            return probs, 0
        out = probs.copy()
        out[rows] = (probs[rows] + mirrored(rows)) / 2
        return out, len(rows)


def top_margin(probs: np.ndarray) -> np.ndarray:
    """Per row, the top probability minus the second (1 for a single class)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top2 = np.partition(probs, probs.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


@dataclass(frozen=True)
class ExportInfo:
    """How an ``.onnx`` file was made: precision, opset, interface names and the checks it passed."""

    precision: str = "fp32"
    opset: int | None = None
    input: str = INPUT_NAME
    output: str = OUTPUT_NAME
    outputs: tuple[str, ...] = (OUTPUT_NAME,)
    vitrina_version: str | None = None
    exported_at: str | None = None
    checks: Mapping[str, Any] = field(default_factory=dict)  # parity, check_images, int8 report, ...

    @classmethod
    def parse(cls, data: Any, name: str = "export") -> "ExportInfo":
        data = _dict(data, name)
        precision = data.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"{name}.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        outputs = data.get("outputs") or [data.get("output", OUTPUT_NAME)]
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise ValueError(f"{name}.outputs must be a list of names")
        known = {"precision", "opset", "input", "output", "outputs", "vitrina_version", "exported_at"}
        return cls(precision, data.get("opset"), str(data.get("input", INPUT_NAME)), str(data.get("output", OUTPUT_NAME)),
                   tuple(outputs), data.get("vitrina_version"), data.get("exported_at"),
                   {k: v for k, v in data.items() if k not in known})

    @property
    def weights_digest(self) -> str | None:
        """sha256 of the file's initializers, recorded at export (see :mod:`vitrina.inference.integrity`)."""
        return self.checks.get("weights_digest")

    @property
    def int8(self) -> Mapping[str, Any] | None:
        """The int8 export's accuracy report, in a quantised file."""
        return self.checks.get("int8")

    def to_dict(self) -> dict[str, Any]:
        return {"vitrina_version": self.vitrina_version, "precision": self.precision, "opset": self.opset,
                "input": self.input, "output": self.output, "outputs": list(self.outputs),
                "exported_at": self.exported_at, **self.checks}


@dataclass(frozen=True)
class ModelDescription:
    """Everything needed to rebuild and use a trained model besides its tensors."""

    model: str
    classes: tuple[str, ...]
    preprocess: Preprocess
    mode: str = "finetune"
    coarse_of: Mapping[str, str] = field(default_factory=dict)
    train_counts: Mapping[str, int] = field(default_factory=dict)  # photos per class the weights learned from (a refit: validation too): the mix drift is judged against
    head: str = "linear"
    hidden: int = 512
    dropout: float = 0.0
    trained_on: str | None = None
    precision: str = "fp32"  # of training
    temperature: float | None = None
    train_seconds: float | None = None
    thresholds: Thresholds | None = None
    unknown: UnknownDetector | None = None
    neighbours: NeighbourVote | None = None
    flip_average: bool = False  # the mirror average inside the network (models of vitrina 0.1.0)
    mirror: MirrorAverage | None = None  # the mirror average the predictor applies
    refit: Refit | None = None  # trained again on the validation photos too (its validation figures are from before)
    vitrina_version: str | None = None
    weights_digest: str | None = None  # sha256 of the weights as saved
    metrics: Mapping[str, Any] = field(default_factory=dict)  # carried by exported files
    export: ExportInfo | None = None  # set in exported files
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as read

    # ----------------------------------------------------------------- reading
    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "model description") -> "ModelDescription":
        """Parse and validate a description (``model.json`` content or ONNX metadata); ModelError names what is wrong."""
        if not isinstance(data, Mapping):
            raise ModelError(f"{source}: not a vitrina model description (a {type(data).__name__}, not a mapping)")
        if data.get("format", FORMAT) != FORMAT:
            raise ModelError(f"{source}: not a vitrina model description (format {data.get('format')!r})")
        try:
            return cls._parse(data)
        except (ValueError, TypeError, KeyError, ConfigError) as exc:
            reason = f"lacks {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise ModelError(f"{source}: damaged model description: {reason}") from None

    @classmethod
    def _parse(cls, data: Mapping[str, Any]) -> "ModelDescription":
        classes = data["classes"]
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError("classes must be a non-empty list of names")
        if len(set(classes)) != len(classes):
            raise ValueError("classes must be unique")
        if not isinstance(data["model"], str) or not data["model"]:
            raise ValueError("model must be a registry name")
        coarse_of = _dict(data.get("coarse_of") or {}, "coarse_of")
        known = {f.name for f in fields(cls)} | {"format"}
        return cls(
            model=data["model"],
            classes=tuple(classes),
            preprocess=Preprocess.from_dict(_dict(data["preprocess"], "preprocess")),
            mode=str(data.get("mode", "finetune")),
            coarse_of={str(k): str(v) for k, v in coarse_of.items()},
            train_counts={str(k): _count(v, f"train_counts.{k}", 0) for k, v in _dict(data.get("train_counts") or {}, "train_counts").items()},
            head=str(data.get("head", "linear")),
            hidden=_count(data.get("hidden", 512), "hidden"),
            dropout=_number(data.get("dropout", 0.0), "dropout", 0.0, 1.0),
            trained_on=data.get("trained_on"),
            precision=str(data.get("precision", "fp32")),
            temperature=_optional(data, "temperature", lambda v, k: _number(v, k, 0.0)),
            train_seconds=_optional(data, "train_seconds", lambda v, k: _number(v, k, 0.0)),
            thresholds=_optional(data, "thresholds", Thresholds.parse),
            unknown=_optional(data, "unknown", UnknownDetector.parse) if data.get("unknown") else None,
            neighbours=_optional(data, "neighbours", NeighbourVote.parse) if data.get("neighbours") else None,
            flip_average=bool(data.get("flip_average", False)),
            mirror=_optional(data, "mirror", MirrorAverage.parse),
            refit=_optional(data, "refit", Refit.parse),
            vitrina_version=data.get("vitrina_version"),
            weights_digest=data.get("weights_digest"),
            metrics=_dict(data.get("metrics") or {}, "metrics"),
            export=_optional(data, "export", ExportInfo.parse),
            extra={k: v for k, v in data.items() if k not in known},
        )

    # ----------------------------------------------------------------- writing
    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``model.json``, the ONNX metadata entry); :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {
            "format": FORMAT, "vitrina_version": self.vitrina_version, "model": self.model, "mode": self.mode,
            "classes": list(self.classes), "coarse_of": dict(self.coarse_of), "preprocess": self.preprocess.to_dict(),
            "head": self.head, "hidden": self.hidden, "dropout": self.dropout, "trained_on": self.trained_on,
            "precision": self.precision,
        }
        optional = {
            "train_counts": dict(self.train_counts) or None,
            "temperature": self.temperature, "train_seconds": self.train_seconds,
            "thresholds": self.thresholds.to_dict() if self.thresholds else None,
            "unknown": self.unknown.to_dict() if self.unknown else None,
            "neighbours": self.neighbours.to_dict() if self.neighbours else None,
            "flip_average": True if self.flip_average else None,
            "mirror": self.mirror.to_dict() if self.mirror else None, "weights_digest": self.weights_digest,
            "refit": self.refit.to_dict() if self.refit else None,
            "metrics": dict(self.metrics) or None, "export": self.export.to_dict() if self.export else None,
        }
        out.update({k: v for k, v in optional.items() if v is not None})
        out.update(self.extra)
        return out

    def with_changes(self, **changes: Any) -> "ModelDescription":
        return replace(self, **changes)

    # ----------------------------------------------------------------- derived
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def confidence_threshold(self) -> float | None:
        return self.thresholds.confidence if self.thresholds else None

    @property
    def vote_validation_photos(self) -> int:
        """How many of the neighbour vote's bank are the run's validation photos (its last rows)."""
        return self.neighbours.validation_photos if self.neighbours else 0

    @property
    def artifact_precision(self) -> str:
        """The precision of this artifact's weights: "int8" for a quantised export, else "fp32"."""
        return self.export.precision if self.export else "fp32"

