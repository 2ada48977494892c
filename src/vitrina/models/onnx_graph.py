"""Torch modules as ONNX graphs and ONNX Runtime sessions.

ONNX Runtime runs a clean, statically padded graph of a mobile backbone 3-8x faster on a CPU than
eager PyTorch, so frozen-backbone features (bottleneck training, the fine-tuning warm start,
data cleaning) and exported models both go through here.
"""
from __future__ import annotations

import copy
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vitrina.data.cache import touch_entry
from vitrina.errors import ModelError
from vitrina.preprocess import Preprocess

INPUT_NAME = "image"
NOT_FEATURES = ("head.", "vote.")  # a network's weights that ``forward_features`` does not use


def module_to_onnx(module: nn.Module, example: torch.Tensor, input_name: str, output_name: str | list[str], opset: int = 18):  # type: ignore[no-untyped-def]
    """``module`` as an fp32 ONNX graph (onnx.ModelProto) with a dynamic batch axis.

    ``output_name`` names the module's output, or each of its outputs when it returns a tuple.

    The torch.export-based exporter comes first: it folds TensorFlow-style "same" padding into
    static pads, which ONNX Runtime fuses into the convolutions (about 2x faster than the
    TorchScript exporter's graph here). Architectures that defeat torch.export fall back to it.
    """
    import onnx

    # A copy: .float() and .to() work in place, and the caller may go on training its module.
    module = copy.deepcopy(module).cpu().float().to(memory_format=torch.contiguous_format).eval()
    output_names = [output_name] if isinstance(output_name, str) else list(output_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module, (example,), dynamo=True, verbose=False, opset_version=opset,
                input_names=[input_name], output_names=output_names,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )
            return program.model_proto
        except Exception as dynamo_error:  # noqa: BLE001
            buffer = io.BytesIO()
            try:
                torch.onnx.export(
                    module, (example,), buffer, dynamo=False, opset_version=opset,
                    input_names=[input_name], output_names=output_names,
                    dynamic_axes={name: {0: "batch"} for name in [input_name, *output_names]},
                )
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"cannot export the network to ONNX: {dynamo_error}; {exc}") from None
            return onnx.load_from_string(buffer.getvalue())


def quantize_int8_graph(
    fp32_path: Path, int8_path: Path, batches: Iterable[np.ndarray],
    exclude: Callable[[Any], list[str]] | None = None, input_name: str = INPUT_NAME,
) -> None:
    """Static int8 quantisation of an fp32 graph (QDQ, per-channel int8 weights, uint8 activations),
    calibrated on ``batches`` of normalised inputs; ``exclude`` names nodes of the prepared graph
    (an onnx.GraphProto) to keep in float. The weights keep 7 bits (``reduce_range``): on x86 CPUs
    without VNNI, uint8 x int8 products summed in pairs into 16 bits saturate with 8-bit weights
    (docs/prediction.md#int8), and a file may run on a CPU other than the one that made it."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="vitrina-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(fp32_path), str(prepared))
        except Exception:  # noqa: BLE001 - its symbolic shape inference gives up on some graphs (the kNN score's TopK)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = exclude(onnx.load_model(str(prepared)).graph) if exclude is not None else []
        quantize_static(
            str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded, reduce_range=True,
        )


def cpu_session(model: bytes | str | Path, threads: int | None = None):  # type: ignore[no-untyped-def]
    """An ONNX Runtime CPU session using ``threads`` intra-op threads (default: torch's setting)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def cached_graph(path: Path, export: Callable[[], Any]) -> Path:
    """``path``, first written with the ONNX graph ``export()`` returns when it does not exist yet."""
    if not path.is_file():
        proto = export()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_bytes(proto.SerializeToString())
        os.replace(tmp, path)
    touch_entry(path)  # pruning the cache removes the graphs no run has used for longest
    return path


def weights_digest(module: nn.Module, skip_prefix: str | tuple[str, ...] | None = None) -> str:
    """A digest of the parameters and buffers (those under ``skip_prefix``, one or several, left out)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        if skip_prefix and name.startswith(skip_prefix):
            continue
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _Features(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(x)


class OnnxFeatureExtractor:
    """A network's ``forward_features`` run by ONNX Runtime on uint8 NxHxWxC images.

    The exported graph is kept in ``cache_dir/onnx`` under a digest of the body's weights and the
    input size, so a second run skips the export (about 15 s for efficientnet_lite0). Neither the
    classification head nor the neighbour vote (whose bank grows in training) plays a part in the
    features, so they are left out of the digest.
    """

    def __init__(self, model: nn.Module, preprocess: Preprocess, cache_dir: str | Path, threads: int | None = None):
        self.preprocess = preprocess
        size, channels = preprocess.input_size, preprocess.channels
        path = cached_graph(
            self.graph_path(model, preprocess, cache_dir),
            lambda: module_to_onnx(_Features(model), torch.zeros(2, channels, size, size), INPUT_NAME, "features"),
        )
        self.session = cpu_session(path, threads)

    @staticmethod
    def graph_path(model: nn.Module, preprocess: Preprocess, cache_dir: str | Path) -> Path:
        """Where the exported graph of ``model``'s body for this input lives (it may not exist yet)."""
        shape = f"{preprocess.channels}x{preprocess.input_size}"
        body = weights_digest(model, skip_prefix=NOT_FEATURES)
        key = hashlib.blake2b(f"{body}|{shape}".encode(), digest_size=12).hexdigest()
        return Path(cache_dir) / "onnx" / f"features-{key}.onnx"

    def __call__(self, images: np.ndarray, batch_size: int = 32, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """float32 features for uint8 NxHxWxC ``images``; the next batch is normalised while ORT runs."""
        if len(images) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        starts = range(0, len(images), batch_size)
        outputs = []
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(self.preprocess.normalize, np.asarray(images[0:batch_size]))
            for i, start in enumerate(starts):
                batch = pending.result()
                if i + 1 < len(starts):
                    nxt = starts[i + 1]
                    pending = pool.submit(self.preprocess.normalize, np.asarray(images[nxt : nxt + batch_size]))
                out = self.session.run(None, {INPUT_NAME: batch})[0]
                outputs.append(out.reshape(len(out), -1))
                if progress is not None:
                    progress(len(out))
        return np.concatenate(outputs).astype(np.float32, copy=False)
