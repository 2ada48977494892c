"""The one preprocessing implementation: its fast paths give exactly the pixels and values of the
straightforward computation (train/serve parity and the decoded-image cache depend on that)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagegen
from vitrina.data.images import decode
from vitrina.preprocess import _RESAMPLE, Preprocess, _crop_axis


def reference_resize(pre: Preprocess, img: Image.Image) -> Image.Image:
    """Centre crop the plain way: resize the whole image, then crop its centre."""
    size, resample = pre.input_size, _RESAMPLE[pre.interpolation]
    w, h = img.size
    short = pre.scale_size
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size)) if (nw, nh) != (size, size) else img


def reference_normalize(pre: Preprocess, batch: np.ndarray) -> np.ndarray:
    scale = np.asarray([1.0 / (255.0 * s) for s in pre.std], dtype=np.float32)
    shift = np.asarray([m / s for m, s in zip(pre.mean, pre.std)], dtype=np.float32)
    return np.ascontiguousarray((batch.astype(np.float32) * scale - shift).transpose(0, 3, 1, 2))


# Squares (the exact crop box), portraits and landscapes, up- and downscaling, sizes where Pillow
# reduces by whole blocks first, and sizes where it runs the vertical pass first.
SIZES = [
    (224, 224), (256, 256), (90, 90), (600, 600), (1700, 1700), (2000, 1400), (1400, 2000),
    (240, 320), (320, 240), (500, 1000), (1000, 500), (120, 67), (67, 120), (25, 33), (260, 1900),
    (1900, 260), (257, 255), (8, 8), (3000, 40),
]


@lru_cache(maxsize=None)
def photo(w: int, h: int, seed: int) -> Image.Image:
    return imagegen.photo(w, h, seed=seed)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "lanczos", "nearest"])
@pytest.mark.parametrize("input_size,crop_pct", [(224, 0.875), (260, 0.89), (64, 1.0), (32, 0.5)])
def test_centre_crop_gives_exactly_the_pixels_of_resizing_then_cropping(interpolation: str, input_size: int, crop_pct: float) -> None:
    pre = Preprocess(input_size=input_size, crop_pct=crop_pct, interpolation=interpolation)
    gray = Preprocess(input_size=input_size, crop_pct=crop_pct, interpolation=interpolation, channels=1, mean=(0.5,), std=(0.5,))
    for i, (w, h) in enumerate(SIZES):
        img = photo(w, h, i)
        for p, image in ((pre, img), (gray, img.convert("L"))):
            out = p.resize_image(image)
            assert out.size == (input_size, input_size) and out.mode == p.mode
            expected = np.asarray(reference_resize(p, image))
            assert np.array_equal(np.asarray(out), expected), f"{w}x{h} {p.mode} {interpolation}"


def test_centre_crop_of_decoded_jpegs_matches_resizing_then_cropping(tmp_path: Path) -> None:
    """Real decoded photos (JPEG, draft decoding of a large one, an EXIF-rotated one)."""
    pre = Preprocess(input_size=224, crop_pct=0.875, interpolation="bicubic")
    files = {
        "square.jpg": imagegen.jpeg_bytes(imagegen.photo(224, 224, seed=1)),
        "large.jpg": imagegen.jpeg_bytes(imagegen.photo(1600, 1200, seed=2)),
        "portrait.jpg": imagegen.jpeg_bytes(imagegen.photo(300, 450, seed=3)),
    }
    rotated = imagegen.photo(400, 300, seed=4)
    exif = rotated.getexif()
    exif[imagegen.EXIF_ORIENTATION] = 6
    files["rotated.jpg"] = imagegen.jpeg_bytes(rotated, exif=exif.tobytes())
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        img = decode(tmp_path / name, draft_size=pre.draft_size())
        assert np.array_equal(pre.to_uint8(img), np.asarray(reference_resize(pre, img))), name


def test_freiburg_photos_take_the_exact_crop_box(shared_datasets: Path) -> None:
    """The catalogue photos (224x224, scaled to 256 for a 224 crop) resample only the crop."""
    pre = Preprocess(input_size=224, crop_pct=0.875, interpolation="bicubic")
    assert _crop_axis(224.0, 256, 16, 224) == (14.0, 210.0, 224, 0)
    paths = sorted((shared_datasets / "freiburg-groceries" / "images").glob("*/*.jpg"))[::250]
    assert paths
    for path in paths:
        img = decode(path, draft_size=pre.draft_size())
        assert np.array_equal(pre.to_uint8(img), np.asarray(reference_resize(pre, img))), path


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_gives_exactly_the_values_of_converting_then_transposing(channels: int) -> None:
    rng = np.random.default_rng(0)
    pre = Preprocess(input_size=16, crop_pct=1.0, channels=channels, mean=(0.485, 0.456, 0.406)[:channels], std=(0.229, 0.224, 0.225)[:channels])
    batch = rng.integers(0, 256, (5, 16, 16, channels), dtype=np.uint8)
    out = pre.normalize(batch)
    assert out.dtype == np.float32 and out.shape == (5, channels, 16, 16) and out.flags.c_contiguous
    assert np.array_equal(out, reference_normalize(pre, batch))
    single = pre.normalize(batch[2])
    assert single.shape == (channels, 16, 16) and np.array_equal(single, out[2])
    # a strided view, and a float input (values 0-255), give the same values
    view = np.ascontiguousarray(np.concatenate([batch, batch], axis=2))[:, :, ::2]
    assert np.array_equal(pre.normalize(view), reference_normalize(pre, view))
    assert np.array_equal(pre.normalize(batch.astype(np.float64)), out)
    assert np.array_equal(pre(Image.fromarray(batch[0, :, :, 0] if channels == 1 else batch[0])), out[0])


def test_letterbox_scales_the_longer_side_and_pads_evenly() -> None:
    """A 60 x 30 red photo letterboxed to 20 px: 20 x 10 of photo, 5 rows of white padding above and below."""
    pre = Preprocess(input_size=20, resize="letterbox", interpolation="nearest", pad_value=255)
    out = pre.to_uint8(Image.new("RGB", (60, 30), (200, 10, 10)))
    assert out.shape == (20, 20, 3)
    assert (out[:5] == 255).all() and (out[15:] == 255).all()  # (20 - 10) // 2 rows each side
    assert (out[5:15] == (200, 10, 10)).all()
    tall = pre.to_uint8(Image.new("RGB", (21, 63), (10, 200, 10)))  # 63 -> 20, 21 -> round(6.67) = 7 columns
    assert (tall[:, :6] == 255).all() and (tall[:, 13:] == 255).all()  # (20 - 7) // 2 = 6 columns left, 7 right
    assert (tall[:, 6:13] == (10, 200, 10)).all()
    grey = Preprocess(input_size=8, channels=1, mean=(0.5,), std=(0.5,), resize="letterbox", interpolation="nearest", pad_value=0)
    assert (grey.to_uint8(Image.new("L", (16, 4), 90))[:3] == 0).all()


def test_squash_ignores_the_aspect_ratio() -> None:
    """Left half black, right half white, 40 x 10: squashed to 8 x 8 the halves stay halves of every row."""
    image = np.zeros((10, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255
    out = Preprocess(input_size=8, resize="squash", interpolation="nearest").to_uint8(Image.fromarray(image))
    assert out.shape == (8, 8, 3)
    assert (out[:, :4] == 0).all() and (out[:, 4:] == 255).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_numpy_and_torch_normalisation_agree(channels: int) -> None:
    import torch

    pre = Preprocess(input_size=12, channels=channels, mean=(0.485, 0.456, 0.406)[:channels], std=(0.229, 0.224, 0.225)[:channels])
    batch = np.random.default_rng(1).integers(0, 256, (4, 12, 12, channels), dtype=np.uint8)
    via_torch = pre.normalize_torch(torch.from_numpy(batch))
    assert via_torch.shape == (4, channels, 12, 12) and via_torch.dtype == torch.float32
    np.testing.assert_allclose(via_torch.numpy(), pre.normalize(batch), rtol=0, atol=1e-5)
