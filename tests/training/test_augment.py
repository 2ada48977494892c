"""Batch augmentation: right shapes, the colour maps composed correctly, seeded, and the preview PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitrina import api
from vitrina.training.augment import BatchAugment, build_augment
from vitrina.config import resolve

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "src" / "vitrina" / "demo" / "clothing"
NO_GEOMETRY = {"augment.hflip": 0.0, "augment.rotation": 0.0, "augment.shift": 0.0, "augment.shear": 0.0, "augment.zoom": 0.0}


def photos(n: int = 6, size: int = 48, channels: int = 3) -> torch.Tensor:
    """Real demo photos, resized: uint8 NxHxWxC."""
    files = sorted(DEMO.rglob("*.jpg"))[:n]
    mode = "RGB" if channels == 3 else "L"
    arrays = [np.asarray(Image.open(f).convert(mode).resize((size, size))) for f in files]
    stacked = np.stack(arrays)
    return torch.from_numpy(stacked if channels == 3 else stacked[..., None].copy())


def augment(channels: int = 3, **overrides: object) -> BatchAugment:
    """Only what ``overrides`` switch on (the geometry and colour defaults are filled per dataset)."""
    settings = {**NO_GEOMETRY, "augment.color_jitter": 0.0, **overrides}
    transform = build_augment(resolve(overrides=settings).augment, channels=channels)
    assert transform is not None
    return transform


def stepwise_colour(x: torch.Tensor, brightness, contrast, saturation, hue_shift) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Colour jitter one step after another (the definition the composed map must match)."""
    b, c, s = (v.view(-1, 1, 1, 1) for v in (brightness, contrast, saturation))
    x = x * b
    grey = x.mean(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (x - grey) * c + grey
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (x - luma) * s + luma
    return torch.einsum("nij,njhw->nihw", BatchAugment._hue_matrix(hue_shift), x)


def test_switched_off_or_all_zero_is_no_transform() -> None:
    assert build_augment(resolve(overrides={"augment.enabled": False}).augment) is None
    zero = {**NO_GEOMETRY, "augment.color_jitter": 0.0}
    assert build_augment(resolve(overrides=zero).augment) is None


@pytest.mark.parametrize("channels", [1, 3])
def test_full_augmentation_keeps_shape_and_type_and_leaves_the_input_alone(channels: int) -> None:
    x = photos(channels=channels)
    before = x.clone()
    transform = augment(channels, **{"augment.rotation": 10.0, "augment.shift": 0.1, "augment.shear": 5.0, "augment.zoom": 0.2,
                                     "augment.color_jitter": 0.3, "augment.blur": 0.5, "augment.erasing": 0.5})
    y = transform(x)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(x, before)
    assert not torch.equal(y, x)


def test_same_seed_same_augmentation() -> None:
    transform = augment(**{"augment.rotation": 10.0, "augment.color_jitter": 0.2})
    x = photos()
    torch.manual_seed(3)
    a = transform(x)
    torch.manual_seed(3)
    b = transform(x)
    torch.manual_seed(4)
    c = transform(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_with_probability_one_mirrors_every_photo() -> None:
    x = photos()
    y = augment(**{**NO_GEOMETRY, "augment.hflip": 1.0, "augment.color_jitter": 0.0})(x)
    assert torch.equal(y, x.flip(2))


def test_composed_colour_map_matches_the_steps() -> None:
    transform = augment(**{**NO_GEOMETRY, "augment.color_jitter": 0.4})
    x = photos().permute(0, 3, 1, 2).float()
    n = len(x)
    torch.manual_seed(0)
    composed = transform._colour(x)
    torch.manual_seed(0)  # the same draws, in the same order
    draws = [transform._uniform(n, 0.6, 1.4) for _ in range(3)] + [transform._uniform(n, -0.1, 0.1)]
    torch.testing.assert_close(composed, stepwise_colour(x, *draws), rtol=1e-4, atol=1e-2)


def test_colour_jitter_keeps_grey_grey() -> None:
    grey = torch.full((4, 16, 16, 3), 128, dtype=torch.uint8)
    y = augment(**{**NO_GEOMETRY, "augment.color_jitter": 0.5})(grey)
    spread = y.int().max(dim=3).values - y.int().min(dim=3).values
    assert int(spread.max()) <= 1  # saturation and hue cannot colour a neutral grey


def test_warps_fill_borders_from_the_edges() -> None:
    flat = torch.full((4, 32, 32, 3), 200, dtype=torch.uint8)
    y = augment(**{"augment.rotation": 30.0, "augment.shift": 0.2, "augment.zoom": 0.3, "augment.color_jitter": 0.0})(flat)
    assert torch.equal(y, flat)


def test_a_shift_alone_moves_whole_pixels() -> None:
    """Without rotation, shear or zoom every output pixel is an input pixel (no blur): the image
    is the input moved by whole pixels, its uncovered border the repeated edge. The images are
    not square, so a shift scaled by the wrong side fails too."""
    torch.manual_seed(0)
    x = photos(n=8, size=28, channels=1)[:, :, :20].contiguous()
    y = augment(channels=1, **{"augment.shift": 0.09})(x)
    moved = 0
    for before, after in zip(x[..., 0], y[..., 0]):
        matches = [
            (dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
            if torch.equal(after, shifted_with_edges(before, dy, dx))
        ]
        assert matches, "a shifted image should equal its input moved by whole pixels"
        moved += matches[0] != (0, 0)
    assert moved > 0


def shifted_with_edges(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``image`` (H x W) moved down by dy and right by dx, the edge pixels repeated into the gap."""
    h, w = image.shape
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return image[rows][:, cols]


def test_preview_writes_a_png_grid(tmp_path: Path) -> None:
    out = api.augment_preview(DEMO, out=tmp_path / "grid.png", images=3, variants=4)
    with Image.open(out) as grid:
        assert grid.format == "PNG" and grid.width > grid.height
