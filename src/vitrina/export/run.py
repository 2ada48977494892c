"""``vitrina export``: a run folder to a checked, self-describing ONNX file with a model card.

The fp32 graph is checked against PyTorch; then, unless fp32 is asked for, an int8 copy is
quantised (static, calibrated on training photos) and both are measured on the labelled
validation photos as a user gets them (neighbour vote and mirror average included). The
precision written at ``--out`` (default ``RUN/model.onnx``) is int8 when it loses at most
``int8_tolerance`` points of accuracy, else fp32; the other precision is written beside it
(``model.fp32.onnx`` or ``model.int8.onnx``). Every file records which was chosen and why.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import onnx

from vitrina.description import OUTPUT_NAME, SCORE_OUTPUT, ModelDescription
from vitrina.errors import ConfigError, ModelError
from vitrina.export.card import write_model_card
from vitrina.export.checks import (
    PARITY_IMAGES, PARITY_TOLERANCE, SCORE_TOLERANCE, ReferenceImages, images_per_second, parity_check, reference_images,
)
from vitrina.export.graph import OPSET, describe, quantize_int8, save_onnx, to_onnx
from vitrina.export.paths import default_onnx_path, precision_path_for
from vitrina.inference.integrity import onnx_weights_digest
from vitrina.inference.predictor import OnnxBackend, Predictor
from vitrina.models.checkpoint import load_model
from vitrina.models.unknown import load_unknown
from vitrina.preprocess import Preprocess

INT8_TOLERANCE_POINTS = 0.5  # the default of export.int8_tolerance
Precision = Literal["auto", "fp32", "int8"]
Log = Callable[[str], None]


@dataclass
class ExportResult:
    onnx_path: Path  # the chosen precision, at --out
    card_path: Path
    parity: dict[str, Any]
    precision: str = "fp32"  # the precision at onnx_path
    choice: dict[str, Any] | None = None  # which precision was chosen and why
    int8_path: Path | None = None
    int8: dict[str, Any] | None = None  # the int8 file's accuracy and speed against fp32
    fp32_path: Path | None = None


@dataclass
class _Graphs:
    """The fp32 export, checked, and what the int8 step needs."""

    fp32: onnx.ModelProto
    description: ModelDescription
    reference: ReferenceImages
    parity: dict[str, Any]
    # The graph int8's accuracy check quantises and compares instead of ``fp32``: the model with
    # its neighbour vote's validation photos left out, which would otherwise find themselves.
    check_fp32: onnx.ModelProto | None = None


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    precision: Precision = "auto",
    int8_tolerance: float = INT8_TOLERANCE_POINTS,
    calibration: str | Path | None = None,
    write_card: bool = True,
    log: Log = print,
) -> ExportResult:
    """Export a run folder to ONNX at ``out`` (default ``RUN/model.onnx``), checked against PyTorch.

    ``precision``: "auto" writes int8 when it is within ``int8_tolerance`` points of fp32's
    validation accuracy, else fp32 (the other beside it); "fp32" or "int8" force one. Raises
    ModelError when the graph disagrees with PyTorch beyond :data:`PARITY_TOLERANCE` or on any
    top-1 decision (nothing is written then).
    """
    if precision not in ("auto", "fp32", "int8"):
        raise ConfigError(f"unknown precision {precision!r} (choose auto, fp32 or int8)")
    if not 0 <= int8_tolerance <= 100:
        raise ConfigError(f"export.int8_tolerance must be between 0 and 100 points, got {int8_tolerance}")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: not a run folder (export takes the folder `vitrina train` wrote)")
    path = _output_path(run_dir, out)
    graphs = _fp32_graph(run_dir, path, calibration, precision != "fp32", log)
    labelled = graphs.reference.validation_labels is not None
    if precision == "int8" and not labelled:
        raise ModelError(
            "int8 export measures the accuracy change on labelled validation images; the run's data "
            "cannot be loaded, so pass a dataset (--calibration DATA)"
        )
    if precision == "fp32" or not labelled:
        reason = "asked for (--fp32)" if precision == "fp32" else "no labelled validation photos to check int8 against"
        return _write(path, graphs, graphs.fp32, "fp32", {"chosen": "fp32", "reason": reason}, None, None, write_card, log)
    int8_proto, report = _int8(path, graphs, log)
    within = report["accuracy_change_points"] >= -int8_tolerance
    chosen = "int8" if precision == "int8" or within else "fp32"
    reason = ("asked for (--int8)" if precision == "int8" else
              f"int8 changes validation accuracy by {report['accuracy_change_points']:+.2f} points "
              f"({'within' if chosen == 'int8' else 'beyond'} the {int8_tolerance:g}-point tolerance)")
    choice = {"chosen": chosen, "reason": reason, "tolerance_points": int8_tolerance}
    report = {**report, "within_tolerance": within, "tolerance_points": int8_tolerance}
    other = "fp32" if chosen == "int8" else "int8"
    return _write(path, graphs, int8_proto if chosen == "int8" else graphs.fp32, chosen, choice,
                  (other, graphs.fp32 if other == "fp32" else int8_proto), report, write_card, log)


def accuracy_change_points(fp32_top1: np.ndarray, int8_top1: np.ndarray, labels: np.ndarray) -> float:
    """int8's accuracy minus fp32's, in points, from the photo counts: a change of exactly the
    tolerance (3 of 600 photos against 0.5 points) compares equal to it, not a rounding beyond."""
    gained = int((int8_top1 == labels).sum()) - int((fp32_top1 == labels).sum())
    return 100.0 * gained / max(1, len(labels))


def _output_path(run_dir: Path, out: str | Path | None) -> Path:
    path = Path(out) if out is not None else default_onnx_path(run_dir)
    if path.is_dir():
        return path / default_onnx_path(run_dir).name
    return path if path.suffix.lower() == ".onnx" else path.with_suffix(".onnx")


def _fp32_graph(run_dir: Path, path: Path, calibration: str | Path | None, with_int8: bool, log: Log) -> _Graphs:
    """The fp32 graph of the run's model, checked against PyTorch on real validation photos."""
    model, meta = load_model(run_dir)
    model = model.float().eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    scorer = load_unknown(run_dir, meta.unknown)
    started = time.perf_counter()
    proto = to_onnx(model, meta.preprocess, scorer)
    outputs = f"probabilities and the unknown-photo score ({meta.unknown.score})" if meta.unknown and scorer is not None else "probabilities"
    log(f"exported {meta.model} to ONNX (opset {OPSET}; {outputs}) in {time.perf_counter() - started:.1f} s")
    reference = reference_images(run_dir, meta, calibration, int8=with_int8)
    fp32 = OnnxBackend.from_bytes(proto.SerializeToString(), str(path))
    parity = parity_check(model, fp32, reference.validation[:PARITY_IMAGES], meta.preprocess, scorer)
    scores = (f", max |score_onnx - score_torch| = {parity['score_max_abs_diff']:.2e} "
              f"(limit {SCORE_TOLERANCE:.0e})") if scorer is not None else ""
    log(
        f"parity on {parity['n_images']} validation images: max |p_onnx - p_torch| = {parity['max_abs_diff']:.2e} "
        f"(limit {PARITY_TOLERANCE:.0e}), identical top-1: {parity['top1_agreement']:.1%}{scores}"
    )
    if (parity["max_abs_diff"] > PARITY_TOLERANCE or not parity["top1_identical"]
            or parity.get("score_max_abs_diff", 0.0) > SCORE_TOLERANCE):
        raise ModelError(
            f"{run_dir}: the ONNX graph disagrees with PyTorch (max probability difference "
            f"{parity['max_abs_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.1%}"
            f"{scores}); nothing was written"
        )
    description = describe(meta, metrics, "fp32", {"parity": parity, "check_images": reference.source},
                           outputs=[OUTPUT_NAME] + ([SCORE_OUTPUT] if scorer is not None else []))
    held = meta.vote_validation_photos if model.vote is not None else 0
    check = None
    if with_int8 and held:
        model.vote = model.vote.without_last(held)
        check = to_onnx(model, meta.preprocess, scorer)
        log(f"int8's accuracy check leaves the {held} validation photos out of the neighbour vote's bank")
    if with_int8 and meta.refit is not None:
        log("the network was refit on its validation photos, so int8's accuracy check on them may understate "
            "what int8 changes on new photos (--fp32 keeps the float model)")
    return _Graphs(proto, description, reference, parity, check)


