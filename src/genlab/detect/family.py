"""A real-vs-generated image classifier (a "deepfake detector") as a genlab family, so it trains
through the one loop with its run directories, checkpoints, resume and early stopping. It is
registered from here (genlab.methods names this module for the ``detector`` method), so nothing
under genlab.methods imports the detector benchmark.

The loop feeds the real training images; the fakes come from ``model.fakes`` (generator runs or
``.npz`` files, see :mod:`genlab.detect.fakes`): a pool of ``model.fake_n`` images per generator,
drawn once by seed when the run starts (and drawn again, identically, on resume), from which each
step takes as many fakes as it has reals, uniformly at random. The loss is the binary cross-entropy
of one logit per image, label 1 for generated. Every image, real or fake, first passes through
``model.encoding`` (JPEG quality 75 by default; :mod:`genlab.detect.encoding`), so the two classes
reach the classifier through one format and compression traces cannot tell them apart. Validation: held-out reals against a separate pool
of fakes from other seeds, so ``val_loss`` (early stopping, best.pt) measures generalisation to new
samples of the same generators rather than memorised ones.

It generates nothing: no sampler, no latent; `genlab detect eval` scores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from genlab.config import OptimConfig, check_positive
from genlab.data.convert import to_model_range, to_uint8
from genlab.detect.encoding import DEFAULT_ENCODING, jpeg, parse_encoding
from genlab.detect.fakes import VAL_SEED, check_same_shape, load_fake_source
from genlab.errors import GenlabError
from genlab.methods import METHODS
from genlab.methods.base import Method
from genlab.methods.step import decay_schedulers, make_optimizer
from genlab.models import DETECTOR_ARCHS


def _detector_optim() -> OptimConfig:
    return OptimConfig(lr=2e-4, betas=[0.5, 0.999])


@dataclass
class DetectorConfig:
    arch: str = "cnn"  # classifier (genlab.models.DETECTOR_ARCHS): cnn (small, fast) | resnet18 (from scratch)
    width: int = 32  # cnn: channels of its first layer (doubling per stride-2 step); resnet18 keeps torchvision's
    fakes: list[str] = field(default_factory=list)  # generator run directories or .npz files to detect
    fake_n: int = 4096  # training fakes per generator (seeds fake_seed .. fake_seed + fake_n - 1)
    fake_seed: int = 0  # first seed of the training fakes (validation and evaluation use other seeds)
    val_fake_n: int = 512  # validation fakes per generator
    sample_batch: int = 256  # images generated at once when the pools are drawn
    encoding: str = DEFAULT_ENCODING  # what every input, real or fake, passes through first: jpegQ | none (format parity)
    optim: OptimConfig = field(default_factory=_detector_optim)

    def validate(self, prefix: str = "model.") -> None:
        DETECTOR_ARCHS.canonical(self.arch)
        parse_encoding(self.encoding, f"{prefix}encoding")
        for key in ("width", "fake_n", "val_fake_n", "sample_batch"):
            check_positive(f"{prefix}{key}", getattr(self, key))
        check_positive(f"{prefix}fake_seed", self.fake_seed, allow_zero=True)


@METHODS.register("detector")
class DetectorMethod(Method):
    name = "detector"
    config_class = DetectorConfig
    has_validation_loss = True
    latent_kind = "none"
    samplers = ()  # a classifier: it makes no images

    def __init__(self, cfg: DetectorConfig, image_shape: tuple[int, int, int], device: torch.device):
        super().__init__(cfg, image_shape, device)
        self.nets.classifier = DETECTOR_ARCHS.get(cfg.arch)(image_shape, cfg.width).to(device)
        self.opt = make_optimizer(cfg.optim, self.classifier.parameters(), device)
        self._schedulers = decay_schedulers(classifier=(cfg.optim, self.opt))
        self.jpeg_quality = parse_encoding(cfg.encoding)  # parsed once: the real batch of every step uses it
        self.train_fakes: torch.Tensor | None = None  # uint8 pools, drawn when first needed
        self.val_fakes: torch.Tensor | None = None

    def optimizers(self):
        return {"classifier": self.opt}

    def schedulers(self):
        return self._schedulers

    def encode_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images through ``model.encoding`` (returned on the CPU): every image the detector
        sees, real or generated, in training, validation and evaluation, goes through it."""
        return images.cpu() if self.jpeg_quality is None else jpeg(images, self.jpeg_quality)

    def _encoded_batch(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of real images in [-1, 1] through the input encoding (as uint8, as stored)."""
        if self.jpeg_quality is None:
            return x
        return to_model_range(self.encode_input(to_uint8(x)).to(x.device))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """One logit per image in [-1, 1]; sigmoid(logit) is the probability that it was generated."""
        return self.classifier(x).float()

    # -- the fakes ---------------------------------------------------------------------------------
    def draw_pools(self) -> None:
        """The training and validation fakes of every generator in model.fakes (checked against the
        real images' shape), kept as uint8 on the training device."""
        cfg = self.cfg
        if not cfg.fakes:
            raise GenlabError("model.fakes names no generator runs (or .npz files) to detect; "
                              "`genlab detect train --fake RUN_DIR ...` sets it")
        train, val = [], []
        # Building a generator initialises its networks from the global RNG before its weights are
        # loaded: forked, so a resumed run (which draws here on its first step) stays bit-exact.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            for path in cfg.fakes:
                source = load_fake_source(path, self.device)
                check_same_shape(source, self.image_shape, "the detector's data")
                train.append(self.encode_input(source.draw(cfg.fake_n, cfg.fake_seed, cfg.sample_batch)))
                val.append(self.encode_input(source.draw(cfg.val_fake_n, VAL_SEED, cfg.sample_batch)))
                source.method = None  # the generator is not needed any more
        self.train_fakes = torch.cat(train).to(self.device)
        self.val_fakes = torch.cat(val).to(self.device)

    def prepare(self, train_images):
        self.draw_pools()  # before the run directory exists: a wrong fake is refused with nothing written

    def _pools(self) -> None:
        if self.train_fakes is None:  # a resumed run: the same seeds give the same pools
            self.draw_pools()

    # -- the steps ---------------------------------------------------------------------------------
    def _loss(self, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.logits(torch.cat([real, fake]))
        labels = torch.cat([torch.zeros(len(real), device=real.device), torch.ones(len(fake), device=real.device)])
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        accuracy = ((logits > 0).float() == labels).float().mean()
        return {"loss": loss, "accuracy": accuracy}

    def train_step(self, x, step):
        self._pools()
        # The fake batch's picks are drawn for the whole batch before any micro-batch split.
        pick = torch.randint(len(self.train_fakes), (x.shape[0],), device=self.train_fakes.device)
        fake = to_model_range(self.train_fakes[pick].to(x.device))
        return self.stepper.minimize(self.opt, self._loss, self._encoded_batch(x), fake, clip=self.cfg.optim.grad_clip,
                                     agc=self.cfg.optim.agc)

    @torch.no_grad()
    def validation_step(self, x, generator):
        self._pools()
        pick = torch.randint(len(self.val_fakes), (x.shape[0],), generator=generator)
        return self._loss(self._encoded_batch(x), to_model_range(self.val_fakes[pick.to(self.val_fakes.device)].to(x.device)))
