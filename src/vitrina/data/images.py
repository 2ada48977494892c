"""Safe image decoding shared by every command.

``decode`` (and ``open_sample`` for dataset samples) turns a file, bytes, or an in-memory sample
into a PIL image in the colour mode a model wants ("RGB" or "L"), applying EXIF orientation and
converting CMYK, 16-bit, palette and alpha images correctly. Anything unusable raises
:class:`~vitrina.errors.ImageError` with a short reason, so callers can skip and report the file
instead of crashing a long job.
"""
from __future__ import annotations

import io
import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile

from vitrina.data.jpeg import TRUNCATED, CorruptJpeg, decode_strict
from vitrina.data.samples import Sample
from vitrina.errors import ImageError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)
DEFAULT_MAX_PIXELS = 64_000_000
# EXIF orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})
# What ImageOps.exif_transpose does for each EXIF orientation.
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# We enforce our own pixel limit (with a clear reason) instead of PIL's warning/exception pair.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL mode to "RGB" or "L", compositing transparency onto white."""
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")  # palette or colour-key transparency
    elif img.mode == "P":
        img = img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        hi = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        # PIL applies the inversion Adobe CMYK JPEGs need when it decodes them.
        img = img.convert("RGB")
    if img.mode != mode:
        img = img.convert(mode)
    return img


def decode(
    source: str | os.PathLike | bytes | BinaryIO,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> Image.Image:
    """Decode ``source`` into a fully loaded PIL image in ``mode`` ("RGB" or "L").

    ``draft_size`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while decoding (much
    faster for large photos) as long as the result stays at least that size. JPEGs are decoded
    strictly (see :mod:`vitrina.data.jpeg`): damaged scan data is an error, not a noisy picture.
    Raises :class:`ImageError` with a reason for anything unusable.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<upload>")
    data: bytes | bytearray | memoryview | None = None
    if isinstance(source, (str, os.PathLike)):
        try:
            size = os.path.getsize(source)
        except FileNotFoundError:
            raise ImageError(label, "file not found") from None
        except OSError as exc:
            raise ImageError(label, f"cannot read file: {exc.strerror or exc}") from None
        if size == 0:
            raise ImageError(label, "empty file (0 bytes)")
    else:
        data = source if isinstance(source, (bytes, bytearray, memoryview)) else _read_stream(source)
        if len(data) == 0:
            raise ImageError(label, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings(), ExitStack() as stack:
            warnings.simplefilter("ignore")
            fp = stack.enter_context(open(source, "rb")) if data is None else io.BytesIO(data)
            img = stack.enter_context(Image.open(fp))
            _check_size(img, label, max_pixels)
            return _load(img, fp if data is None else data, mode, draft_size)
    except ImageError:
        raise
    except CorruptJpeg as exc:
        raise ImageError(label, exc.reason) from None
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (unrecognised file format)") from None
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text.lower() or isinstance(exc, EOFError):
            reason = TRUNCATED
        else:
            reason = f"corrupt image: {text or type(exc).__name__}"
        raise ImageError(label, reason) from None
    except Image.DecompressionBombError as exc:  # pragma: no cover - limit disabled above
        raise ImageError(label, f"too many pixels: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - malformed files can trip any error inside a PIL plugin
        raise ImageError(label, f"corrupt image: {type(exc).__name__}: {exc}") from None


def _read_stream(stream: BinaryIO) -> bytes:
    """All of a file object's bytes, from its start as ``Image.open`` reads it."""
    try:
        stream.seek(0)
    except (AttributeError, OSError):
        pass  # not seekable: read what is left
    return stream.read()


def _check_size(img: Image.Image, label: str, max_pixels: int | None) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(label, f"invalid image size {width}x{height}")
    if max_pixels and width * height > max_pixels:
        raise ImageError(
            label,
            f"too many pixels: {width}x{height} = {width * height:,} "
            f"(limit {max_pixels:,}; raise data.max_pixels to allow it)",
        )


def _load(
    img: Image.Image,
    data: bytes | bytearray | memoryview | BinaryIO,
    mode: str,
    draft_size: tuple[int, int] | None,
) -> Image.Image:
    """Decode the opened ``img`` into ``mode``; ``data`` is its bytes, or the open file holding them.

    JPEGs go through :func:`~vitrina.data.jpeg.decode_strict` (damaged data raises), and through
    PIL's draft mode only where that declines them; everything else through PIL.
    """
    if isinstance(img, JpegImageFile):  # JPEG and MPO
        orientation = img.getexif().get(ExifTags.Base.Orientation)
        if draft_size is not None and orientation in _TRANSPOSING_ORIENTATIONS:
            draft_size = (draft_size[1], draft_size[0])
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data.seek(0)
            data = data.read()
        strict = decode_strict(data, img, mode, draft_size)
        if strict is not None:
            method = _EXIF_TRANSPOSE.get(orientation)
            return _to_mode(strict if method is None else strict.transpose(method), mode)
        if draft_size is not None:
            img.draft("RGB" if mode == "RGB" else "L", draft_size)
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    return _to_mode(img, mode)


def open_sample(
    sample: Sample,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a dataset sample (file or in-memory pixels) into ``mode``."""
    if sample.pixels is not None:
        return _to_mode(Image.fromarray(np.ascontiguousarray(sample.pixels, dtype=np.uint8)), mode)
    return decode(sample.path, mode=mode, max_pixels=max_pixels, draft_size=draft_size)


def probe(path: str | os.PathLike) -> dict:
    """Cheap header read: format, mode and size without decoding pixels.

    Raises :class:`ImageError` for unreadable or non-image files.
    """
    label = str(path)
    try:
        if os.path.getsize(path) == 0:
            raise ImageError(label, "empty file (0 bytes)")
        with Image.open(path) as img:
            return {"format": img.format, "mode": img.mode, "width": img.size[0], "height": img.size[1]}
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(label, "file not found") from None
    except UnidentifiedImageError:
        raise ImageError(label, "not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(label, f"corrupt image: {exc}") from None
