"""Multi-GPU training through `torchrun` (DistributedDataParallel), the same command as one GPU.

`torchrun --nproc_per_node=N -m train ...` (or `make train GPUS=N`) starts N processes; each
sees WORLD_SIZE, RANK and LOCAL_RANK. Every process trains on its own share of each epoch's
batches (EpochSampler) and gradients are averaged; every process validates the same weights, and
only rank 0 prints and writes the run folder. Without torchrun nothing here does anything."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def init(device_pref: str) -> Dist:
    """Join the process group when started by torchrun; the single process otherwise. Ranks > 0
    print nothing (their stdout goes to /dev/null) so the log reads like a single-GPU run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    d = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = device_pref != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(d.local_rank)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if cuda else "gloo")
    if not d.main:
        sys.stdout = open(os.devnull, "w")
    return d


def device_for(d: Dist, device: torch.device) -> torch.device:
    """Each process drives its own GPU."""
    return torch.device("cuda", d.local_rank) if device.type == "cuda" and d.active else device


def broadcast(d: Dist, value):
    """Rank 0's value on every rank (e.g. the run folder's time stamp)."""
    if not d.active:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(d: Dist, value) -> list:
    """Every process's value, in rank order, on every rank (e.g. each process's random streams)."""
    if not d.active:
        return [value]
    values = [None] * d.world
    tdist.all_gather_object(values, value)
    return values


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """values summed over every process (in place; as they are without torchrun). NCCL wants
    them on this process's GPU."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        tdist.all_reduce(values)
    return values


def barrier(d: Dist) -> None:
    if d.active:
        tdist.barrier()


def wrap(d: Dist, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not d.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def finish(d: Dist) -> None:
    if d.active and tdist.is_initialized():
        tdist.destroy_process_group()
