"""Small CNNs trained from scratch, for tiny product photos and grayscale catalogue images.

A :class:`ScratchCNN` is a stack of conv+pool blocks, an adaptive average pool to a fixed
``grid`` (1 = global average pooling; larger grids keep spatial layout for a flatten-to-dense
layer), and an optional dense layer. Adaptive pooling makes every preset work at any input
size and with 1 or 3 input channels, with the same parameters.

The presets at the bottom register (one spec each) when the registry first imports this module.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from vitrina.models.network import Backbone
from vitrina.models.registry import ModelSpec, register_model
from vitrina.preprocess import Preprocess


def doubling_widths(blocks: int, width: int) -> tuple[int, ...]:
    """Channel widths of ``blocks`` blocks, starting at ``width`` and doubling per block."""
    return tuple(width * 2**i for i in range(blocks))


class ScratchCNN(nn.Module):
    """Conv blocks -> adaptive average pool -> flatten -> dropout -> optional dense + ReLU.

    Each block is ``convs_per_block`` 3x3 convolutions (one count for all blocks or one per
    block; each with optional BatchNorm and a ReLU) followed by a 2x2 max pool; ``widths``
    gives each block's channels.
    """

    def __init__(
        self,
        channels: int = 3,
        widths: Sequence[int] = (32, 64),
        convs_per_block: int | Sequence[int] = 1,
        batchnorm: bool = True,
        grid: int = 1,
        dense: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        blocks = []
        in_channels = channels
        convs = [convs_per_block] * len(widths) if isinstance(convs_per_block, int) else list(convs_per_block)
        for width, n_convs in zip(widths, convs):
            layers: list[nn.Module] = []
            for _ in range(n_convs):
                layers.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=not batchnorm))
                if batchnorm:
                    layers.append(nn.BatchNorm2d(width))
                layers.append(nn.ReLU(inplace=True))
                in_channels = width
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        flat_features = in_channels * grid * grid
        if dense:
            self.dense: nn.Module = nn.Sequential(
                nn.Linear(flat_features, dense), nn.ReLU(inplace=True)
            )
            self.num_features = dense
        else:
            self.dense = nn.Identity()
            self.num_features = flat_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.blocks(x)))
        return self.dense(self.dropout(x))

    def block_names(self) -> list[list[str]]:
        """Each conv block, then the dense layer when there is one."""
        names = [[f"blocks.{i}"] for i in range(len(self.blocks))]
        if isinstance(self.dense, nn.Sequential):
            names.append(["dense"])
        return names


def scratch_preprocess(input_size: int, channels: int = 3) -> Preprocess:
    """Squash to a square (small ad photos lose nothing to a crop), scale to [-1, 1]."""
    return Preprocess(
        input_size=input_size,
        mean=(0.5,) * channels,
        std=(0.5,) * channels,
        channels=channels,
        resize="squash",
        crop_pct=1.0,
        interpolation="bilinear",
    )


def _build(
    *,
    channels: int,
    input_size: int,
    pretrained: bool,
    widths: Sequence[int],
    convs_per_block: int | Sequence[int],
    grid: int,
    dense: int | None,
    dropout: float,
) -> Backbone:
    # input_size changes nothing (adaptive pooling); scratch networks have no pretrained weights.
    cnn = ScratchCNN(
        channels=channels,
        widths=widths,
        convs_per_block=convs_per_block,
        batchnorm=True,
        grid=grid,
        dense=dense,
        dropout=dropout,
    )
    return Backbone(cnn, cnn.num_features, cnn.block_names())


def _register_scratch(
    name: str,
    description: str,
    input_size: int,
    channels: int = 3,
    *,
    widths: Sequence[int],
    convs_per_block: int | Sequence[int] = 1,
    grid: int = 1,
    dense: int | None = None,
    dropout: float = 0.0,
) -> None:
    builder = partial(
        _build,
        widths=tuple(widths),
        convs_per_block=convs_per_block,
        grid=grid,
        dense=dense,
        dropout=dropout,
    )
    register_model(
        ModelSpec(
            name=name,
            family="scratch",
            description=description,
            preprocess=scratch_preprocess(input_size, channels),
            builder=builder,
            pretrained_source=None,
            default_mode="scratch",
        )
    )


for _blocks in (1, 2, 3):
    _register_scratch(
        f"cnn{_blocks}",
        f"CNN with {_blocks} conv+pool block(s), 32 channels doubling per block, "
        "BatchNorm, 4x4 pooled grid, dense 128",
        input_size=128,
        widths=doubling_widths(_blocks, 32),
        grid=4,
        dense=128,
        dropout=0.25,
    )
_register_scratch(
    "ad_cnn64",
    "the 64x64 ad-photo CNN: conv blocks 32-32-64, BatchNorm, dense 64 "
    "(the original's dropout 0.5 before the output is the head's: dropout=0.5)",
    input_size=64,
    widths=(32, 32, 64),
    grid=8,
    dense=64,
)
_register_scratch(
    "fmnist_cnn",
    "2-conv-block CNN with dropout for 28x28 grayscale (Fashion-MNIST): "
    "conv 32x2-pool-conv 64x2-pool, BatchNorm, dropout 0.25, dense 128",
    input_size=28,
    channels=1,
    widths=(32, 64),
    convs_per_block=2,
    grid=7,
    dense=128,
    dropout=0.25,
)
