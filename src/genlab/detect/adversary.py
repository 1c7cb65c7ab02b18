"""A frozen detector as an extra loss for a generator (``adversary.detector_run``), composed into
any family that declares ``accepts_adversary`` when a run starts or resumes (genlab.api passes
:func:`attach_adversary` to the training session; the loop knows nothing of it)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from genlab.errors import GenlabError
from genlab.methods.step import frozen
from genlab.train.checkpoint import load_model


class FrozenDetector:
    """weight * mean softplus(logit(images)) = weight * mean -log P(real | image) under the detector:
    the non-saturating generator loss of Goodfellow et al. 2014 with the detector as a fixed
    discriminator. Its weights take no gradient and its BatchNorm uses running statistics (eval
    mode), so the generator phase leaves it exactly as trained."""

    def __init__(self, detector, weight: float, source: str):
        self.detector, self.weight, self.source = detector, weight, source
        detector.eval()
        for p in detector.classifier.parameters():
            p.requires_grad_(False)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with frozen(self.detector.classifier):
            return self.weight * F.softplus(self.detector.logits(images)).mean()

    def checksum(self) -> float:
        return float(sum(p.double().sum() for p in self.detector.classifier.parameters()))


def load_detector(run: str | Path, device: torch.device, what: str = "detector run"):
    """A detector run's model (best, else last, inference snapshot), its config and payload; a run of
    another family is a GenlabError."""
    run = Path(run).expanduser()
    method, cfg, payload, _ = load_model(run, device, prefer="best")
    if cfg.method != "detector":
        raise GenlabError(f"{what} {run} is a {cfg.method!r} run; a detector run (made by `genlab detect train`) is "
                          "needed here")
    return method, cfg, payload


def attach_adversary(method, cfg, image_shape, device: torch.device) -> None:
    """Give ``method`` the frozen detector ``cfg.adversary`` names (nothing when none is named)."""
    if cfg.adversary.detector_run is None:
        return
    detector, _, payload = load_detector(cfg.adversary.detector_run, device, "adversary.detector_run")
    if tuple(payload["image_shape"]) != tuple(image_shape):
        raise GenlabError(f"adversary.detector_run={cfg.adversary.detector_run}: that detector takes images of shape "
                          f"{payload['image_shape']}, this run makes {list(image_shape)}")
    method.adversary = FrozenDetector(detector, cfg.adversary.weight, cfg.adversary.detector_run)
