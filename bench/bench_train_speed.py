"""Training throughput of efficientnet_lite0 on this CPU: fp32 vs bf16, all blocks vs the last N.

Prints images/s for one optimisation step (forward, backward, AdamW) on batches of 32, every
setting measured in this one run so the ratios are comparable on a shared machine.

    python bench/bench_train_speed.py [--size 224] [--steps 3]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from vitrina.models.registry import create_model


def train_speed(model: torch.nn.Module, unfreeze: int, precision: str, size: int, steps: int, batch: int = 32) -> float:
    blocks = model.blocks()
    for p in model.parameters():
        p.requires_grad_(False)
    for block in blocks if unfreeze < 0 else blocks[len(blocks) - unfreeze :]:
        for p in block.parameters():
            p.requires_grad_(True)
    for p in model.head.parameters():
        p.requires_grad_(True)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.num_classes, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 25, pretrained=True).to(memory_format=torch.channels_last)
    print(f"efficientnet_lite0 training step, batch 32, {args.size} px, {torch.get_num_threads()} threads")
    print(f"{'trainable blocks':<18} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    rows = []
    for unfreeze in (-1, 4, 2):
        fp32 = train_speed(model, unfreeze, "fp32", args.size, args.steps)
        bf16 = train_speed(model, unfreeze, "bf16", args.size, args.steps)
        rows.append((unfreeze, fp32))
        label = "all" if unfreeze < 0 else f"last {unfreeze}"
        print(f"{label:<18} {fp32:>11.1f} {bf16:>11.1f} {bf16 / fp32:>10.2f}")
    base = rows[0][1]
    for unfreeze, fp32 in rows[1:]:
        print(f"fp32 speed-up of training the last {unfreeze} blocks over all: {fp32 / base:.2f}x")


if __name__ == "__main__":
    main()
