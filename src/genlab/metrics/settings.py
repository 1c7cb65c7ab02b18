"""Every default of the evaluation protocol, in one place.

The CLI (`genlab eval`'s options and their defaults), the config (`eval.*` during training) and the
Python API (:class:`EvalSettings`) all read these. Which metric applies to which family is in
:mod:`genlab.metrics.table`. This module imports nothing from genlab, so the config can use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_N = 50_000  # the sample count of the standard FID protocol (Heusel et al. 2017)
TRAINING_N = 10_000  # samples per evaluation during training: cheaper, comparable only with itself
DEFAULT_EXTRACTOR = "inception-v3-compat"
SAMPLE_METRICS = ("fid", "kid", "is", "pr", "swd", "msssim", "nn")  # need only samples (as table.py says; tested)


@dataclass
class EvalSettings:
    """Every setting of the evaluation protocol, with its default (the CLI's defaults are these)."""

    metrics: list[str] = field(default_factory=lambda: list(SAMPLE_METRICS))
    n: int = PROTOCOL_N  # generated images for the sample-based metrics
    split: str | None = None  # reference split (default: train) / held-out split (default: test, else val)
    extractor: str = DEFAULT_EXTRACTOR  # feature extractor of fid/kid/is/pr
    inception_weights: str | None = None  # a local copy of the Inception weights (offline machines)
    batch_size: int = 256  # images generated and featurised at once
    seed: int = 0  # first sample seed; image i uses seed + i
    swd_images: int = 4096  # at most this many images per side for SWD
    pairs: int = 2000  # random pairs for the MS-SSIM diversity score
    nn_samples: int = 1000  # samples checked against the training set for memorisation
    ppl_similarity: str = "lpips-vgg16"  # the image distance of PPL
    likelihood_calibration: int = 2048  # training images a family may fit its likelihood on (VAE decoder scale)
