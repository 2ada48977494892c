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

MAX_INPUT_SIZE = 2048  # a model input of 2048 x 2048 is already 16x what classifiers use; larger is a mistake
# Pillow's default: a large downscale first averages whole pixel blocks (Image.reduce).
_REDUCING_GAP = 3.0
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
        if isinstance(self.input_size, bool) or not isinstance(self.input_size, int):
            raise ConfigError(f"input size must be a whole number of pixels, got {self.input_size!r}")
        if self.input_size < 8:
            raise ConfigError(f"input size {self.input_size} is too small (minimum 8)")
        if self.input_size > MAX_INPUT_SIZE:
            raise ConfigError(f"input size {self.input_size} is too large (at most {MAX_INPUT_SIZE})")
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
                img = img.resize((size, size), resample, reducing_gap=_REDUCING_GAP)
            return img
        if self.resize == "letterbox":
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            if (nw, nh) != (w, h):
                img = img.resize((nw, nh), resample, reducing_gap=_REDUCING_GAP)
            if (nw, nh) == (size, size):
                return img
            fill = self.pad_value if self.channels == 1 else (self.pad_value,) * 3
            canvas = Image.new(self.mode, (size, size), fill)
            canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
            return canvas
        # centre crop: the pixels of resizing to (nw, nh) and cropping the centre, computed
        # for the crop alone where that is exact (see _resize_crop)
        short = self.scale_size
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        left, top = (nw - size) // 2, (nh - size) // 2
        if (nw, nh) != (w, h):
            if resample != Image.Resampling.NEAREST:
                return _resize_crop(img, (nw, nh), (left, top), size, resample)
            img = img.resize((nw, nh), resample, reducing_gap=_REDUCING_GAP)
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
        scale = np.asarray([1.0 / (255.0 * s) for s in self.std], dtype=np.float32)[:, None, None]
        shift = np.asarray([m / s for m, s in zip(self.mean, self.std)], dtype=np.float32)[:, None, None]
        if batch.dtype != np.uint8:
            batch = batch.astype(np.float32, copy=False)
        n, h, w, c = batch.shape
        # Transposed while still uint8 (a quarter of the bytes to move), then converted in one
        # pass: float32(x) * scale - shift, the same float32 operations as converting first.
        out = np.empty((n, c, h, w), dtype=np.float32)
        np.multiply(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)), scale, out=out)
        out -= shift
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


# ----------------------------------------------------------------------------- exact crop resizing
def _crop_axis(extent: float, resized: int, offset: int, size: int) -> tuple[float, float, int, int]:
    """One axis of :func:`_resize_crop`: (box start, box end, output length, crop offset).

    Pillow resamples an axis from the float32 box ``[in0, in1)`` onto ``n`` pixels with the
    filter centred at ``in0 + (i + 0.5) * (in1 - in0) / n``. Resizing the whole extent onto
    ``resized`` pixels and keeping ``[offset, offset + size)`` gives the centres
    ``(offset + i + 0.5) * extent / resized``. When the box that covers just the crop gives
    bit-identical centres and scale, every filter weight and so every pixel is identical, and
    the box is returned; otherwise (or when the axis is not scaled) the whole extent, then a crop.
    """
    scale = float(np.float32(extent)) / resized
    if resized != size and extent != resized:
        start, end = offset * scale, (offset + size) * scale
        start32, end32 = np.float32(start), np.float32(end)
        if start32 == start and end32 == end and float(end32 - start32) / size == scale:
            centres = np.arange(size, dtype=np.float64) + 0.5
            if np.array_equal(start + centres * scale, (centres + offset) * scale):
                return start, end, size, 0
    return 0.0, float(extent), resized, offset


def _resize_crop(img: Image.Image, resized: tuple[int, int], offset: tuple[int, int], size: int, resample: int) -> Image.Image:
    """Exactly ``img.resize(resized, resample, reducing_gap=3.0).crop((*offset, *offset + size))``,
    but resampling only the pixels the crop keeps along each axis where that is exact (for example
    a square photo, whose scale is then a short binary fraction), which is faster.
    """
    w, h = img.size
    # What Image.resize does with a reducing gap: reduce the whole image by whole blocks first.
    fx = int(w / resized[0] / _REDUCING_GAP) or 1
    fy = int(h / resized[1] / _REDUCING_GAP) or 1
    extent_x, extent_y = float(w), float(h)
    if fx > 1 or fy > 1:
        img = img.reduce((fx, fy))
        extent_x, extent_y = w / fx, h / fy
    x0, x1, out_w, left = _crop_axis(extent_x, resized[0], offset[0], size)
    y0, y1, out_h, top = _crop_axis(extent_y, resized[1], offset[1], size)
    if _horizontal_first(img.size, resized) != _horizontal_first(img.size, (out_w, out_h)):
        # Pillow would run the two passes in another order (rounding differs): the whole resize.
        x0, x1, out_w, left = 0.0, extent_x, resized[0], offset[0]
        y0, y1, out_h, top = 0.0, extent_y, resized[1], offset[1]
    img = img.resize((out_w, out_h), resample, box=(x0, y0, x1, y1))
    if (out_w, out_h) != (size, size):
        img = img.crop((left, top, left + size, top + size))
    return img


def _horizontal_first(size_in: tuple[int, int], size_out: tuple[int, int]) -> bool:
    """Whether Pillow resamples rows before columns (Pillow 13 runs the vertical pass first when the
    height shrinks by more than twice the width's reduction; earlier versions always run rows first,
    and two sizes this calls alike are then alike too)."""
    shrink_h = size_in[1] - size_out[1]
    return not (shrink_h > 0 and shrink_h > (size_in[0] - size_out[0]) * 2)


def mirror_images(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x C images flipped left to right (the mirror average's second pass)."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])
