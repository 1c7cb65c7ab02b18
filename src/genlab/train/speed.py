"""How a run uses its device: precision, memory layout, compilation, CUDA graphs.

Every choice is made once, here, from ``train.*`` and the device, into a :class:`SpeedPlan` that
the loop applies the same way to every family and writes to the run's log. Keeping the decision
separate from the device means the CUDA choices are tested on machines without one.

- bf16 autocast is the CUDA default: it needs no loss scaling because bf16 keeps fp32's exponent
  range (8 bits); fp16 (5 exponent bits) needs a gradient scaler (Micikevicius et al. 2018).
- channels_last (NHWC) is the layout cuDNN's fastest convolution kernels work in on tensor cores.
- ``torch.compile`` fuses the elementwise work between convolutions; its ``reduce-overhead`` mode
  records each compiled network into CUDA graphs, which replay a whole forward or backward pass as
  one launch: what pays when a step is many small kernels (small images, small batches) and the
  host cannot issue them as fast as the GPU runs them.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from genlab.errors import GenlabError
from genlab.methods.step import fused_optimizers

log = logging.getLogger("genlab")

# torch.compile's modes (genlab.config.COMPILE_MODES); "reduce-overhead" adds CUDA graphs (cudagraph trees) on CUDA.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class SpeedPlan:
    device_type: str
    precision: str  # bf16 | fp16 | fp32, after resolving "auto"
    channels_last: bool
    fused_optimizer: bool  # fused Adam (one kernel for all parameters) on CUDA; foreach elsewhere
    sync_batchnorm: bool  # BatchNorm statistics over all ranks (DDP on GPUs)
    compile_mode: str | None  # None: eager
    cuda_graphs: bool  # compiled networks replayed as CUDA graphs

    @property
    def grad_scaler(self) -> bool:
        return self.precision == "fp16"

    def autocast(self):
        """The autocast context of the plan's precision: bf16 or fp16 autocast, nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device_type, dtype=dtype)

    def describe(self) -> str:
        parts = [{"bf16": "bf16 autocast", "fp16": "fp16 autocast + grad scaler", "fp32": "fp32"}[self.precision]]
        parts.append("channels_last" if self.channels_last else "NCHW")
        parts.append("fused Adam" if self.fused_optimizer else "foreach Adam")
        if self.sync_batchnorm:
            parts.append("SyncBatchNorm")
        parts.append(f"torch.compile({self.compile_mode})" if self.compile_mode else "eager")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        return ", ".join(parts)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise GenlabError("train.precision=fp16 (with loss scaling) needs CUDA; use bf16 or fp32 on this device")
    return precision


def plan_speed(train_cfg, device: torch.device, distributed: bool = False) -> SpeedPlan:
    """The speed settings of a run on ``device`` from its ``train`` config section."""
    cuda = device.type == "cuda"
    mode = train_cfg.compile_mode if train_cfg.compile else None
    return SpeedPlan(
        device_type=device.type,
        precision=resolve_precision(train_cfg.precision, device),
        channels_last=bool(train_cfg.channels_last and cuda),  # for cuDNN's tensor-core kernels
        fused_optimizer=fused_optimizers(device),
        sync_batchnorm=distributed and cuda,  # gloo has no SyncBatchNorm kernels; CPU ranks keep their own
        compile_mode=mode,
        cuda_graphs=cuda and mode in CUDA_GRAPH_MODES,
    )


def apply_plan(plan: SpeedPlan, method, accumulate: int = 1) -> None:
    """Layout, synchronised BatchNorm, loss scaling and accumulation (through the family's step
    helper) and compilation for every network of a family (before the DDP wrapper, which then sees
    the converted modules)."""
    if plan.device_type == "cuda":
        # Every step has the same shapes, so cuDNN's one-time search for the fastest convolution
        # algorithm per shape pays from the second step on.
        torch.backends.cudnn.benchmark = True
    for net in method.networks().values():
        if plan.channels_last:
            net.to(memory_format=torch.channels_last)
        if plan.sync_batchnorm:
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    method.stepper.configure(scaler=torch.amp.GradScaler("cuda") if plan.grad_scaler else None, accumulate=accumulate)
    if plan.compile_mode:
        import torch._dynamo as dynamo  # deferred: dynamo only when compiling (and not `import torch._dynamo`, which would make `torch` local here)

        dynamo.config.suppress_errors = True  # a graph that fails to compile runs eagerly
        try:
            for net in method.networks().values():
                net.compile(mode=plan.compile_mode)
        except Exception as e:  # no compiler, an unsupported platform: train eagerly
            log.warning("train.compile: compilation is not available here (%s); training in eager mode",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)


def begin_step(plan: SpeedPlan) -> None:
    """Tell CUDA graph trees that a new training step starts, so the buffers of the previous step's
    replays may be reused (their outputs have been consumed by the optimizer step)."""
    if plan.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()


def place_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The whole uint8 training split on the device when it fits in half the free memory, so
    batches are gathered there; otherwise it stays memory-mapped on the host, and each batch is
    gathered into pinned memory so its copy to the GPU runs asynchronously."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = images.numel() * images.element_size()
    if nbytes < free // 2:
        return images.to(device)
    log.info("training images (%.1f GB) stay on the host: the GPU has %.1f GB free", nbytes / 1e9, free / 1e9)
    return images


def out_of_memory_message(device: torch.device, rank_batch: int, image_shape, method: str, batch_size: int) -> str:
    """One line for a batch that does not fit on the device: what, where, and what to lower."""
    where = str(device)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        where += f" ({torch.cuda.get_device_name(device)}, {total:.0f} GiB)"
    return (f"out of memory: a batch of {rank_batch} images of {'x'.join(map(str, image_shape))} does not fit on "
            f"{where} for {method}; lower train.batch_size (now {batch_size})")
