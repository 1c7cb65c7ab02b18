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


def parameters_agree(networks: dict, info: DistInfo) -> bool:
    """Whether every rank holds bit-identical parameters (a checksum gathered from all ranks)."""
    h = hashlib.sha256()
    for name, net in sorted(networks.items()):
        for p in net.parameters():
            h.update(p.detach().cpu().numpy().tobytes())
    digests = [None] * info.world_size
    dist.all_gather_object(digests, h.hexdigest())
    return len(set(digests)) == 1


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