def _int8(path: Path, graphs: _Graphs, log: Log) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The int8 graph and its accuracy and speed against fp32 on the labelled validation photos."""
    reference, description = graphs.reference, graphs.description
    preprocess = description.preprocess
    started = time.perf_counter()
    proto = _quantized(path, graphs.fp32, reference.calibration, preprocess)
    fp32 = Predictor(OnnxBackend.from_bytes(graphs.fp32.SerializeToString(), "fp32"), description, "fp32")
    int8 = Predictor(OnnxBackend.from_bytes(proto.SerializeToString(), "int8"), description, "int8")
    check_fp32, check_int8 = (fp32, int8) if graphs.check_fp32 is None else _check_pair(path, graphs)
    images, labels = reference.validation, reference.validation_labels
    fp32_top1, int8_top1 = check_fp32.predict_arrays(images).argmax(1), check_int8.predict_arrays(images).argmax(1)
    fp32_accuracy, int8_accuracy = float((fp32_top1 == labels).mean()), float((int8_top1 == labels).mean())
    change_points = accuracy_change_points(fp32_top1, int8_top1, labels)
    batch = preprocess.normalize(np.resize(images, (32, *images.shape[1:])))
    report = {
        "n_images": int(len(labels)),
        "calibration_images": int(len(reference.calibration)),
        "fp32_accuracy": fp32_accuracy,
        "int8_accuracy": int8_accuracy,
        "accuracy_change_points": change_points,
        "top1_agreement": float((fp32_top1 == int8_top1).mean()),
        "fp32_images_per_second": images_per_second(fp32.backend, batch),
        "int8_images_per_second": images_per_second(int8.backend, batch),
        "quantize_seconds": round(time.perf_counter() - started, 2),
        **({"vote_photos_left_out": description.vote_validation_photos} if graphs.check_fp32 is not None else {}),
    }
    log(
        f"int8 on {report['n_images']} validation images: accuracy {fp32_accuracy:.4f} (fp32) -> {int8_accuracy:.4f} (int8), "
        f"change {report['accuracy_change_points']:+.2f} points, same top-1 as fp32 on {report['top1_agreement']:.1%}; "
        f"model-only speed {report['fp32_images_per_second']:.0f} -> {report['int8_images_per_second']:.0f} images/s at batch 32"
    )
    return proto, report


def _check_pair(path: Path, graphs: _Graphs) -> tuple[Predictor, Predictor]:
    """fp32 and int8 predictors of ``graphs.check_fp32``, for int8's accuracy check."""
    assert graphs.check_fp32 is not None
    description = graphs.description
    check_int8 = _quantized(path, graphs.check_fp32, graphs.reference.calibration, description.preprocess)
    return (Predictor(OnnxBackend.from_bytes(graphs.check_fp32.SerializeToString(), "fp32"), description, "fp32"),
            Predictor(OnnxBackend.from_bytes(check_int8.SerializeToString(), "int8"), description, "int8"))


