"""Perceptual path length (Karras et al. 2019, "A style-based generator architecture", section 3.2)
through torch-fidelity: the LPIPS distance between images generated from latents epsilon apart
along linear interpolations, divided by epsilon^2, with the 1% and 99% tails discarded. It needs the
LPIPS VGG16 weights; offline and absent, the error names the file and where it goes.

The two images of a pair are compared as float images on the [0, 255] scale, not rounded to uint8:
at epsilon = 1e-4 they differ by far less than one level, so rounding makes most distances exactly
zero (a tiny DCGAN gave PPL 0.0). Image-shaped latents (a diffusion model's x_T) are flattened for
the interpolation and reshaped for the generator: linear interpolation is the same either way."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch_fidelity import GenerativeModelModuleWrapper, SampleSimilarityBase, register_sample_similarity
from torch_fidelity.metric_ppl import KEY_METRIC_PPL_RAW, calculate_ppl
from torch_fidelity.sample_similarity_lpips import URL_VGG16_LPIPS

from genlab.errors import GenlabError

EPSILON = 1e-4
DISCARD = (1, 99)  # percentiles of the distances kept (Karras et al. 2019)
LPIPS_FILE = Path(URL_VGG16_LPIPS).name


class _GeneratorAsFloat255(nn.Module):
    """A family's generator as torch-fidelity expects it: flat z -> float RGB images on [0, 255]."""

    def __init__(self, method):
        super().__init__()
        self.method = method
        self.latent_shape = tuple(method.latent_shape())

    def forward(self, z):
        images = self.method.generate(z.view(len(z), *self.latent_shape)).float()
        images = (images + 1).mul(127.5).clamp(0, 255)
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class RandomStandInSimilarity(SampleSimilarityBase):
    """A fixed random distance standing in for LPIPS in tests (same code path, labelled)."""

    def __init__(self, name, **kwargs):
        super().__init__(name)
        self.proj = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(self.proj.weight.shape, generator=torch.Generator().manual_seed(0)) / 9)
            self.proj.bias.zero_()

    def forward(self, a, b):
        if a.dtype != torch.float32 or b.dtype != torch.float32:
            raise TypeError(f"PPL compares float images, got {a.dtype} and {b.dtype}")
        fa, fb = self.proj(a / 255), self.proj(b / 255)
        return (fa - fb).square().mean((1, 2, 3))


try:
    register_sample_similarity("genlab-random-standin", RandomStandInSimilarity)
except Exception:  # already registered
    pass

SIMILARITIES = {"lpips-vgg16": "LPIPS VGG16 (torch-fidelity)",
                "genlab-random-standin": "RANDOM STAND-IN similarity (not LPIPS; not comparable)"}


def _check_lpips_weights() -> None:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_FILE
    if cached.is_file():
        return
    try:
        with socket.create_connection(("github.com", 443), timeout=5):
            return
    except OSError:
        raise GenlabError(f"PPL needs the LPIPS VGG16 weights, which are not here and cannot be downloaded (offline): "
                          f"get {LPIPS_FILE} from {URL_VGG16_LPIPS} and put it at {cached}") from None


def perceptual_path_length(method, settings, device: torch.device, similarity: str = "lpips-vgg16") -> dict:
    if method.latent_kind not in ("flat", "image"):
        raise GenlabError(f"PPL needs a latent space that generate(z) maps to images; method {method.name!r} "
                          f"declares latent_kind {method.latent_kind!r}")
    if similarity == "lpips-vgg16":
        _check_lpips_weights()
    z_size = int(np.prod(method.latent_shape()))
    model = GenerativeModelModuleWrapper(_GeneratorAsFloat255(method), z_size, "normal", 0)
    # torch-fidelity returns the raw distances; the 1%/99% discard is done here because its own uses
    # np.percentile(interpolation=...), which NumPy 2.4 removed (same "lower"/"higher" rule below).
    with method.evaluating():
        out = calculate_ppl(1, input1=model, ppl=True, cuda=device.type == "cuda", batch_size=settings.batch_size,
                            input1_model_num_samples=settings.n, ppl_epsilon=EPSILON, ppl_sample_similarity=similarity,
                            ppl_sample_similarity_dtype="float32", ppl_z_interp_mode="lerp", rng_seed=settings.seed,
                            verbose=False, ppl_reduction="none", ppl_discard_percentile_lower=None,
                            ppl_discard_percentile_higher=None)
    distances = np.asarray(out[KEY_METRIC_PPL_RAW])
    lo = np.percentile(distances, DISCARD[0], method="lower")
    hi = np.percentile(distances, DISCARD[1], method="higher")
    kept = distances[(lo <= distances) & (distances <= hi)]
    return {"ppl": {"value": float(kept.mean()), "std": float(kept.std()),
                    "zero_distances": float((distances == 0).mean()), "protocol": (
        f"{settings.n} pairs, z-space lerp ({method.latent_kind} latent of {z_size}), epsilon {EPSILON}, "
        f"{SIMILARITIES.get(similarity, similarity)} at 64 px on float images (not rounded to uint8), "
        "1%/99% tails discarded (torch-fidelity)")}}
