"""``vitrina export``: a run folder to a checked, self-describing ONNX file (and int8) with a model card."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from vitrina.description import OUTPUT_NAME, SCORE_OUTPUT, ModelDescription
from vitrina.errors import ModelError
from vitrina.export.card import write_model_card
from vitrina.export.checks import (
    PARITY_IMAGES, PARITY_TOLERANCE, SCORE_TOLERANCE, ReferenceImages, top1_predictions, images_per_second, parity_check, reference_images,
)
from vitrina.export.graph import OPSET, describe, quantize_int8, save_onnx, to_onnx
from vitrina.export.paths import default_onnx_path, int8_path_for
from vitrina.inference.predictor import OnnxBackend
from vitrina.models.checkpoint import load_model
from vitrina.models.unknown import load_unknown
from vitrina.preprocess import Preprocess

INT8_TOLERANCE_POINTS = 1.0
Log = Callable[[str], None]


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    parity: dict[str, Any]
    int8_path: Path | None = None
    int8: dict[str, Any] | None = None


def export_run(
    run: str | Path,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    write_card: bool = True,
    log: Log = print,
) -> ExportResult:
    """Export a run folder to ONNX (``RUN/model.onnx`` unless ``out``), checked against PyTorch.

    Raises ModelError when the exported graph disagrees with PyTorch beyond
    :data:`PARITY_TOLERANCE` or on any top-1 decision. With ``int8`` a quantised file
    ``<name>.int8.onnx`` is written beside it and its accuracy change is measured.
    """
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: not a run folder (export takes the folder `vitrina train` wrote)")
    model, meta = load_model(run_dir)
    model = model.float().eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    preprocess = meta.preprocess
    path = Path(out) if out is not None else default_onnx_path(run_dir)
    if path.is_dir():
        path = path / default_onnx_path(run_dir).name
    elif path.suffix.lower() != ".onnx":
        path = path.with_suffix(".onnx")

    scorer = load_unknown(run_dir, meta.unknown)
    started = time.perf_counter()
    proto = to_onnx(model, preprocess, scorer)
    outputs = f"probabilities and the unknown-photo score ({meta.unknown.score})" if meta.unknown and scorer is not None else "probabilities"
    log(f"exported {meta.model} to ONNX (opset {OPSET}; {outputs}) in {time.perf_counter() - started:.1f} s")
    reference = reference_images(run_dir, meta, calibration, int8=int8)
    fp32 = OnnxBackend.from_bytes(proto.SerializeToString(), str(path))
    parity = parity_check(model, fp32, reference.validation[:PARITY_IMAGES], preprocess, scorer)
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
    save_onnx(proto, path, description)
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    result = ExportResult(onnx_path=path, card_path=path.with_suffix(".md"), parity=parity)

    if int8:
        result.int8_path, result.int8 = _export_int8(path, description, fp32, reference, preprocess, log)
    if write_card:
        write_model_card(result.card_path, description, int8=result.int8, int8_file=result.int8_path)
        log(f"wrote {result.card_path}")
    return result


def _export_int8(
    fp32_path: Path,
    description: ModelDescription,
    fp32: Callable[[np.ndarray], np.ndarray],
    reference: ReferenceImages,
    preprocess: Preprocess,
    log: Log,
) -> tuple[Path, dict[str, Any]]:
    if reference.validation_labels is None:
        raise ModelError(
            "int8 export measures the accuracy change on labelled validation images; the run's data "
            "cannot be loaded, so pass a dataset (--calibration DATA)"
        )
    path = int8_path_for(fp32_path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    started = time.perf_counter()
    try:
        quantize_int8(fp32_path, tmp, reference.calibration, preprocess)
        proto = onnx.load_model(str(tmp))
    except Exception as exc:  # noqa: BLE001 - the quantiser raises many types
        raise ModelError(f"{fp32_path}: int8 quantisation failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    int8 = OnnxBackend.from_bytes(proto.SerializeToString(), str(path))
    images, labels = reference.validation, reference.validation_labels
    fp32_top1, int8_top1 = top1_predictions(fp32, images, preprocess), top1_predictions(int8, images, preprocess)
    fp32_accuracy, int8_accuracy = float((fp32_top1 == labels).mean()), float((int8_top1 == labels).mean())
    change = (int8_accuracy - fp32_accuracy) * 100.0
    batch = preprocess.normalize(np.resize(images, (32, *images.shape[1:])))
    report = {
        "n_images": int(len(labels)),
        "calibration_images": int(len(reference.calibration)),
        "fp32_accuracy": fp32_accuracy,
        "int8_accuracy": int8_accuracy,
        "accuracy_change_points": change,
        "within_tolerance": abs(change) <= INT8_TOLERANCE_POINTS,
        "top1_agreement": float((fp32_top1 == int8_top1).mean()),
        "tolerance_points": INT8_TOLERANCE_POINTS,
        "fp32_images_per_second": images_per_second(fp32, batch),
        "int8_images_per_second": images_per_second(int8, batch),
        "quantize_seconds": round(time.perf_counter() - started, 2),
    }
    assert description.export is not None
    export = replace(description.export, precision="int8", checks={**description.export.checks, "int8": report})
    save_onnx(proto, path, description.with_changes(export=export))
    log(
        f"int8 on {report['n_images']} validation images: accuracy {fp32_accuracy:.4f} (fp32) -> {int8_accuracy:.4f} (int8), "
        f"change {change:+.2f} points, same top-1 as fp32 on {report['top1_agreement']:.1%}; model-only speed {report['fp32_images_per_second']:.0f} -> "
        f"{report['int8_images_per_second']:.0f} images/s at batch 32"
    )
    if not report["within_tolerance"]:
        log(
            f"WARNING: int8 changes validation accuracy by {change:+.2f} points, more than the "
            f"{INT8_TOLERANCE_POINTS:g} allowed; {path} was kept but prefer the fp32 file {fp32_path}"
        )
    log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path, report
