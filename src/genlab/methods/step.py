"""What every optimisation step needs besides its loss, owned in one place so that no family (and
not the loop) handles loss scaling, clipping or accumulation by hand:

- the fp16 gradient scaler (Micikevicius et al. 2018): losses scaled before backward, gradients
  unscaled before clipping, steps skipped on overflow, the scale updated once per training step;
- clipping of each optimizer's global gradient norm;
- gradients taken inside a loss (gradient penalties: WGAN-GP, R1), correct under the scaler;
- gradient accumulation (``train.accumulate``): the batch is cut into micro-batches whose
  gradients add up before one optimizer step, and under DDP only the last one all-reduces;
- optimizers and their per-epoch learning-rate decay from an :class:`~genlab.config.OptimConfig`.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

from genlab.config import ADAM_BETAS, OptimConfig


def fused_optimizers(device: torch.device) -> bool:
    """Fused Adam (one kernel for all parameters) on CUDA; foreach elsewhere. The speed plan reports
    this same rule."""
    return device.type == "cuda"


def make_optimizer(cfg: OptimConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """Adam, AdamW or RMSprop from ``cfg``; Adam(W) on CUDA as the fused kernel (one launch for all
    parameters), elsewhere foreach."""
    params = list(params)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                   foreach=True)
    cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    fast = {"fused": True} if fused_optimizers(device) else {"foreach": True}
    betas = tuple(cfg.betas) if cfg.betas is not None else ADAM_BETAS
    return cls(params, lr=cfg.lr, betas=betas, eps=cfg.eps, weight_decay=cfg.weight_decay, **fast)


def make_scheduler(cfg: OptimConfig, optimizer: torch.optim.Optimizer):
    """The learning rate times ``cfg.lr_gamma`` after every epoch (the loop steps it)."""
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_gamma)


def decay_schedulers(**optimizers: tuple[OptimConfig, torch.optim.Optimizer]) -> dict:
    """``make_scheduler`` for each named (config, optimizer) whose ``lr_gamma`` is not 1: per-epoch
    decay only where asked for, so runs without one keep checkpoints without schedulers."""
    return {name: make_scheduler(cfg, opt) for name, (cfg, opt) in optimizers.items() if cfg.lr_gamma != 1.0}


@torch.no_grad()
def adaptive_clip_(params, factor: float, eps: float = 1e-3) -> None:
    """Adaptive gradient clipping (Brock et al. 2021, "High-performance large-scale image recognition
    without normalization", eq. 3), in place: each unit's gradient (a row of the weight: an output
    channel of a convolution, a neuron of a linear layer) is scaled down to at most ``factor`` times
    the norm of that unit's weights (floored at ``eps``, so units starting at zero can move)."""
    for p in params:
        if p.grad is None:
            continue
        dims = tuple(range(1, p.ndim)) or None
        norm = torch.linalg.vector_norm
        weight_norm = (norm(p, dim=dims, keepdim=True) if dims else p.abs()).clamp(min=eps)
        grad_norm = norm(p.grad, dim=dims, keepdim=True) if dims else p.grad.abs()
        p.grad.mul_((factor * weight_norm / grad_norm.clamp(min=1e-6)).clamp(max=1.0))


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """Parameters of ``modules`` without gradients for the duration: G's step back-propagates through
    D to G's weights only, neither computing D's gradients nor (under DDP) all-reducing them, as
    rosinality's stylegan2 does with requires_grad(discriminator, False)."""
    params = [p for m in modules for p in m.parameters()]
    states = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, state in zip(params, states):
            p.requires_grad_(state)


