"""Running a model efficiently on CPU or CUDA: device and precision choice, batched forward."""
from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from vitrina.errors import ConfigError
from vitrina.models.onnx_graph import OnnxFeatureExtractor
from vitrina.preprocess import Preprocess, mirror_images


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but no CUDA GPU is available")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision of inference (evaluation, frozen features and stages, validation).

    On a CPU always fp32: frozen parts run in ONNX Runtime in fp32, and results match the exported
    model. On CUDA, "auto" is bf16 autocast where the GPU supports it.
    """
    if device.type != "cuda":
        return "fp32"
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_bf16_supported() else "fp32"


def resolve_training_precision(precision: str, device: torch.device, *, frozen_prefix: bool = False) -> str:
    """The precision of the optimisation steps (the blocks that train): "auto" is bf16 autocast on
    CUDA GPUs that support it, and on CPUs with native bf16 (AVX512-BF16 or AMX) unless only the
    last blocks train behind a frozen prefix (``frozen_prefix``); else fp32.

    Measured on 2 cores with AVX512-BF16 (bench/bench_train_speed.py, efficientnet_lite0 at
    288 px, batch 32): every block trained 1.46-1.70x faster in bf16; the last 3 or 4 blocks behind
    the ONNX Runtime prefix 0.84-0.96x (the small tail gains less than the conversions cost);
    scratch CNNs (fmnist_cnn, cnn3) 1.33-1.53x faster. Without those instructions bf16 training
    measured about 3x slower.
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() and not frozen_prefix else "fp32"


CPUINFO = Path("/proc/cpuinfo")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    try:
        flags = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        flags = ""
    if flags:
        return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))
    try:  # other systems: oneDNN's own check (a private PyTorch op, hence the guard)
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batches(n: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.inference_mode()
def forward_uint8(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 64,
) -> np.ndarray:
    """Run ``fn`` (a model or its feature extractor) over uint8 NxHxWxC images; float32 output."""
    outputs = []
    for part in batches(len(images), batch_size):
        x = preprocess.normalize_torch(torch.from_numpy(np.array(images[part]))).to(device, non_blocking=True)
        with autocast(device, precision):
            out = fn(x)
        outputs.append(out.float().cpu().numpy())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(outputs)


# Exporting a body to ONNX takes 15-25 s on two cores whatever the input size; ONNX Runtime then saves
# about 70 ms a photo at 288 px, 44 at 224 and 3 at 64 over eager PyTorch (efficientnet_lite0, fp32),
# so the export pays for itself from about 220, 400 and 7,500 photos: some 20 million pixels.
EXPORT_PAYS_FROM_PIXELS = 20_000_000


def export_pays(n_images: int, input_size: int) -> bool:
    """Whether ``n_images`` photos at ``input_size`` px are enough to pay for exporting a body to ONNX."""
    return n_images * input_size**2 >= EXPORT_PAYS_FROM_PIXELS


def body_in_onnx(model: torch.nn.Module, preprocess: Preprocess, n_images: int, cache_dir: str | Path | None,
                 device: torch.device, precision: str) -> bool:
    """Whether ``model``'s body should run in ONNX Runtime for ``n_images`` photos: on a CPU in fp32,
    where its graph is in ``cache_dir`` already or the photos pay for the export."""
    if cache_dir is None or device.type != "cpu" or precision != "fp32" or not n_images:
        return False
    return export_pays(n_images, preprocess.input_size) or OnnxFeatureExtractor.graph_path(model, preprocess, cache_dir).is_file()


def predict_logits(
    model: torch.nn.Module,
    images: np.ndarray,
    preprocess: Preprocess,
    device: torch.device,
    precision: str = "fp32",
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Logits of ``model`` for uint8 NxHxWxC images.

    On a CPU in fp32, a network with a separate body and head (every registry model) runs its
    body through ONNX Runtime when the body's graph is already in ``cache_dir`` (bottleneck
    training exports it) or when there are enough images to pay for the export; the head stays
    in PyTorch. Otherwise, eager PyTorch.
    """
    model.eval()
    has_body = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    if has_body and body_in_onnx(model, preprocess, len(images), cache_dir, device, precision):
        extractor = OnnxFeatureExtractor(model, preprocess, cache_dir)  # type: ignore[arg-type]
        with torch.inference_mode():
            logits = model.forward_head(torch.from_numpy(extractor(images)).to(device)).float()
            if getattr(model, "flip_average", False):  # as VitrinaNet.forward: with the mirror images
                flipped = model.forward_head(torch.from_numpy(extractor(mirror_images(images))).to(device)).float()
                probs = (torch.softmax(logits, dim=1) + torch.softmax(flipped, dim=1)) / 2
                logits = torch.log(probs.clamp_min(1e-12))
            return logits.numpy()
    return forward_uint8(model, images, preprocess, device, precision, batch_size=batch_size)
