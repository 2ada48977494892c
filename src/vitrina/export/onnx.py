"""ONNX export of a run: the network with its softmax, self-describing metadata, checked on real images.

The exported graph takes ``input`` (float32 N x C x H x W, already normalised by
:class:`~vitrina.preprocess.Preprocess`, dynamic batch) and returns ``probabilities`` (N x classes,
softmax inside the graph). The file's metadata entry ``vitrina`` holds the run's whole
``model.json`` (classes, preprocessing, model name, thresholds) plus its metrics and the export's
own checks, so an ``.onnx`` file alone is enough to predict.

Every export is checked against PyTorch on real images of the run's validation split; int8
quantisation (ONNX Runtime, static, QDQ, per channel) is calibrated on training images and its
accuracy change on the validation split is measured and recorded.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from vitrina import __version__
from vitrina.errors import DataError, ModelError
from vitrina.inference.predictor import SCORE_OUTPUT  # the unknown-photo score, when the model has a detector
from vitrina.preprocess import Preprocess

INPUT_NAME = "input"
OUTPUT_NAME = "probabilities"
METADATA_KEY = "vitrina"
OPSET = 18
PARITY_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-3  # the unknown score is 1 - a cosine similarity; its threshold has 6 decimals
INT8_TOLERANCE_POINTS = 1.0
PARITY_IMAGES = 64
CALIBRATION_IMAGES = 128
MAX_EVALUATION_IMAGES = 2000

Log = Callable[[str], None]

if TYPE_CHECKING:  # torch and onnx load only when exporting: predicting from a file needs neither
    import onnx
    from torch import nn

    from vitrina.inference.predictor import OnnxBackend
    from vitrina.quality.unknown import UnknownScore


class NoReferenceImages(ModelError):
    """Neither the run's data nor a given dataset has images for the export checks."""


@dataclass
class ReferenceImages:
    """Decoded real images for the export checks (uint8 N x H x W x C at the input size)."""

    validation: np.ndarray
    validation_labels: np.ndarray | None  # None when the run's data can no longer be loaded
    calibration: np.ndarray
    source: str


@dataclass
class ExportResult:
    onnx_path: Path
    card_path: Path
    parity: dict[str, Any]
    int8_path: Path | None = None
    int8: dict[str, Any] | None = None


# ----------------------------------------------------------------------------- graph
def to_onnx(model: nn.Module, preprocess: Preprocess, scorer: UnknownScore | None = None) -> onnx.ModelProto:
    """The fp32 network plus softmax as an ONNX graph with a dynamic batch axis.

    With ``scorer`` (the model's unknown-photo detector) the graph has a second output,
    :data:`SCORE_OUTPUT`, computed from the same forward pass.
    """
    import torch

    from vitrina.models.onnx_graph import module_to_onnx

    class WithSoftmax(torch.nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.net(x), dim=1)

    size = preprocess.input_size
    example = torch.zeros(2, preprocess.channels, size, size)  # batch 2: batch 1 would be specialised
    if scorer is None:
        return module_to_onnx(WithSoftmax(model), example, INPUT_NAME, OUTPUT_NAME, OPSET)
    from vitrina.quality.unknown import ScoredNet

    return module_to_onnx(ScoredNet(model, scorer), example, INPUT_NAME, [OUTPUT_NAME, SCORE_OUTPUT], OPSET)


def describe(meta: dict[str, Any], metrics: dict[str, Any], precision: str, checks: dict[str, Any],
             outputs: list[str] | None = None) -> dict[str, Any]:
    """The metadata an exported file carries: the model description, metrics and export checks."""
    return {
        **meta,
        "metrics": metrics,
        "export": {
            "vitrina_version": __version__,
            "precision": precision,
            "opset": OPSET,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
            "outputs": outputs or [OUTPUT_NAME],
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **checks,
        },
    }


def save_onnx(proto: onnx.ModelProto, path: Path, description: dict[str, Any]) -> Path:
    """Write ``proto`` with ``description`` as its ``vitrina`` metadata, atomically."""
    import onnx

    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(description, ensure_ascii=False))
    proto.producer_name, proto.producer_version = "vitrina", __version__
    proto.doc_string = f"vitrina {description['model']} classifier over {len(description['classes'])} classes"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save_model(proto, str(tmp))
    os.replace(tmp, path)
    return path


