"""Data-parallel training on PyTorch's own engine: ``torchrun`` / ``accelerate launch`` set the environment.

Two strategies:

- ``ddp``: each process holds the frozen base and the adapters; ``DistributedDataParallel`` all-reduces the
  gradients of the trainable parameters only.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every transformer block and then the root, so
  each process keeps 1/world of the frozen base as well as of the adapters (which live inside the blocks).
  FSDP2 shards per parameter, so frozen and trainable tensors share a block without ``use_orig_params``
  tricks, and parameter names are unchanged. Parameters become ``DTensor``s: ``gather_trainable`` and
  ``optimizer_state`` collect full tensors for checkpoints and saves (collectives: every rank calls them).

Either way a global batch of B examples is split evenly, B / world per process, so the averaged gradient equals
a single process's gradient on the whole batch. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "STRATEGIES",
    "Dist",
    "assign",
    "gather_trainable",
    "load_optimizer_state",
    "optimizer_state",
    "reshard",
    "setup",
    "wrap",
]

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """True on the process that writes outputs."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over all processes."""
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (a collective: every rank calls it)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def setup() -> Dist:
    """Join the process group when launched by torchrun / accelerate (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if world == 1:
        return Dist(0, 1, device)
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), device)


def wrap(model: nn.Module, d: Dist, strategy: str = "ddp") -> nn.Module:
    """``model`` itself for one process; else DDP over its trainable parameters, or FSDP2 sharding in place.

    With ``fsdp`` the returned module is ``model`` itself (FSDP2 changes the module's class and parameters in
    place rather than wrapping it).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: expected one of {', '.join(STRATEGIES)}")
    if d.world == 1:
        return model
    if strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        from ..core.placement import find_blocks

        mesh = init_device_mesh(d.device.type, (d.world,))
        # Blocks first, root last: each block's parameters are gathered just before it runs and freed after,
        # and the root group takes what is left (embeddings, head).
        for block in find_blocks(model):
            fully_shard(model.get_submodule(block.path), mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def reshard(model: nn.Module) -> None:
    """Put FSDP2 parameters back in their sharded form after a forward without backward (validation): the root
    group keeps its gathered parameters after forward, which would hide the sharded ones from checkpoints."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather_trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable parameters by name (all-gathered when sharded: call on every rank)."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            t = p.detach().full_tensor() if _is_dtensor(p) else p.detach()
            out[name] = t.contiguous().cpu()
    return out


@torch.no_grad()
def assign(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a full tensor into ``param``; a sharded parameter keeps only its own shard."""
    if _is_dtensor(param):
        from torch.distributed.tensor import distribute_tensor

        value = distribute_tensor(value.to(param.dtype), param.device_mesh, param.placements)
    param.copy_(value.to(device=param.device, dtype=param.dtype))


def optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, strategy: str) -> dict[str, Any]:
    """The optimizer's state for a checkpoint: full tensors keyed by parameter name under FSDP (a collective;
    rank 0 gets the state, the others an empty dict), else the plain ``state_dict``."""
    if strategy != "fsdp" or not dist.is_initialized():
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {"by_name": get_optimizer_state_dict(model, opt, options=options)}


def load_optimizer_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Restore what ``optimizer_state`` returned (every rank reads the same checkpoint file)."""
    if "by_name" not in state:
        opt.load_state_dict(state)
        return
    if not dist.is_initialized():
        raise ValueError("this checkpoint was written by an FSDP run: resume it with --strategy fsdp")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, opt, state["by_name"], options=StateDictOptions(full_state_dict=True))