def _quantized(path: Path, fp32: onnx.ModelProto, calibration: np.ndarray, preprocess: Preprocess) -> onnx.ModelProto:
    """``fp32`` quantised to int8 (static, calibrated on ``calibration``), through temporary files beside ``path``."""
    tmp_fp32 = path.with_name(f".{path.stem}.fp32-for-int8.tmp{os.getpid()}.onnx")
    tmp_int8 = path.with_name(f".{path.stem}.int8.tmp{os.getpid()}.onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        onnx.save_model(fp32, str(tmp_fp32))
        quantize_int8(tmp_fp32, tmp_int8, calibration, preprocess)
        return onnx.load_model(str(tmp_int8))
    except Exception as exc:  # noqa: BLE001 - the quantiser raises many types
        raise ModelError(f"{path}: int8 quantisation failed: {exc}") from None
    finally:
        tmp_fp32.unlink(missing_ok=True)
        tmp_int8.unlink(missing_ok=True)


def _write(
    path: Path, graphs: _Graphs, chosen_proto: onnx.ModelProto, chosen: str, choice: dict[str, Any],
    other: tuple[str, onnx.ModelProto] | None, int8_report: dict[str, Any] | None, write_card: bool, log: Log,
) -> ExportResult:
    """Write the chosen precision at ``path``, the other beside it, and the model card."""
    description = graphs.description
    files = {chosen: path, **({other[0]: precision_path_for(path, other[0])} if other else {})}
    choice = {**choice, "files": {name: file.name for name, file in files.items()}}
    protos = {chosen: chosen_proto, **({other[0]: other[1]} if other else {})}
    for name, proto in protos.items():
        assert description.export is not None
        checks = {**description.export.checks, "choice": choice, **({"int8": int8_report} if int8_report else {}),
                  "weights_digest": onnx_weights_digest(proto.graph)}
        save_onnx(proto, files[name], description.with_changes(export=replace(description.export, precision=name, checks=checks)))
        log(f"wrote {files[name]} ({files[name].stat().st_size / 1e6:.1f} MB, {name}{', the model' if name == chosen else ''})")
    log(f"chose {chosen}: {choice['reason']}")
    result = ExportResult(onnx_path=path, card_path=path.with_suffix(".md"), parity=graphs.parity, precision=chosen, choice=choice,
                          int8_path=files.get("int8"), int8=int8_report, fp32_path=files.get("fp32"))
    if write_card:
        final = description.with_changes(export=replace(description.export, precision=chosen,
                                                        checks={**description.export.checks, "choice": choice}))
        write_model_card(result.card_path, final, int8=int8_report, int8_file=files.get("int8"))
        log(f"wrote {result.card_path}")
    return result
