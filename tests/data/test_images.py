"""Safe decoding: every bad-input case gives a usable image or an ImageError with a reason."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagegen

from vitrina.data import images  # noqa: E402
from vitrina.data.images import decode, open_sample, probe  # noqa: E402
from vitrina.data.samples import Sample  # noqa: E402
from vitrina.errors import ImageError  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, imagegen.ZooImage]:
    return imagegen.write_zoo(tmp_path_factory.mktemp("zoo"))


def pixel(img: Image.Image, x: int, y: int) -> np.ndarray:
    return np.asarray(img, dtype=np.int32)[y, x]


@pytest.mark.parametrize("name", ["truncated", "empty", "text", "huge"])
def test_unusable_files_raise_with_reason(zoo: dict[str, imagegen.ZooImage], name: str) -> None:
    case = zoo[name]
    with pytest.raises(ImageError) as caught:
        decode(case.path)
    assert case.reason in caught.value.reason
    assert caught.value.path == str(case.path)


@pytest.mark.parametrize("draft_size", [None, (16, 16)])
def test_truncated_jpeg_is_caught_by_draft_decoding_too(
    zoo: dict[str, imagegen.ZooImage], draft_size: tuple[int, int] | None
) -> None:
    with pytest.raises(ImageError, match="truncated"):
        decode(zoo["truncated"].path, draft_size=draft_size)


def test_jpeg_missing_only_its_end_marker_is_truncated() -> None:
    data = imagegen.jpeg_bytes(imagegen.photo())
    with pytest.raises(ImageError, match="truncated"):
        decode(data[:-2])


def test_png_cut_inside_header_is_truncated() -> None:
    buffer = io.BytesIO()
    imagegen.photo().save(buffer, format="PNG")
    with pytest.raises(ImageError, match="truncated"):
        decode(buffer.getvalue()[:20])


def test_missing_file() -> None:
    with pytest.raises(ImageError, match="file not found"):
        decode("/nonexistent/shoe.jpg")


@pytest.mark.parametrize(
    "name", ["cmyk", "gray16", "palette", "rgba", "la", "exif_rotated", "gray", "photo0", "photo1"]
)
def test_readable_files_decode_to_rgb_and_l(zoo: dict[str, imagegen.ZooImage], name: str) -> None:
    case = zoo[name]
    rgb = decode(case.path)
    gray = decode(case.path, mode="L")
    assert (rgb.mode, rgb.size) == ("RGB", case.size)
    assert (gray.mode, gray.size) == ("L", case.size)
    assert probe(case.path)["mode"] == case.stored_mode


def test_cmyk_colours_are_converted(zoo: dict[str, imagegen.ZooImage]) -> None:
    red = pixel(decode(zoo["cmyk"].path), 10, 10)
    assert np.abs(red - (255, 0, 0)).max() <= 3
    red_draft = pixel(decode(zoo["cmyk"].path, draft_size=(16, 16)), 5, 5)
    assert np.abs(red_draft - (255, 0, 0)).max() <= 3


def test_16_bit_png_is_scaled_to_8_bits(zoo: dict[str, imagegen.ZooImage]) -> None:
    gray = decode(zoo["gray16"].path, mode="L")
    assert pixel(gray, 0, 0) == 255
    assert abs(int(pixel(gray, 20, 0)) - 128) <= 1
    rgb = decode(zoo["gray16"].path)
    assert tuple(pixel(rgb, 0, 0)) == (255, 255, 255)
    assert np.abs(pixel(rgb, 20, 0) - 128).max() <= 1


@pytest.mark.parametrize(
    ("name", "opaque"), [("palette", (255, 0, 0)), ("rgba", (0, 0, 255)), ("la", (100, 100, 100))]
)
def test_transparency_is_composited_on_white(
    zoo: dict[str, imagegen.ZooImage], name: str, opaque: tuple[int, int, int]
) -> None:
    rgb = decode(zoo[name].path)
    assert tuple(pixel(rgb, 5, 5)) == (255, 255, 255)
    assert tuple(pixel(rgb, 30, 5)) == opaque


def test_colour_key_transparency_is_composited_on_white() -> None:
    img = Image.new("RGB", (20, 10), (0, 0, 0))
    img.paste((0, 200, 0), (10, 0, 20, 10))
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", transparency=(0, 0, 0))
    rgb = decode(buffer.getvalue())
    assert tuple(pixel(rgb, 2, 2)) == (255, 255, 255)
    assert tuple(pixel(rgb, 15, 2)) == (0, 200, 0)


def test_exif_orientation_is_applied(zoo: dict[str, imagegen.ZooImage]) -> None:
    case = zoo["exif_rotated"]
    assert probe(case.path)["width"] == 96  # stored landscape
    assert decode(case.path).size == (48, 96)  # displayed portrait


def test_draft_keeps_the_requested_size_on_rotated_jpeg(zoo: dict[str, imagegen.ZooImage]) -> None:
    img = decode(zoo["exif_rotated"].path, draft_size=(40, 20))
    assert img.size[0] >= 40 and img.size[1] >= 20


def test_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (3000, 3000), 200).save(path)
    with pytest.raises(ImageError, match="too many pixels"):
        decode(path, max_pixels=1_000_000)
    assert decode(path).size == (3000, 3000)


def test_bytes_input_and_name() -> None:
    data = imagegen.jpeg_bytes(imagegen.photo(64, 32))
    assert decode(data).size == (64, 32)
    assert decode(bytearray(data)).size == (64, 32)
    with pytest.raises(ImageError) as caught:
        decode(data[:100], name="upload.jpg")
    assert caught.value.path == "upload.jpg"
    with pytest.raises(ImageError, match="empty"):
        decode(b"")


def test_grayscale_request_on_colour_photo() -> None:
    data = imagegen.jpeg_bytes(imagegen.photo())
    gray = decode(data, mode="L")
    assert gray.mode == "L"
    expected = np.asarray(decode(data).convert("L"), dtype=np.int32)
    assert np.abs(np.asarray(gray, dtype=np.int32) - expected).mean() < 2


def test_draft_decoding_is_smaller_but_at_least_the_requested_size() -> None:
    data = imagegen.jpeg_bytes(imagegen.photo(800, 600))
    img = decode(data, draft_size=(100, 100))
    assert img.mode == "RGB"
    assert 100 <= min(img.size) and img.size[0] < 800
    assert decode(data, draft_size=(100, 100), mode="L").mode == "L"


def test_unexpected_plugin_errors_become_image_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_open(fp, *args, **kwargs):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(images.Image, "open", broken_open)
    with pytest.raises(ImageError, match="corrupt image: IndexError"):
        decode(b"\xff\xd8\xff")


def test_open_sample_from_pixels_and_file(zoo: dict[str, imagegen.ZooImage]) -> None:
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    sample = Sample(path="train.csv#row=1", label="shirt", pixels=pixels)
    gray = open_sample(sample, mode="L")
    assert gray.size == (28, 28) and np.array_equal(np.asarray(gray), pixels)
    assert open_sample(sample).mode == "RGB"
    assert open_sample(Sample(path=str(zoo["cmyk"].path), label="red")).size == (64, 48)


def test_probe_refuses_non_images(zoo: dict[str, imagegen.ZooImage]) -> None:
    with pytest.raises(ImageError, match="empty"):
        probe(zoo["empty"].path)
    with pytest.raises(ImageError, match="not an image"):
        probe(zoo["text"].path)
    assert probe(zoo["huge"].path)["width"] == imagegen.HUGE_SIDE
