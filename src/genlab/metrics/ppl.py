"""Perceptual path length (Karras et al. 2019, "A style-based generator architecture", section 3.2)
through torch-fidelity: the LPIPS distance between images generated from latents epsilon apart
along linear interpolations, divided by epsilon^2, with the 1% and 99% tails discarded. It needs the
LPIPS VGG16 weights; offline and absent, the error names the file and where it goes."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch_fidelity import GenerativeModelModuleWrapper, SampleSimilarityBase, register_sample_similarity
from torch_fidelity.metric_ppl import KEY_METRIC_PPL_RAW, calculate_ppl
from torch_fidelity.sample_similarity_lpips import URL_VGG16_LPIPS

from genlab.data.convert import to_uint8
from genlab.errors import GenlabError

EPSILON = 1e-4
DISCARD = (1, 99)  # percentiles of the distances kept (Karras et al. 2019)
LPIPS_FILE = Path(URL_VGG16_LPIPS).name


class _GeneratorAsUint8(nn.Module):
    """A family's generator as torch-fidelity expects it: z -> uint8 RGB images."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, z):
        images = to_uint8(self.method.generate(z))
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
        fa, fb = self.proj(a.float() / 255), self.proj(b.float() / 255)
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
    if similarity == "lpips-vgg16":
        _check_lpips_weights()
    method.eval()
    (z_size,) = method.latent_shape()
    model = GenerativeModelModuleWrapper(_GeneratorAsUint8(method), z_size, "normal", 0)
    # torch-fidelity returns the raw distances; the 1%/99% discard is done here because its own uses
    # np.percentile(interpolation=...), which NumPy 2.4 removed (same "lower"/"higher" rule below).
    out = calculate_ppl(1, input1=model, ppl=True, cuda=device.type == "cuda", batch_size=settings.batch_size,
                        input1_model_num_samples=settings.n, ppl_epsilon=EPSILON, ppl_sample_similarity=similarity,
                        ppl_z_interp_mode="lerp", rng_seed=settings.seed, verbose=False, ppl_reduction="none",
                        ppl_discard_percentile_lower=None, ppl_discard_percentile_higher=None)
    distances = np.asarray(out[KEY_METRIC_PPL_RAW])
    lo = np.percentile(distances, DISCARD[0], method="lower")
    hi = np.percentile(distances, DISCARD[1], method="higher")
    kept = distances[(lo <= distances) & (distances <= hi)]
    return {"ppl": {"value": float(kept.mean()), "std": float(kept.std()), "protocol": (
        f"{settings.n} pairs, z-space lerp, epsilon {EPSILON}, {SIMILARITIES.get(similarity, similarity)} at 64 px, "
        "1%/99% tails discarded (torch-fidelity)")}}
