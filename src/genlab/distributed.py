"""Several processes through PyTorch's own DistributedDataParallel, started by torchrun.

``torchrun --nproc_per_node=N -m genlab train ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; genlab
then joins the process group (NCCL on GPUs, gloo on CPUs), shards each global batch across ranks,
wraps every network in DDP (gradients averaged across ranks in the backward pass) and lets only
rank 0 write the run directory. Nothing else in the loop or in a family changes.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from genlab.errors import GenlabError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def from_environment() -> DistInfo:
    """The process's place in a torchrun job, joining the process group if it has not been joined."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("GENLAB_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
    return DistInfo(rank, world, local_rank)


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return SINGLE


def broadcast(obj, info: DistInfo):
    """Rank 0's value of ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is true on any (so all ranks stop together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group together, after a successful run: the ranks first wait for rank 0
    (which writes the run directory after the others are done), then destroy the group while every
    process is alive. A rank that exits alone while gloo's threads still talk to its peers can die
    by SIGABRT ("terminate called without an active exception"), seen once on CI's 2 cores."""
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_to_main(obj, info: DistInfo) -> list | None:
    """Every rank's ``obj`` (tensors moved to the CPU), in rank order, on rank 0; None elsewhere."""
    if not info.enabled:
        return [obj]
    if torch.is_tensor(obj):
        obj = obj.cpu()
    elif isinstance(obj, dict):
        obj = {k: v.cpu() if torch.is_tensor(v) else v for k, v in obj.items()}
    parts = [None] * info.world_size if info.is_main else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def _tensors(modules: dict[str, torch.nn.Module]):
    """(name, tensor) of every parameter and buffer of the named modules, in a fixed order."""
    for name, module in sorted(modules.items()):
        module = unwrap(module)
        for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
            yield f"{name}.{key}", tensor


def state_mismatches(modules: dict[str, torch.nn.Module], info: DistInfo) -> list[str]:
    """The parameters and buffers (``network.tensor``) that are not bit-identical on every rank: a
    checksum of each, gathered from all ranks (a collective). Empty when every rank agrees."""
    if not info.enabled:
        return []
    digests = {name: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
               for name, t in _tensors(modules)}
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, digests)
    names = sorted(set().union(*(d.keys() for d in everyone)))
    return [name for name in names if len({d.get(name) for d in everyone}) > 1]


def value_mismatches(values: dict, info: DistInfo) -> list[str]:
    """The names in ``values`` (plain values: numbers, strings, lists) that differ between ranks (a collective)."""
    if not info.enabled:
        return []
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, {k: repr(v) for k, v in values.items()})
    names = sorted(set().union(*(d.keys() for d in everyone)))
    return [name for name in names if len({d.get(name) for d in everyone}) > 1]


def _is_running_statistic(module: torch.nn.Module, key: str) -> bool:
    return isinstance(module, torch.nn.modules.batchnorm._NormBase) and key in ("running_mean", "running_var")


@torch.no_grad()
def sync_buffers(modules: dict[str, torch.nn.Module], info: DistInfo) -> None:
    """Make every buffer of the named modules the same on every rank (a collective): running
    statistics over batches (BatchNorm's running mean and variance, which each rank gathered from its
    own shard) are averaged over the ranks; any other buffer (a spectral norm's power-iteration
    vector, a counter, a fitted density) is rank 0's, broadcast."""
    if not info.enabled:
        return
    for module in modules.values():
        for owner in unwrap(module).modules():
            for key, buffer in owner.named_buffers(recurse=False):
                if buffer is None:
                    continue
                if _is_running_statistic(owner, key) and buffer.is_floating_point():
                    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                    buffer.div_(info.world_size)
                else:
                    dist.broadcast(buffer, src=0)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``value`` averaged over the processes of the current group (itself outside one): for a
    statistic a family measures on each rank's shard and then acts on (an adaptive noise level)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel wrapper (checkpoints hold the plain module)."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def wrap_ddp(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DDP around one network. Buffers are not broadcast at every forward, so rank 0 can sample,
    validate and evaluate alone without a collective that the other ranks would never join."""
    if not any(p.requires_grad for p in net.parameters()):
        return net
    ids = [device.index] if device.type == "cuda" else None
    # Newer torch renamed the option (the old name warns); both leave initial buffers synchronised.
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(net, device_ids=ids, **no_sync)


def resolve_device(name: str) -> torch.device:
    """--device auto | cpu | cuda as a torch device; cuda where there is none is a GenlabError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError(f"--device cuda: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if name not in ("cpu", "cuda"):
        raise GenlabError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def check_gpus(requested: int) -> None:
    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if requested > have:
        raise GenlabError(f"--gpus {requested}: this machine has {have} GPU{'s' if have != 1 else ''}")
