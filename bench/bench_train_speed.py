"""Training throughput of efficientnet_lite0 on this CPU: fp32 vs bf16, all blocks vs the last N,
and the frozen stages in eager PyTorch vs ONNX Runtime in fp32 (what fine-tuning does on a CPU, with
the trained blocks in fp32 or, by default where the CPU has native bf16, in bf16).

Prints images/s for one optimisation step (forward, backward, AdamW) on batches of 32, every
setting measured in this one run so the ratios are comparable on a shared machine.

    python bench/bench_train_speed.py [--size 288] [--steps 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitrina.models.registry import create_model
from vitrina.models.stages import OnnxPrefix, split_at_trainable


def train_speed(
    model: torch.nn.Module, unfreeze: int, precision: str, size: int, steps: int, batch: int = 32, onnx_dir: str | None = None
) -> float:
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
    forward = model
    if onnx_dir is not None:
        prefix, tail = split_at_trainable(model, unfreeze)
        onnx_prefix = OnnxPrefix(prefix, 3, size, onnx_dir)
        forward = lambda images: tail(onnx_prefix(images).to(memory_format=torch.channels_last))  # noqa: E731

    return steps_per_second(forward, optimizer, x, y, precision, steps)


def scratch_speed(name: str, size: int, channels: int, precision: str, steps: int, batch: int = 128) -> float:
    """Training steps of a from-scratch CNN (what small grayscale images get) on random images."""
    torch.manual_seed(0)
    model = create_model(name, 10, pretrained=False, channels=channels, input_size=size).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, channels, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    return steps_per_second(model, optimizer, x, y, precision, steps)


def steps_per_second(
    forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    precision: str, steps: int,
) -> float:
    """Images per second of ``steps`` optimisation steps (forward, backward, update) after one warm-up step."""

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=288)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = create_model("efficientnet_lite0", 25, pretrained=True).to(memory_format=torch.channels_last)
    print(f"efficientnet_lite0 training step, batch 32, {args.size} px, {torch.get_num_threads()} threads")
    print(f"{'trainable blocks':<18} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10} {'fp32, frozen in ORT':>20} {'ORT/eager':>10}"
          f" {'bf16, frozen in ORT':>20} {'vs fp32+ORT':>12}")
    rows = []
    with tempfile.TemporaryDirectory() as onnx_dir:
        for unfreeze in (-1, 4, 3):  # 3: the fine-tuning default
            fp32 = train_speed(model, unfreeze, "fp32", args.size, args.steps)
            bf16 = train_speed(model, unfreeze, "bf16", args.size, args.steps)
            rows.append((unfreeze, fp32))
            label = "all" if unfreeze < 0 else f"last {unfreeze}"
            line = f"{label:<18} {fp32:>11.1f} {bf16:>11.1f} {bf16 / fp32:>10.2f}"
            if unfreeze >= 0:
                ort = train_speed(model, unfreeze, "fp32", args.size, args.steps, onnx_dir=onnx_dir)
                bf16_ort = train_speed(model, unfreeze, "bf16", args.size, args.steps, onnx_dir=onnx_dir)
                line += f" {ort:>20.1f} {ort / fp32:>10.2f} {bf16_ort:>20.1f} {bf16_ort / ort:>12.2f}"
            print(line, flush=True)
    print(f"\n{'from scratch, batch 128':<24} {'fp32 img/s':>11} {'bf16 img/s':>11} {'bf16/fp32':>10}")
    for name, size, channels in (("fmnist_cnn", 28, 1), ("cnn3", 64, 3)):
        fp32 = scratch_speed(name, size, channels, "fp32", 10 * args.steps)
        bf16 = scratch_speed(name, size, channels, "bf16", 10 * args.steps)
        print(f"{f'{name} at {size} px':<24} {fp32:>11.0f} {bf16:>11.0f} {bf16 / fp32:>10.2f}", flush=True)
    base = rows[0][1]
    for unfreeze, fp32 in rows[1:]:
        print(f"fp32 speed-up of training the last {unfreeze} blocks over all (eager): {fp32 / base:.2f}x")


if __name__ == "__main__":
    main()
