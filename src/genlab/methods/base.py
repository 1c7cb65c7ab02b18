"""What every model family ("method") provides to the one training loop, and what it declares.

A method owns its networks (in ``self.nets``), optimizers and schedules. The loop knows none of
them: it hands the method batches in [-1, 1] on the right device, reads back a dict of scalar
tensors, and calls one hook at every epoch's end. What a family can do is stated on its class: the
abilities it subclasses (:mod:`genlab.methods.abilities`: an encoder, a likelihood) and its
declarations (``has_validation_loss``, ``latent_kind``, ``samplers``, ``ema_targets``), checked
when a config is resolved, so asking a family for what it cannot do is refused before training.

This module imports nothing from ``genlab.train``.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
import torch.nn as nn

from genlab.data.convert import to_model_range, to_uint8
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.methods.abilities import Reconstructs
from genlab.methods.step import Stepper
from genlab.samplers import SAMPLERS, SamplerOptions, SeededNoise, default_options

LATENT_KINDS = ("flat", "image", "none")
# what asking a family for an ability it lacks says (genlab.methods.abilities)
ABILITY_METHODS = {"reconstruct": "has no encoder, so it cannot reconstruct",
                   "encode_latent": "has no encoder with a latent code",
                   "encode": "has no posterior q(z|x) to encode with",
                   "log_likelihood": "has no likelihood, so bits per dimension are undefined for it"}


class MissingAbility(GenlabError, AttributeError):
    """An ability's method called on a family without it: one clear error, and hasattr() is False."""


