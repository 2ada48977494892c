"""What a model will cost to predict once exported, measured on this machine before it trains.

The network is exported to ONNX, quantised to int8 (as ``vitrina export`` writes it where int8
holds) and timed in one ONNX Runtime thread at the batch the predictor runs; decoding and
resizing are timed on a few of the training photos. ``vitrina predict`` runs one such worker per
core, so the expected rate is cores / (network + preprocessing per photo). The trained head and
the neighbour vote change the figure little; a mirror average, where one is kept, adds its passes.
"""
from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitrina.data.images import DEFAULT_MAX_PIXELS, open_sample
from vitrina.data.samples import Sample
from vitrina.errors import ImageError
from vitrina.inference.predictor import RUN_BATCH, default_threads
from vitrina.models.onnx_graph import INPUT_NAME, cached_graph, cpu_session, module_to_onnx, quantize_int8_graph
from vitrina.preprocess import Preprocess

PHOTOS_TIMED = 16


@dataclass(frozen=True)
class PredictionSpeed:
    """Per-photo CPU cost of prediction on this machine, and the rate it gives on ``cores`` cores."""

    network_ms: float  # the int8 network, one thread, per photo
    preprocess_ms: float  # decoding and resizing a photo
    cores: int

    @property
    def images_per_second(self) -> float:
        return self.cores * 1000.0 / max(self.network_ms + self.preprocess_ms, 1e-6)

    def describe(self) -> str:
        return (f"the exported model (int8) should predict about {self.images_per_second:.0f} images/s here "
                f"(network {self.network_ms:.1f} ms and decoding {self.preprocess_ms:.1f} ms per photo, {self.cores} cores)")


def measure_prediction_speed(
    model: nn.Module, preprocess: Preprocess, images: np.ndarray, samples: Sequence[Sample], cores: int | None = None,
    cache_dir: str | Path | None = None,
) -> PredictionSpeed:
    """Time ``model`` exported and quantised (calibrated on ``images``, uint8 NxHxWxC already
    resized) and the decoding of ``samples`` (a few training photos).

    ``cache_dir``: the int8 graph is kept there under a digest of the architecture and input
    shape (the weights barely change its speed), so later runs of the same model only time it.
    """
    cores = cores or default_threads()
    return PredictionSpeed(_network_ms(model, preprocess, images, cache_dir), _preprocess_ms(preprocess, samples), cores)


def _network_ms(model: nn.Module, preprocess: Preprocess, images: np.ndarray, cache_dir: str | Path | None) -> float:
    sample = np.asarray(images[:PHOTOS_TIMED])
    batch = preprocess.normalize(np.resize(sample, (RUN_BATCH, *sample.shape[1:])))
    with tempfile.TemporaryDirectory(prefix="vitrina-speed-") as tmp:
        shape = f"{preprocess.channels}x{preprocess.input_size}"
        key = hashlib.blake2b(f"{model!r}|{shape}".encode(), digest_size=12).hexdigest()
        path = Path(cache_dir) / "onnx" / f"speed-{key}.int8.onnx" if cache_dir is not None else Path(tmp) / "int8.onnx"
        session = cpu_session(cached_graph(path, lambda: _int8_graph(model, preprocess, sample, Path(tmp))), threads=1)
    session.run(None, {INPUT_NAME: batch})  # the first run allocates
    timings = []
    deadline = time.perf_counter() + 1.0
    while len(timings) < 5 or (time.perf_counter() < deadline and len(timings) < 50):
        started = time.perf_counter()
        session.run(None, {INPUT_NAME: batch})
        timings.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(timings) / RUN_BATCH


def _int8_graph(model: nn.Module, preprocess: Preprocess, calibration: np.ndarray, folder: Path):  # type: ignore[no-untyped-def]
    """``model`` as an int8 ONNX graph (an onnx.ModelProto), calibrated on ``calibration``."""
    import onnx  # lazy: onnx's Python package loads only where a graph is written

    size, channels = preprocess.input_size, preprocess.channels
    fp32, int8 = folder / "fp32.onnx", folder / "int8-new.onnx"
    fp32.write_bytes(module_to_onnx(model, torch.zeros(2, channels, size, size), INPUT_NAME, "logits").SerializeToString())
    quantize_int8_graph(fp32, int8, [preprocess.normalize(calibration)])
    return onnx.load_model(str(int8))


def _preprocess_ms(preprocess: Preprocess, samples: Sequence[Sample]) -> float:
    """Decoding and resizing, per photo, over the first readable of ``samples`` (0 when none is)."""
    timings = []
    for sample in samples[:PHOTOS_TIMED]:
        started = time.perf_counter()
        try:
            preprocess.to_uint8(open_sample(sample, preprocess.mode, DEFAULT_MAX_PIXELS, draft_size=preprocess.draft_size()))
        except (ImageError, OSError):
            continue
        timings.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(timings) if timings else 0.0
