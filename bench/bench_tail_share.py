"""The share of a fine-tuned network's inference time spent in the blocks that train.

Fine-tuning trains the last ``--blocks`` blocks (the default's 3: efficientnet_lite0's last two
stages and its head convolution, with the head); the stem and the stages before them stay as
ImageNet trained them. A second network that shared those frozen stages would cost at
prediction one pass of the whole network plus one more of its tail. This times, in fp32 PyTorch
on this machine's cores (random weights, random images: the time does not depend on them), the
whole network, its frozen prefix and its tail, each the second fastest of seven batches, and
prints the tail's share and what a second tail would cost in passes of the network.

    python bench/bench_tail_share.py [--model efficientnet_lite0] [--input-size 288] [--blocks 3]
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from vitrina.models.registry import create_model
from vitrina.models.stages import split_at_trainable


def second_fastest(step: Callable[[], object], tries: int = 7) -> float:
    """Seconds of ``step``, the second fastest of ``tries`` (the first warms up)."""
    seconds = []
    for _ in range(tries):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--input-size", type=int, default=288)
    parser.add_argument("--blocks", type=int, default=3, help="blocks that train (train.unfreeze_blocks)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    net = create_model(args.model, 25, pretrained=False, input_size=args.input_size, head="mlp_ensemble").eval()
    parts = split_at_trainable(net, args.blocks)
    if parts is None:
        raise SystemExit(f"{args.model} with {args.blocks} blocks training has no frozen prefix to share")
    prefix, tail = parts
    net = net.to(memory_format=torch.channels_last)
    images = torch.randn(args.batch, 3, args.input_size, args.input_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        features = prefix(images).contiguous(memory_format=torch.channels_last)
        whole = second_fastest(lambda: net(images))
        frozen = second_fastest(lambda: prefix(images))
        trained = second_fastest(lambda: tail(features))
    per_photo = 1000 / args.batch
    print(f"{args.model} at {args.input_size} px, the last {args.blocks} blocks training, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, fp32 PyTorch")
    print(f"whole network {whole * per_photo:.2f} ms a photo, frozen prefix {frozen * per_photo:.2f}, "
          f"tail {trained * per_photo:.2f}: the tail is {trained / whole:.3f} of the whole; "
          f"a second tail on the same prefix would cost {1 + trained / whole:.2f} passes")


if __name__ == "__main__":
    main()