class Method:
    name: ClassVar[str]
    config_class: ClassVar[type]

    # -- declared abilities (checked when a config is resolved) ----------------------------------
    has_validation_loss: ClassVar[bool] = False  # validation_step(...)["loss"]: early stopping on val_loss, best.pt
    has_validation_step: ClassVar[bool] = False  # validation_step gives held-out losses to log (implied by the above)
    latent_kind: ClassVar[str] = "flat"  # what generate(z) takes: flat (N, D) | image (N, C, H, W) | none
    samplers: ClassVar[tuple[str, ...]] = ("latent",)  # samplers it supports; the first is its default; () = makes no images
    ema_targets: ClassVar[tuple[str, ...]] = ()  # networks (names in networks()) averaged when train.ema_decay > 0
    # init.from_run: which of its networks start from which network of the other run ({own: other});
    # empty = every network whose name both families share
    init_networks: ClassVar[dict[str, str]] = {}
    # adversary.detector_run: the generator's loss can take adversary_loss(images) of a frozen detector
    accepts_adversary: ClassVar[bool] = False
    # model keys that change only how a trained model is evaluated (a bound's sample count), so
    # `genlab eval` may set them on a checkpoint (model.KEY=VALUE, --iw-samples, --bound-timesteps)
    evaluation_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Family-specific checks of a whole resolved config (the image size its architecture can
        take, sampler settings against the model's), run before anything is trained or written."""

    @classmethod
    def configure_from_base(cls, model_cfg: Any, base_config) -> None:
        """Fill the family's ``model`` section from the config of the ``init.from_run`` run (a latent
        family records its first stage). ``base_config()`` reads and resolves that run's config:
        call it only when the section lacks what it needs, so a resumed run needs no base run."""

    def __init__(self, cfg: Any, image_shape: tuple[int, int, int], device: torch.device):
        # The family's networks, by name: the one place the loop, checkpoints, the EMA and DDP find
        # them (a family adds its own: self.nets.decoder = ...; read back as self.decoder)
        self.nets = nn.ModuleDict()
        self.cfg = cfg
        self.image_shape = tuple(image_shape)
        self.device = device
        self.stepper = Stepper(self.networks)  # backward, scaler, clipping, accumulation: see methods/step.py
        # the config's `sampler` section (None for a family that makes no images: a detector)
        # set by genlab.detect.adversary.attach_adversary when adversary.detector_run is set; never
        # one of networks(): it is neither trained, nor checkpointed, nor wrapped for DDP
        self.adversary = None
        self.sampling: SamplerOptions | None = default_options(self.samplers[0]) if self.samplers else None

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, nn.Module) and name != "nets":
            raise TypeError(f"{type(self).__name__}.{name} = <{type(value).__name__}>: a family's networks live in "
                            f"self.nets (self.nets.{name} = ...), where checkpoints, the EMA and DDP find them")
        super().__setattr__(name, value)

    def __getattr__(self, name: str):
        """A network by name (self.decoder is self.nets.decoder): called only when nothing else has the
        name. An ability's method the family lacks is a MissingAbility (a GenlabError naming it)."""
        nets = self.__dict__.get("nets")
        if nets is not None and name in nets._modules:
            return nets._modules[name]
        if name in ABILITY_METHODS:
            raise MissingAbility(f"method {getattr(self, 'name', type(self).__name__)!r} {ABILITY_METHODS[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- what a family defines ------------------------------------------------------------------
    def networks(self) -> dict[str, nn.Module]:
        """The family's networks by name: ``self.nets`` (DDP wrappers and swapped-in EMA weights included)."""
        return dict(self.nets.items())

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def schedulers(self) -> dict[str, Any]:
        return {}

    def train_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch in [-1, 1] (``step``: steps done before this one), through
        ``self.stepper.minimize``; returns detached scalar tensors (no host sync). A key may be
        returned on some steps only (a loss under n_critic): it is averaged over the steps that have it."""
        raise NotImplementedError

    def averaged_networks_updated(self, step: int) -> bool:
        """Whether the step numbered ``step`` (steps done before it) updated the ``ema_targets``: the EMA
        advances only then, so ``train.ema_decay`` is per update of the network it averages (a GAN's
        generator steps once in ``n_critic`` loop steps)."""
        return True

    def validation_step(self, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Losses on a held-out batch without updating (has_validation_step), including ``loss`` when
        it is one to stop early on (has_validation_loss); ``generator`` draws any noise, the same every epoch."""
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent: (D,) for flat latents, (C, H, W) for image-shaped ones."""
        raise NotImplementedError

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (on the device) -> images in [-1, 1], deterministically (latent_kind flat or image)."""
        raise GenlabError(f"method {self.name!r} has no deterministic map from latents to images")

    def fit_prior(self, train_images: torch.Tensor) -> None:
        """Called by :meth:`end_epoch` with the uint8 training images: a family that samples from a
        density fitted to the training data refits it here (the autoencoder's Gaussian over codes),
        identically on every process. The default does nothing."""

    def prepare(self, train_images: torch.Tensor) -> None:
        """Called once when a run starts (not on resume), on every process with the same uint8
        training images: data-dependent initialisation (a flow's activation normalisation, a latent
        scale). The default does nothing."""

    def initialise_from(self, other: "Method", mapping: dict[str, str], source: str) -> list[str]:
        """Copy networks of ``other`` (a trained run's model) into this one, ``mapping`` = {own: other's}
        (empty: the family's ``init_networks``, else every shared name). Returns what was copied; a
        network that does not fit is a GenlabError naming both."""
        own, theirs = self.networks(), other.networks()
        mapping = mapping or dict(self.init_networks) or {k: k for k in own if k in theirs}
        if not mapping:
            raise GenlabError(f"init.from_run={source}: method {other.name!r} has networks {sorted(theirs)}, none of "
                              f"which method {self.name!r} has ({sorted(own)}); name them with init.networks=[own=other]")
        copied = []
        for mine, their in mapping.items():
            if mine not in own or their not in theirs:
                missing = f"{mine!r} is not a network of {self.name!r} ({sorted(own)})" if mine not in own else \
                    f"{their!r} is not a network of its {other.name!r} model ({sorted(theirs)})"
                raise GenlabError(f"init.from_run={source}: {missing}")
            target, state = unwrap(own[mine]).state_dict(), unwrap(theirs[their]).state_dict()
            missing = [k for k in target if k not in state]
            unexpected = [k for k in state if k not in target]
            wrong = [k for k in target if k in state and target[k].shape != state[k].shape]
            if missing or unexpected or wrong:
                what = (f"{wrong[0]} is {list(state[wrong[0]].shape)} there and {list(target[wrong[0]].shape)} here"
                        if wrong else f"{len(missing)} tensors missing there ({', '.join(missing[:3])})" if missing
                        else f"{len(unexpected)} tensors it has and this one lacks ({', '.join(unexpected[:3])})")
                raise GenlabError(f"init.from_run={source}: its {their!r} ({other.name}) does not fit this {mine!r} "
                                  f"({self.name}): {what}")
            unwrap(own[mine]).load_state_dict(state, strict=True)
            copied.append(f"{mine} <- {their}")
        return copied

    def example_inputs(self) -> dict[str, tuple[torch.Tensor, ...]]:
        """One example input per network, for `genlab summary` (torchinfo): a batch of one image by
        default; a family whose network takes a latent or a timestep says so."""
        image = torch.zeros(1, *self.image_shape, device=self.device)
        return {name: (image,) for name in self.networks()}

    def adversary_loss(self, images: torch.Tensor) -> torch.Tensor | None:
        """The frozen detector's term for generated ``images`` in [-1, 1] (None without one): a family
        with ``accepts_adversary`` adds it to its generator's loss."""
        return None if self.adversary is None else self.adversary(images)

    def extra_state(self) -> dict[str, Any]:
        """Any further training state a family keeps (counters, running statistics), checkpointed."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def end_epoch(self, train_images: torch.Tensor) -> None:
        """The one end-of-epoch hook, called by the loop on every process after an epoch's last step
        and before validation, evaluation, grids, the checkpoint and the choice of best.pt, with the
        networks that sample in place (the EMA averages when train.ema_decay is set) and the uint8
        training images. It steps the per-epoch learning-rate schedules and refits a fitted density
        (:meth:`fit_prior`); a family with more to do at an epoch's end extends it."""
        for scheduler in self.schedulers().values():
            scheduler.step()
        self.fit_prior(train_images)

    # -- shared behaviour -----------------------------------------------------------------------
    def run_step(self, x: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        """What the loop calls: the family's step, then the step helper's once-per-step work, whose
        values (the largest clipped gradient norm) join the step's: a non-finite one stops the run
        as a non-finite loss does."""
        stats = self.train_step(x, step)
        return {**stats, **self.stepper.end_step()}

    def grid_images(self, n: int, seed: int, held_out: torch.Tensor,
                    autocast=contextlib.nullcontext) -> dict[str, torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
        """The images the loop shows at grid time (RUN_DIR/NAME/TAG.png and TensorBoard), by NAME:
        ``samples`` for the seeds seed..seed+n-1, and for a family with an encoder ``reconstructions``,
        the uint8 ``held_out`` images beside their reconstructions. Called in the reporting context."""
        if not self.samplers:  # a family that makes no images (a detector) has no grids
            return {}
        images: dict = {"samples": self.sample(n, seed)}
        if isinstance(self, Reconstructs):
            with autocast():
                recon = self.reconstruct(to_model_range(held_out.to(self.device)))
            images["reconstructions"] = (held_out, to_uint8(recon).cpu())
        return images

    def train(self) -> None:
        """Training mode for every network that trains: one without trainable parameters (a frozen
        first stage) stays in eval mode, BatchNorm statistics included."""
        for net in self.networks().values():
            if any(p.requires_grad for p in net.parameters()):
                net.train()

    def eval(self) -> None:
        for net in self.networks().values():
            net.eval()

    @contextlib.contextmanager
    def evaluating(self):
        """Eval mode for the duration (BatchNorm running statistics, no dropout), then each network's
        previous mode again: reporting never changes the training state."""
        modes = {name: net.training for name, net in self.networks().items()}
        self.eval()
        try:
            yield
        finally:
            for name, net in self.networks().items():
                net.train(modes[name])

    @contextlib.contextmanager
    def swapped(self, replacements: dict[str, nn.Module]):
        """The given networks in place of the family's own in ``self.nets`` for the duration (the
        EMA's averages for sampling and evaluation)."""
        own = {name: self.nets[name] for name in replacements}
        for name, net in replacements.items():
            self.nets[name] = net
        try:
            yield
        finally:
            for name, net in own.items():
                self.nets[name] = net

    def sample_batch(self, seeds, options: SamplerOptions | None = None) -> torch.Tensor:
        """Images in [-1, 1] for ``seeds`` (one image per seed), through the configured sampler."""
        options = options or self.sampling
        noise = SeededNoise(seeds, self.device)
        return SAMPLERS.get(options.name).fn(self, noise, options)

    @torch.inference_mode()
    def sample(self, n: int, seed: int, batch_size: int = 256, options: SamplerOptions | None = None) -> torch.Tensor:
        """``n`` images as uint8 (n, C, H, W) on the CPU; image i is a function of seed ``seed + i``
        alone (its latent and every later draw come from its own generator), in eval mode."""
        with self.evaluating():
            chunks = [to_uint8(self.sample_batch(range(seed + i, seed + min(n, i + batch_size)), options)).cpu()
                      for i in range(0, n, batch_size)]
        return torch.cat(chunks)

    def num_parameters(self) -> dict[str, int]:
        """Parameters per network (DDP and compile wrappers share their module's parameters)."""
        return {k: sum(p.numel() for p in net.parameters()) for k, net in self.networks().items()}

    def distribute(self, wrap) -> None:
        """Replace every network in ``self.nets`` by ``wrap(network)`` (DistributedDataParallel, which
        leaves a network without trainable parameters as it is)."""
        for name, net in list(self.nets.items()):
            self.nets[name] = wrap(net)

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