def parse_description(metadata: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The vitrina description from an ONNX file's metadata map; ModelError if absent or broken."""
    text = metadata.get(METADATA_KEY)
    if text is None:
        raise ModelError(
            f"{path}: an ONNX model without vitrina metadata (no labels or preprocessing); "
            "export it with `vitrina export RUN`"
        )
    try:
        description = json.loads(text)
        Preprocess.from_dict(description["preprocess"])
        if not description["classes"]:
            raise ValueError("no classes")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: damaged vitrina metadata in the ONNX file: {exc}") from None
    return description


def read_description(path: str | Path) -> dict[str, Any]:
    """The vitrina description stored in an exported ``.onnx`` file."""
    import onnx

    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for damaged files
        raise ModelError(f"{path}: not a readable ONNX model: {exc}") from None
    return parse_description({p.key: p.value for p in proto.metadata_props}, path)


# ----------------------------------------------------------------------------- reference images
def _evenly(items: list, limit: int) -> list:
    """At most ``limit`` items spread evenly over ``items`` (deterministic)."""
    if len(items) <= limit:
        return list(items)
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in picks]


def _decode(samples: list, preprocess: Preprocess, max_pixels: int | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of the readable samples and the positions they came from."""
    from vitrina.data.cache import decode_samples

    decoded = decode_samples(samples, preprocess, None, max_pixels=max_pixels, workers=1, progress=False)
    return np.asarray(decoded.images), decoded.index


def reference_images(run_dir: Path, meta: dict[str, Any], calibration: str | Path | None = None, *, int8: bool = False) -> ReferenceImages:
    """Validation images (with labels where known) and calibration images for the export checks.

    ``calibration``: a dataset (any form vitrina reads) to use instead of the run's own data;
    its validation split (carved from train when absent) is checked, its training split calibrates.
    Without ``int8`` only the few images of the parity check are decoded.
    """
    limit = MAX_EVALUATION_IMAGES if int8 else PARITY_IMAGES
    from vitrina import config as config_lib
    from vitrina.data.samples import Sample
    from vitrina.data.sources import load_dataset

    preprocess = Preprocess.from_dict(meta["preprocess"])
    config_path = run_dir / "config.yaml"
    cfg = config_lib.resolve(config_path if config_path.is_file() else None)
    splits_path = run_dir / "splits.json"
    listed = json.loads(splits_path.read_text(encoding="utf-8")) if splits_path.is_file() else {}
    source = str(calibration) if calibration is not None else listed.get("source")
    try:
        if source is None:
            raise DataError("the run folder does not say which data it was trained on")
        dataset = load_dataset(source, cfg.data, carve_val=True)
    except DataError:
        if calibration is not None:
            raise
        # The data moved: the file paths listed in splits.json still give real images, unlabelled.
        paths = [p for p in listed.get("splits", {}).get("val", []) if Path(p).is_file()]
        if not paths:
            raise NoReferenceImages(
                f"{run_dir}: the images it was trained on are no longer readable; "
                "pass a dataset for the export checks (--calibration DATA)"
            ) from None
        images, _ = _decode(_evenly([Sample(p, "") for p in paths], limit), preprocess, cfg.data.max_pixels)
        return ReferenceImages(images, None, images[:CALIBRATION_IMAGES], f"{source} (unlabelled)")

    index = {name: i for i, name in enumerate(meta["classes"])}
    validation = [s for s in dataset.split("val") if s.label in index]
    if calibration is None and listed.get("splits", {}).get("val"):
        wanted = set(listed["splits"]["val"])
        validation = [s for s in validation if s.path in wanted] or validation
    validation = _evenly(validation, limit)
    images, kept = _decode(validation, preprocess, cfg.data.max_pixels)
    if len(images) == 0:
        raise NoReferenceImages(f"{source}: no readable validation images for the export checks")
    labels = np.asarray([index[validation[i].label] for i in kept], dtype=np.int64)
    calibration_images = images
    if int8:
        calibration_images, _ = _decode(_evenly(dataset.split("train"), CALIBRATION_IMAGES), preprocess, cfg.data.max_pixels)
    return ReferenceImages(images, labels, calibration_images if len(calibration_images) else images, source)


# ----------------------------------------------------------------------------- checks
def parity_check(model: nn.Module, run: OnnxBackend, images: np.ndarray, preprocess: Preprocess,
                 scorer: UnknownScore | None = None) -> dict[str, Any]:
    """Largest probability (and unknown-score) difference and top-1 agreement of ``run`` against PyTorch fp32."""
    from vitrina.inference.predictor import TorchBackend

    reference = TorchBackend(model.float().eval(), scorer)
    diffs, score_diffs, agree = [], [], []
    for start in range(0, len(images), 32):
        batch = preprocess.normalize(images[start : start + 32])
        (expected, expected_scores), (got, got_scores) = reference.scored(batch), run.scored(batch)
        diffs.append(float(np.abs(expected - got).max()))
        agree.append(expected.argmax(1) == got.argmax(1))
        if scorer is not None:
            if got_scores is None:
                raise ModelError("the exported graph lacks the unknown-photo score output")
            score_diffs.append(float(np.abs(expected_scores - got_scores).max()))
    top1 = np.concatenate(agree)
    report = {
        "n_images": int(len(top1)),
        "max_abs_diff": max(diffs),
        "top1_identical": bool(top1.all()),
        "top1_agreement": float(top1.mean()),
        "tolerance": PARITY_TOLERANCE,
    }
    if score_diffs:
        report.update(score_max_abs_diff=max(score_diffs), score_tolerance=SCORE_TOLERANCE)
    return report


def images_per_second(run: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, min_seconds: float = 1.0) -> float:
    """Model-only throughput on one normalised batch, after a warm-up run."""
    run(batch)
    done, started = 0, time.perf_counter()
    while True:
        run(batch)
        done += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds and done >= 3 * len(batch):
            return done / elapsed


def _top1(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    return np.concatenate([run(preprocess.normalize(images[i : i + 64])).argmax(1) for i in range(0, len(images), 64)])


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray, preprocess: Preprocess) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            start = next(self.batches, None)
            return None if start is None else {INPUT_NAME: preprocess.normalize(calibration[start : start + 16])}

    import onnx

    with tempfile.TemporaryDirectory(prefix="vitrina-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))
        except Exception:  # noqa: BLE001 - its symbolic shape inference gives up on some graphs (the kNN score's TopK)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load_model(str(prepared)).graph
        # A quantised softmax would round every probability to a multiple of 1/255. Of the unknown
        # score only the product with the kNN bank is quantised: at batch 1 that product reads the
        # whole bank, so int8 makes it 4x cheaper; the rest of the score stays in float. The
        # neighbour vote mixes probabilities, so it stays in float whole.
        by_name = {node.name: node for node in graph.node}
        vote = _vote_nodes(onnx.load_model(str(fp32_path)).graph)
        excluded = [node.name for node in graph.node if node.op_type == "Softmax" or node.name in vote] + [
            name for name in _score_only_nodes(graph) if by_name[name].op_type != "MatMul"]
        quantize_static(
            str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
        )


def _vote_nodes(graph: onnx.GraphProto) -> set[str]:
    """Names of the neighbour vote's nodes (``VitrinaNet.vote``), by the exporter's module scopes.

    The torch.export-based exporter records them in each node's metadata, the TorchScript one in
    the node name; quant_pre_process keeps the names but drops the metadata.
    """
    def in_vote(node: onnx.NodeProto) -> bool:
        scopes = [p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"]
        return "/vote/" in node.name or any(".vote'" in value or "'vote'" in value for value in scopes)

    return {node.name for node in graph.node if in_vote(node)}


def _score_only_nodes(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes that the probabilities output does not depend on (the unknown-score subgraph)."""
    producer = {output: node for node in graph.node for output in node.output}
    needed, stack = set(), [OUTPUT_NAME]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in needed:
            continue
        needed.add(node.name)
        stack.extend(node.input)
    return [node.name for node in graph.node if node.name not in needed]


# ----------------------------------------------------------------------------- the export
def default_onnx_path(run_dir: Path) -> Path:
    return run_dir / "model.onnx"


def int8_path_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}.int8.onnx")


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
    from vitrina.export.card import write_model_card
    from vitrina.inference.predictor import OnnxBackend
    from vitrina.models.checkpoint import load_model

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise ModelError(f"{run_dir}: not a run folder (export takes the folder `vitrina train` wrote)")
    model, meta = load_model(run_dir)
    model = model.float().eval()
    metrics_path = run_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")) if metrics_path.is_file() else {}
    preprocess = Preprocess.from_dict(meta["preprocess"])
    path = Path(out) if out is not None else default_onnx_path(run_dir)
    if path.is_dir():
        path = path / default_onnx_path(run_dir).name
    elif path.suffix.lower() != ".onnx":
        path = path.with_suffix(".onnx")

    from vitrina.quality.unknown import load_unknown

    scorer = load_unknown(run_dir, meta.get("unknown"))
    started = time.perf_counter()
    proto = to_onnx(model, preprocess, scorer)
    outputs = f"probabilities and the unknown-photo score ({meta['unknown']['score']})" if scorer is not None else "probabilities"
    log(f"exported {meta['model']} to ONNX (opset {OPSET}; {outputs}) in {time.perf_counter() - started:.1f} s")
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
    description: dict[str, Any],
    fp32: Callable[[np.ndarray], np.ndarray],
    reference: ReferenceImages,
    preprocess: Preprocess,
    log: Log,
) -> tuple[Path, dict[str, Any]]:
    import onnx

    from vitrina.inference.predictor import OnnxBackend

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
    fp32_top1, int8_top1 = _top1(fp32, images, preprocess), _top1(int8, images, preprocess)
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
    save_onnx(proto, path, {**description, "export": {**description["export"], "precision": "int8", "int8": report}})
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