class Stepper:
    """Backward passes and optimizer steps of one family. The loop configures it (scaler, accumulation)
    and ends each training step with :meth:`end_step`; a family calls :meth:`minimize` for each of its
    optimizers and :meth:`gradients` for penalties."""

    def __init__(self, networks: Callable[[], dict[str, nn.Module]] = dict):
        self.networks = networks  # the family's networks (DDP wrappers included), for no_sync
        # this step's clipped gradient norms (fp32 only: under the fp16 scaler an inf gradient is
        # expected, and the scaler skips the step), returned by end_step as the step's grad_norm
        self.norms: list[torch.Tensor] = []
        self.scaler: torch.amp.GradScaler | None = None
        self.accumulate = 1

    def configure(self, scaler: torch.amp.GradScaler | None = None, accumulate: int = 1) -> None:
        self.scaler, self.accumulate = scaler, accumulate

    def _no_sync(self):
        """DDP skips its all-reduce for every network in this context (gradients stay local and add up)."""
        stack = contextlib.ExitStack()
        for net in self.networks().values():
            if isinstance(net, torch.nn.parallel.DistributedDataParallel):
                stack.enter_context(net.no_sync())
        return stack

    def micro_batches(self, *tensors: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """The step's tensors cut along the batch dimension into ``accumulate`` near-equal parts."""
        k = min(self.accumulate, len(tensors[0]))
        chunks = [t.tensor_split(k) for t in tensors]
        return list(zip(*chunks))

    def minimize(self, optimizer: torch.optim.Optimizer, objective: Callable, *tensors: torch.Tensor,
                 clip: float = 0.0, agc: float = 0.0) -> dict[str, torch.Tensor]:
        """One step of ``optimizer`` on ``objective(*micro_batch)``, a scalar loss or a dict of scalars
        holding ``loss``. With accumulation the objective runs once per micro-batch, each loss weighted
        by its share of the batch, so the gradient is that of the whole batch's mean loss (up to
        BatchNorm, which sees micro-batches). Draw the step's noise before, for the whole batch, and
        pass it in ``tensors``: then the result does not depend on ``train.accumulate``. Returns the
        batch mean of every value, detached."""
        optimizer.zero_grad(set_to_none=True)
        parts = self.micro_batches(*tensors)
        total = len(tensors[0])
        stats: dict[str, torch.Tensor] = {}
        for i, part in enumerate(parts):
            share = len(part[0]) / total
            with self._no_sync() if i < len(parts) - 1 else contextlib.nullcontext():
                out = objective(*part)
                values = out if isinstance(out, dict) else {"loss": out}
                loss = values["loss"] * share  # (share is exactly 1 without accumulation)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            for key, value in values.items():
                value = value.detach() * share
                stats[key] = stats[key] + value if key in stats else value
        if clip > 0 or agc > 0:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if agc > 0:
                adaptive_clip_(params, agc)
            if clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
                if self.scaler is None:  # (under the fp16 scaler an inf gradient is expected: the step is skipped)
                    self.norms.append(norm.detach())
        if self.scaler is not None:
            self.scaler.step(optimizer)  # skipped when the unscaled gradients hold inf or NaN
        else:
            optimizer.step()
        return stats

    def gradients(self, output: torch.Tensor, inputs: list[torch.Tensor] | torch.Tensor) -> list[torch.Tensor]:
        """d output.sum() / d inputs with a graph (for a penalty on them). Under the fp16 scaler the
        output is scaled first, so small gradients do not underflow, and the result unscaled
        (PyTorch's AMP recipe for gradient penalties)."""
        inputs = [inputs] if torch.is_tensor(inputs) else list(inputs)
        if self.scaler is None:
            return list(torch.autograd.grad(output.sum(), inputs, create_graph=True))
        scaled = torch.autograd.grad(self.scaler.scale(output.sum()), inputs, create_graph=True)
        inverse = 1.0 / self.scaler.get_scale()
        return [g * inverse for g in scaled]

    def end_step(self) -> dict[str, torch.Tensor]:
        """After every optimizer of a training step has stepped: the scaler's one update. Returns
        ``grad_norm``, the largest clipped gradient norm of the step (NaN when any was NaN), when
        one was clipped: the loop logs it and stops on a non-finite one as on a non-finite loss."""
        if self.scaler is not None:
            self.scaler.update()
        if not self.norms:
            return {}
        norms, self.norms = torch.stack(self.norms), []
        return {"grad_norm": norms.max()}  # (torch.max propagates NaN)
