"""The process group under `torchrun`: which backend moves the tensors of a device, joining
the group, and which rank writes the results."""

from __future__ import annotations

import os


def ddp_backend(device: str) -> str:
    """The process-group backend for tensors on `device`: nccl moves CUDA tensors only, so a
    CPU run on a machine that happens to have GPUs must use gloo."""
    return "nccl" if device.startswith("cuda") else "gloo"


def init_distributed(device: str = "cpu") -> None:
    """Under `torchrun` (WORLD_SIZE > 1) join the process group with the backend for the
    device the work runs on (`ddp_backend`)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = ddp_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)


def rank() -> int:
    """This process's rank in the group (0 outside `torchrun`): under `torchrun` every rank
    trains and rank 0 alone writes."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
