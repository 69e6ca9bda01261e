"""Data-parallel QAT under `torchrun`: which process this is, and agreeing with rank 0.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process and
nothing here does anything. Processes talk through torch.distributed (gloo on CPU, nccl on
GPUs); only rank 0 holds the run directory's lock and writes artifacts and the manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from quantpipe.errors import QuantpipeError

if TYPE_CHECKING:
    from torch import Tensor

# Rank 0 tells the others whether to train: the stage may be up to date, or fail early.
GO, STOP = 1, 0
TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place, from torchrun's environment variables."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise QuantpipeError(
            f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers ({e})"
        ) from None
    return World(rank, size, local)


def start(w: World) -> None:
    """Join the process group: NCCL when every process has a GPU, else gloo."""
    if not w.distributed:
        return
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend, timeout=TIMEOUT)


def stop(w: World) -> None:
    if w.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def agree(w: World, decision: int | None = None) -> int:
    """Rank 0's `decision`, as every rank receives it (single process: `decision` itself)."""
    if not w.distributed:
        return GO if decision is None else decision
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL moves GPU tensors only
    value = torch.tensor([decision if w.is_main and decision is not None else -1], device=device)
    dist.broadcast(value, src=0)
    return int(value.item())


def shard(indices: Tensor, w: World) -> Tensor:
    """This rank's equal, contiguous share of one global batch (the caller keeps global
    batches divisible by the world size)."""
    if not w.distributed:
        return indices
    per = len(indices) // w.size
    return indices[w.rank * per : (w.rank + 1) * per]
