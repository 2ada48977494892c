"""The one implementation of resize / crop / letterbox / normalise.

Training, evaluation, export parity checks, predict and serve all call :class:`Preprocess`, and
its settings travel with the weights (checkpoint, ONNX metadata, model card), so no two stages
can disagree on how an image becomes a tensor.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
from PIL import Image

from vitrina.errors import ConfigError

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes a model input.

    ``resize``: "center_crop" scales the shorter side to ``input_size / crop_pct`` and crops the
    centre; "letterbox" scales the longer side to ``input_size`` and pads to a square with
    ``pad_value`` (nothing of a non-square product photo is cut off); "squash" resizes to a
    square ignoring the aspect ratio.
    """

    input_size: int = 224
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    channels: int = 3
    resize: Literal["center_crop", "letterbox", "squash"] = "center_crop"
    crop_pct: float = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bilinear"
    pad_value: int = 255

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ConfigError(f"input size {self.input_size} is too small (minimum 8)")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConfigError("mean and std need one value per channel")
        if self.resize not in ("center_crop", "letterbox", "squash"):
            raise ConfigError(f"unknown resize mode {self.resize!r}")
        if self.interpolation not in _RESAMPLE:
            raise ConfigError(f"unknown interpolation {self.interpolation!r}")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in [0.1, 1], got {self.crop_pct}")

    # ----------------------------------------------------------------- serialisation
    @property
    def mode(self) -> str:
        """The PIL colour mode the model expects."""
        return "RGB" if self.channels == 3 else "L"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocess":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("mean", "std"):
            if key in known:
                known[key] = tuple(float(x) for x in known[key])
        return cls(**known)

    def with_overrides(self, **changes: Any) -> "Preprocess":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    # ----------------------------------------------------------------- geometry
    @property
    def scale_size(self) -> int:
        """Size the shorter side is scaled to before the centre crop."""
        if self.resize == "center_crop":
            return int(math.floor(self.input_size / self.crop_pct))
        return self.input_size

    def draft_size(self, width: int | None = None, height: int | None = None) -> tuple[int, int]:
        """The smallest decode size that loses nothing for this preprocessing (JPEG draft)."""
        s = self.scale_size
        return (s, s)

    def resize_image(self, img: Image.Image) -> Image.Image:
        """Resize / crop / pad a decoded image (already in :attr:`mode`) to the input size."""
        if img.mode != self.mode:
            img = img.convert(self.mode)
        size = self.input_size
        resample = _RESAMPLE[self.interpolation]
        w, h = img.size
        if self.resize == "squash":
            if (w, h) != (size, size):
                img = img.resize((size, size), resample, reducing_gap=3.0)
            return img
        if self.resize == "letterbox":
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), resample, reducing_gap=3.0)
            if (nw, nh) == (size, size):
                return img
            fill = self.pad_value if self.channels == 1 else (self.pad_value,) * 3
            canvas = Image.new(self.mode, (size, size), fill)
            canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
            return canvas
        # centre crop
        short = self.scale_size
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), resample, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        if (nw, nh) != (size, size):
            img = img.crop((left, top, left + size, top + size))
        return img

    def to_uint8(self, img: Image.Image) -> np.ndarray:
        """Resized image as a uint8 HxWxC array (C = channels)."""
        arr = np.asarray(self.resize_image(img), dtype=np.uint8)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return arr

    # ----------------------------------------------------------------- normalisation
    def normalize(self, batch: np.ndarray) -> np.ndarray:
        """uint8 NxHxWxC (or HxWxC) -> float32 NxCxHxW (or CxHxW), mean/std applied."""
        single = batch.ndim == 3
        if single:
            batch = batch[None]
        scale = np.asarray([1.0 / (255.0 * s) for s in self.std], dtype=np.float32)
        shift = np.asarray([m / s for m, s in zip(self.mean, self.std)], dtype=np.float32)
        out = batch.astype(np.float32) * scale - shift
        out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        return out[0] if single else out

    def normalize_torch(self, batch):  # type: ignore[no-untyped-def]
        """Torch version of :meth:`normalize` for uint8 NxHxWxC tensors; returns NCHW float32.

        Returned in channels_last memory layout, which CPU convolutions prefer.
        """
        import torch

        x = batch.permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    def __call__(self, img: Image.Image) -> np.ndarray:
        """Decoded image -> normalised float32 CxHxW array."""
        return self.normalize(self.to_uint8(img))
