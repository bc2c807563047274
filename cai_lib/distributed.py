"""Several processes, one process group: rank/world helpers for `accelerate launch`.

Processes are started by `accelerate launch` (or `torchrun`), which sets RANK, WORLD_SIZE
and LOCAL_RANK; without them this is one process of a world of one and every helper
degrades to the single-process behaviour. `init_distributed` creates accelerate's
`PartialState` (the same object the HF Trainer uses): NCCL on GPUs, gloo on a CPU-only host
(which the tests use). `cai train --num-processes N` (cai_lib.train_launch) is the one user.

Generation is not sharded: stages 00, 01 and 03 run in one process. The sharded
generation that used to live here had no caller in any stage, so it was removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import CaiError


# ---------------------------------------------------------------------------------------
# rank / world
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                raise CaiError(f"environment variable {name}={value!r} is not an integer — unset it or fix the launcher") from None
    return default


def dist_info() -> DistInfo:
    """This process's place, from torch.distributed when initialised, else the launcher's env."""
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            return DistInfo(dist.get_rank(), dist.get_world_size(), _env_int(["LOCAL_RANK"], 0))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    world = _env_int(["WORLD_SIZE"], 1)
    rank = _env_int(["RANK"], 0)
    if not 0 <= rank < max(world, 1):
        raise CaiError(f"RANK={rank} is outside WORLD_SIZE={world} — launch with accelerate launch or torchrun")
    return DistInfo(rank, max(world, 1), _env_int(["LOCAL_RANK"], 0))


def is_main_process() -> bool:
    return dist_info().is_main


def init_distributed() -> DistInfo:
    """Join the launcher's process group (no-op for a single process) and return our place.

    On a host without CUDA, accelerate treats a launched process as non-distributed unless
    told it runs on CPU; ACCELERATE_USE_CPU makes the Trainer's own PartialState agree
    (it is a shared singleton, so whoever creates it first decides)."""
    info = dist_info()
    if info.world <= 1:
        return info
    import torch
    from accelerate import PartialState

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ["ACCELERATE_USE_CPU"] = "true"
    state = PartialState(cpu=cpu)
    if state.num_processes != info.world:
        raise CaiError(
            f"the launcher set WORLD_SIZE={info.world} but accelerate joined {state.num_processes} process(es) — "
            "launch with `accelerate launch` or `torchrun` and do not mix their settings")
    return dist_info()


def barrier() -> None:
    """Wait for every process (no-op for a single process)."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's `obj`, in rank order ([obj] for a single process)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
