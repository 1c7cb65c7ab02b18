"""Exponential moving average of a family's networks (its ``ema_targets``), for sampling.

After every update of the averaged networks (every loop step, except for a GAN under n_critic,
whose generator steps once in n_critic: ``Method.averaged_networks_updated``),
shadow = decay_t * shadow + (1 - decay_t) * weights, with
decay_t = min(decay, (1 + t) / (10 + t)) when warming up (t = updates so far; the num_updates rule
of TensorFlow's ExponentialMovingAverage), so the random initial weights fade within the first
steps instead of dominating thousands of them. Buffers (BatchNorm running statistics) are copied,
not averaged. Averaged generator weights give better samples than the last iterate (Yazıcı et al.
2019, "The unusual effectiveness of averaging in GAN training"; Karras et al. 2018), and diffusion
models sample from an EMA by design (Ho et al. 2020).

Grids, evaluation and validation run with the shadows swapped in for the family's networks; the
checkpoint holds them (resume stays exact), and the lean inference snapshot holds them in place of
the raw weights.
"""

from __future__ import annotations

import copy

import torch

from genlab.distributed import unwrap


class EMA:
    def __init__(self, method, decay: float, warmup: bool = True, halflife_images: float = 0.0, rampup: float = 0.0,
                 batch_size: int = 1):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.halflife_images, self.rampup, self.batch_size = halflife_images, rampup, batch_size
        nets = method.networks()
        missing = [name for name in method.ema_targets if name not in nets]
        if missing:
            raise ValueError(f"ema_targets {missing} are not networks of method {method.name!r}")
        self.targets = {name: unwrap(nets[name]) for name in method.ema_targets}
        self.shadows = {name: copy.deepcopy(net).requires_grad_(False) for name, net in self.targets.items()}

    def current_decay(self) -> float:
        if self.halflife_images:
            # StyleGAN2-ADA's rule (Karras et al. 2020, training_loop.py), which R3GAN's code keeps: the
            # average halves its weight on the past every `halflife` images, and the half-life is at
            # most `rampup` of the images seen so far, so early weights fade fast
            halflife = self.halflife_images
            if self.rampup:
                halflife = min(halflife, self.updates * self.batch_size * self.rampup)
            return 0.5 ** (self.batch_size / max(halflife, 1e-8))
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        decay = self.current_decay()
        for name, net in self.targets.items():
            shadow = self.shadows[name]
            torch._foreach_lerp_(list(shadow.parameters()), list(net.parameters()), 1.0 - decay)
            for s, b in zip(shadow.buffers(), net.buffers()):
                s.copy_(b)
        self.updates += 1

    @torch.no_grad()
    def buffers_to_live(self) -> None:
        """The averages' buffers into the live networks (after a family refits one, a fitted prior,
        with the averages swapped in)."""
        for name, net in self.targets.items():
            for s, b in zip(self.shadows[name].buffers(), net.buffers()):
                b.copy_(s)

    def to_memory_format(self, memory_format) -> None:
        for shadow in self.shadows.values():
            shadow.to(memory_format=memory_format)

    def applied(self, method):
        """A context with the shadows in place of the family's own networks."""
        return method.swapped(self.shadows)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates,
                "networks": {name: shadow.state_dict() for name, shadow in self.shadows.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for name, shadow in self.shadows.items():
            shadow.load_state_dict(state["networks"][name])
