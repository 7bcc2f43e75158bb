"""Multi-process training helpers: joining the torchrun process group and the few collectives the loop runs.

Start a multi-GPU run with ``torchrun --nproc_per_node G -m VolGANCore.cli train ...``: every rank seeds its own
stream, gradients are all-reduced (sum / world) after every backward and rank 0 alone writes files. Works with the
gloo backend on CPU. Outside torchrun every helper here is a no-op (or answers for the one process), so the
training loop calls them unconditionally.
"""

from __future__ import annotations

import dataclasses
import os

__all__ = ["Dist", "launched_by_torchrun", "init_distributed", "all_reduce_grads", "broadcast_params", "any_rank",
           "gather_states"]


@dataclasses.dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank (its GPU) and whether it joined a group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: bool = False                          # joined a process group: collectives run (also with world 1)

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (it sets the rendezvous variables), whatever the world size."""
    return "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ and "LOCAL_RANK" in os.environ


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group (nccl on CUDA, gloo on CPU) when started by torchrun.

    A torchrun launch of one process joins a group of one too, so every collective of the loop runs: that is how
    ``torchrun --nproc_per_node 1`` proves the NCCL path on a single GPU (benchmarks/gpu_check.py).
    """
    import torch.distributed as tdist

    if not launched_by_torchrun():
        return Dist()
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), group=True)


def all_reduce_grads(params: list, dist: Dist) -> None:
    """Average gradients over ranks in one flat buffer (one collective per optimiser step)."""
    if not dist.group:
        return
    import torch
    import torch.distributed as tdist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    tdist.all_reduce(flat)
    flat /= dist.world
    torch.nan_to_num_(flat)  # a rank's NaN is caught by the finite check of the step, not spread as NaN weights
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def broadcast_params(module, dist: Dist) -> None:
    """Rank 0's parameters and buffers on every rank (identical initial networks)."""
    if not dist.group:
        return
    import torch.distributed as tdist

    for t in list(module.parameters()) + list(module.buffers()):
        tdist.broadcast(t.data, src=0)


def any_rank(flag: bool, dist: Dist) -> bool:
    """True on every rank if ``flag`` is true on any (one host sync); ``flag`` itself outside a process group."""
    if not dist.group:
        return flag
    import torch
    import torch.distributed as tdist

    on_gpu = tdist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def gather_states(dist: Dist, sampler_state: dict, gen_state) -> tuple[list, list]:
    """Every rank's sampler position and latent-RNG state (so a resumed multi-rank run continues exactly)."""
    if not dist.group:
        return [sampler_state], [gen_state]
    import torch.distributed as tdist

    box: list = [None] * dist.world
    tdist.all_gather_object(box, (sampler_state, gen_state.cpu()))
    return [b[0] for b in box], [b[1] for b in box]
