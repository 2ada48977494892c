"""Frozen-backbone features of decoded images, computed once and cached on disk by image content."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from vitrina.data.cache import DecodedImages
from vitrina.errors import ConfigError
from vitrina.models.onnx_graph import OnnxFeatureExtractor
from vitrina.models.runtime import forward_uint8
from vitrina.training.augment import augment_batch
from vitrina.training.cache import FeatureStore
from vitrina.training.plan import Plan

Log = Callable[[str], None]
FEATURE_CHUNK = 256  # images decoded, augmented and embedded at a time


class BackboneFeatures:
    """Frozen-backbone features of decoded images, cached on disk by image content.

    On a CPU in fp32 the backbone runs through ONNX Runtime (``train.feature_runtime: auto``), about
    3x faster than eager PyTorch here; both compute the same function to float rounding, so they
    share the cache. The ONNX session is only built when some features are missing.
    """

    def __init__(
        self, model: nn.Module, model_id: str, plan: Plan, cache_dir: Path, device: torch.device,
        precision: str, runtime: str = "auto", log: Log = print,
    ):
        self.model, self.model_id, self.plan, self.cache_dir = model, model_id, plan, cache_dir
        self.device, self.precision, self.log = device, precision, log
        if runtime == "auto":
            runtime = "onnx" if device.type == "cpu" and precision == "fp32" else "torch"
        if runtime == "onnx" and (device.type != "cpu" or precision != "fp32"):
            raise ConfigError("train.feature_runtime=onnx runs on the CPU in fp32 (set train.device=cpu, train.precision=fp32)")
        self.runtime = runtime
        self._onnx: Any = None

    def _forward(self, images: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            if self._onnx is None:
                self._onnx = OnnxFeatureExtractor(self.model, self.plan.preprocess, self.cache_dir)
            return self._onnx(images)
        self.model.eval()
        return forward_uint8(self.model.forward_features, images, self.plan.preprocess, self.device, self.precision, batch_size=64)

    def __call__(self, decoded: DecodedImages, variant: str = "plain", transform: Any = None, seed: int = 0) -> np.ndarray:
        store = FeatureStore(self.cache_dir, f"{self.model_id}|{self.precision}", self.plan.preprocess, variant)
        feats, missing = store.lookup(decoded.hashes)
        if missing:
            started = time.perf_counter()
            torch.manual_seed(seed)
            parts = []
            # In chunks: augmentation works in float32, about 12x the uint8 images' memory.
            for start in range(0, len(missing), FEATURE_CHUNK):
                rows = missing[start : start + FEATURE_CHUNK]
                images = np.asarray(decoded.images[rows])
                if transform is not None:
                    images = augment_batch(transform, torch.from_numpy(images)).numpy()
                parts.append(self._forward(images))
            store.add([decoded.hashes[i] for i in missing], np.concatenate(parts))
            feats, _ = store.lookup(decoded.hashes)
            seconds = time.perf_counter() - started
            self.log(
                f"  features ({variant}, {self.runtime}): {len(missing)} images in {seconds:.1f} s "
                f"({len(missing) / max(seconds, 1e-9):.0f} images/s)"
            )
        assert feats is not None
        return feats


def extract_features(
    model: nn.Module,
    model_id: str,
    decoded: DecodedImages,
    plan: Plan,
    cache_dir: Path,
    device: torch.device,
    precision: str,
    variant: str = "plain",
    transform: Any = None,
    seed: int = 0,
    log: Log = print,
    runtime: str = "auto",
) -> np.ndarray:
    """Backbone features for every decoded image, from the cache where present (see :class:`BackboneFeatures`)."""
    return BackboneFeatures(model, model_id, plan, cache_dir, device, precision, runtime, log)(decoded, variant, transform, seed)
