"""Metrics computed on pixels, with no pretrained network: reconstruction quality (MSE, PSNR, SSIM),
MS-SSIM between pairs of samples (a diversity and mode-collapse signal, Odena et al. 2017), and the
nearest training image of each sample (a memorisation check). SSIM and MS-SSIM come from
torchmetrics. All take uint8 images and work in [0, 1]."""

from __future__ import annotations

import torch
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, the five-scale weights
SSIM_KERNEL = 11  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def reconstruction_metrics(originals: torch.Tensor, reconstructions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image: MSE and PSNR in [0, 1] units, SSIM with an 11x11 Gaussian window (7x7 below 16 px)."""
    x, y = _unit(originals), _unit(reconstructions)
    kernel = SSIM_KERNEL if min(x.shape[-2:]) >= 16 else 7
    return {
        "mse": (x - y).square().flatten(1).mean(1),
        "psnr": peak_signal_noise_ratio(y, x, data_range=1.0, reduction="none", dim=(1, 2, 3)),
        "ssim": structural_similarity_index_measure(y, x, data_range=1.0, kernel_size=kernel, reduction="none"),
    }


def ms_ssim_setup(size: int) -> tuple[int, tuple[float, ...]]:
    """Kernel size and scale weights that fit ``size`` pixels: the standard 11x11 with five scales
    from 176 px up; below, a 7x7 window and as many scales as fit, the standard weights renormalised."""
    if size > (SSIM_KERNEL - 1) * 2**4:
        return SSIM_KERNEL, MS_SSIM_BETAS
    kernel, levels = 7, 1
    while levels < 5 and size > (kernel - 1) * 2**levels:
        levels += 1
    betas = MS_SSIM_BETAS[:levels]
    return kernel, tuple(b / sum(betas) for b in betas)


def pairwise_ms_ssim(images: torch.Tensor, pairs: int, seed: int = 0, batch_size: int = 256) -> float:
    """Mean MS-SSIM over ``pairs`` random pairs of distinct images: near 1 when samples repeat
    (mode collapse), lower for a diverse set. Compare the generated value with the real one."""
    generator = torch.Generator().manual_seed(seed)
    i = torch.randint(0, len(images), (pairs,), generator=generator)
    j = (i + torch.randint(1, len(images), (pairs,), generator=generator)) % len(images)
    kernel, betas = ms_ssim_setup(images.shape[-1])
    values = []
    for start in range(0, pairs, batch_size):
        a = _unit(images[i[start : start + batch_size]])
        b = _unit(images[j[start : start + batch_size]])
        values.append(multiscale_structural_similarity_index_measure(
            a, b, data_range=1.0, kernel_size=kernel, betas=betas, reduction="none"))
    return torch.cat(values).mean().item()


def nearest_neighbours(samples: torch.Tensor, train: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the index of the closest training image and the root-mean-square pixel
    distance to it in [0, 1] units (0 = an exact copy of a training image)."""
    s = _unit(samples).flatten(1)
    best_d = torch.full((len(s),), float("inf"))
    best_i = torch.zeros(len(s), dtype=torch.long)
    for start in range(0, len(train), batch_size):
        t = _unit(train[start : start + batch_size]).flatten(1)
        d = torch.cdist(s, t)  # the fast matrix-product form ranks the candidates
        value, index = d.min(1)
        better = value < best_d
        best_d[better], best_i[better] = value[better], index[better] + start
    # The winner's distance again, exactly (the fast form is off by ~1e-4, and a copy must read 0).
    exact = (s - _unit(train[best_i]).flatten(1)).norm(dim=1)
    return best_i, exact / s.shape[1] ** 0.5
