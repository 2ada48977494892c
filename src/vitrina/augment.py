"""Training-time augmentation on already-resized uint8 images.

Images reach augmentation after :class:`~vitrina.preprocess.Preprocess` has resized them, as
uint8 CxHxW tensors, so augmentation is cheap (no re-decoding) and never changes the geometry
the model sees at inference.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2

from vitrina.config import AugmentConfig


def build_augment(cfg: AugmentConfig, channels: int = 3, strength: float = 1.0) -> v2.Compose | None:
    """A torchvision transform for uint8 CxHxW tensors, or ``None`` when augmentation is off.

    ``strength`` scales every magnitude (0 = none, 1 = as configured), which lets a search tune
    one number instead of ten.
    """
    if not cfg.enabled or strength <= 0:
        return None
    fill = 255 if channels == 1 else [255] * channels
    ops: list = []
    if cfg.randaugment > 0:
        ops.append(v2.RandAugment(num_ops=cfg.randaugment, magnitude=min(30, round(cfg.randaugment_magnitude * strength)), fill=fill))
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(p=cfg.hflip))
    rotation, shift, shear, zoom = cfg.rotation * strength, cfg.shift * strength, cfg.shear * strength, cfg.zoom * strength
    if rotation > 0 or shift > 0 or shear > 0 or zoom > 0:
        ops.append(
            v2.RandomAffine(
                degrees=rotation,
                translate=(shift, shift) if shift > 0 else None,
                scale=(max(0.05, 1 - zoom), 1 + zoom) if zoom > 0 else None,
                shear=shear if shear > 0 else None,
                interpolation=v2.InterpolationMode.BILINEAR,
                fill=fill,
            )
        )
    jitter = cfg.color_jitter * strength
    if jitter > 0:
        ops.append(
            v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter if channels == 3 else 0, hue=min(0.5, jitter / 4) if channels == 3 else 0)
        )
    if cfg.blur > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=cfg.blur))
    if cfg.erasing > 0:
        ops.append(v2.RandomErasing(p=cfg.erasing, scale=(0.02, 0.2), value=0))
    if not ops:
        return None
    return v2.Compose(ops)


def augment_batch(transform: v2.Compose | None, images: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each uint8 NxHxWxC image independently; returns NxHxWxC."""
    if transform is None:
        return images
    chw = images.permute(0, 3, 1, 2)
    out = torch.stack([transform(img) for img in chw])
    return out.permute(0, 2, 3, 1).contiguous()
