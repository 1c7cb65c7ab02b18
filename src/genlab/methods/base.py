"""What every model family ("method") provides to the one training loop.

A method owns its networks, optimizers and schedules. The loop knows none of them: it hands the
method batches in [-1, 1] on the right device and reads back a dict of scalar tensors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from genlab.data.convert import to_uint8
from genlab.errors import GenlabError
from genlab.train.speed import fused_optimizers


def make_optimizer(kind: str, params, lr: float, betas: list[float], weight_decay: float,
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW; on CUDA the fused kernel (one launch for all parameters), else foreach."""
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    fast = {"fused": True} if fused_optimizers(device) else {"foreach": True}
    return cls(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **fast)


def unwrap(net: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (checkpoints hold the plain module)."""
    return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net


def latents_from_seeds(n: int, seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    """One standard-normal latent per image, image i drawn from its own generator seeded ``seed + i``,
    so a sample never depends on the batch size, the device or how many images are asked for."""
    out = torch.empty(n, *shape)
    for i in range(n):
        out[i] = torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
    return out


class Method:
    name: ClassVar[str]
    config_class: ClassVar[type]
    has_encoder: ClassVar[bool] = False
    has_validation_loss: ClassVar[bool] = False

    def __init__(self, cfg: Any, image_shape: tuple[int, int, int], device: torch.device):
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.device = device
        self.grad_scaler: torch.amp.GradScaler | None = None  # set by the loop for fp16 training

    # -- what a family defines ------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def schedulers(self) -> dict[str, Any]:
        return {}

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch in [-1, 1]; returns detached scalar tensors (no host sync)."""
        raise NotImplementedError

    def validation_step(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses on a held-out batch without updating; must include ``loss`` for early stopping."""
        raise NotImplementedError

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (on the device) -> images in [-1, 1]."""
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def log_likelihood(self, x: torch.Tensor, k: int, calibration: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Per-image log-density (nats) of continuous images ``x`` in [-1, 1], and a description of
        how it was obtained ("exact", or the bound used). Families with an exact likelihood (flows)
        return it and ignore ``k``; ``calibration`` holds training images in [-1, 1] for families
        that must fit a decoder scale first."""
        raise GenlabError(f"method {self.name!r} has no likelihood, so bits per dimension are undefined for it")

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> reconstructions in [-1, 1] (families with an encoder)."""
        raise GenlabError(f"method {self.name!r} has no encoder, so it cannot reconstruct")

    # -- shared behaviour -----------------------------------------------------------------------
    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, clip: float = 0.0) -> None:
        """Backward pass and one optimizer step, with optional clipping of the global gradient norm
        of the optimizer's parameters (0 = off). Every family steps through here."""
        optimizer.zero_grad(set_to_none=True)
        scaler = self.grad_scaler
        if scaler is None:
            loss.backward()
        else:  # fp16: scale the loss so small gradients survive; the loop calls scaler.update() per step
            scaler.scale(loss).backward()
            if clip > 0:
                scaler.unscale_(optimizer)
        if clip > 0:
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
        if scaler is None:
            optimizer.step()
        else:
            scaler.step(optimizer)

    def end_epoch(self) -> None:
        for scheduler in self.schedulers().values():
            scheduler.step()

    def train(self) -> None:
        for net in self.networks().values():
            net.train()

    def eval(self) -> None:
        for net in self.networks().values():
            net.eval()

    @torch.inference_mode()
    def sample(self, n: int, seed: int, batch_size: int = 256) -> torch.Tensor:
        """``n`` images as uint8 (n, C, H, W) on the CPU; image i comes from seed ``seed + i``."""
        was_training = [net.training for net in self.networks().values()]
        self.eval()
        z = latents_from_seeds(n, seed, self.latent_shape())
        chunks = [to_uint8(self.generate(z[i : i + batch_size].to(self.device))).cpu() for i in range(0, n, batch_size)]
        for net, mode in zip(self.networks().values(), was_training):
            net.train(mode)
        return torch.cat(chunks)

    def num_parameters(self) -> dict[str, int]:
        """Parameters per network (DDP and compile wrappers share their module's parameters)."""
        return {k: sum(p.numel() for p in net.parameters()) for k, net in self.networks().items()}

    def distribute(self, wrap) -> None:
        """Replace every network by ``wrap(network)`` (DistributedDataParallel). Families name their
        networks as attributes with the keys networks() uses, so this needs nothing from them."""
        for name, net in self.networks().items():
            setattr(self, name, wrap(net))

    def extra_state(self) -> dict[str, Any]:
        """Any further training state a family keeps (counters, running statistics), checkpointed."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {k: unwrap(net).state_dict() for k, net in self.networks().items()},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers().items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers().items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], networks_only: bool = False, source: str = "checkpoint") -> None:
        """Load a state; a state of another family or architecture is a GenlabError naming ``source``."""
        sections = ["networks"] if networks_only else ["networks", "optimizers", "schedulers"]
        own = {"networks": self.networks(), "optimizers": self.optimizers(), "schedulers": self.schedulers()}
        for section in sections:
            saved = state.get(section, {})
            if set(saved) != set(own[section]):
                raise GenlabError(
                    f"{source}: holds {section} {sorted(saved)}, but method {self.name!r} has {sorted(own[section])}"
                )
            for key, obj in own[section].items():
                try:
                    if section == "networks":
                        unwrap(obj).load_state_dict(saved[key], strict=True)
                    else:
                        obj.load_state_dict(saved[key])
                except (RuntimeError, ValueError, KeyError) as e:
                    first = str(e).strip().splitlines()[0]
                    raise GenlabError(f"{source}: {section[:-1]} {key!r} does not fit this model: {first}") from e
        if not networks_only:
            self.load_extra_state(state.get("extra", {}))
