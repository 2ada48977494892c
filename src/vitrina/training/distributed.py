"""Multi-process training through PyTorch DDP: `torchrun --nproc_per_node=N -m vitrina train ...`.

torchrun sets RANK / WORLD_SIZE / MASTER_ADDR; we join the process group (gloo on CPU, NCCL on
CUDA), give each process its own GPU, and let rank 0 alone write the run folder.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the process group when launched by torchrun; returns (rank, world size)."""
    if not launched_by_torchrun():
        return 0, 1
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_device_name(device: str) -> str:
    """Each process of a multi-GPU run takes the GPU of its local rank."""
    if dist.is_initialized() and torch.cuda.is_available() and device in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def broadcast(value: Any) -> Any:
    """Rank 0's value on every rank (e.g. the run folder rank 0 created)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """Rank 0 (or a single process): the one that writes the run folder."""
    return not dist.is_initialized() or dist.get_rank() == 0


def world_position() -> tuple[int, int]:
    """(rank, world size) of this process."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def processes_on_this_machine() -> int:
    """Training processes sharing this machine's cores (torchrun's LOCAL_WORLD_SIZE; 1 alone)."""
    if not dist.is_initialized():
        return 1
    return int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
