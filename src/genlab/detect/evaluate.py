"""A trained detector against real and generated images: per generator, balanced accuracy, ROC AUC
and the true-positive rate at 1% false positives, on held-out real images and fakes from fresh
seeds; and the same after the images are laundered as real detectors meet them (JPEG
re-compression at quality 75, downscaling to half size and back, Gaussian blur), each applied
alike to reals and fakes."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur

from genlab.data.convert import to_model_range
from genlab.detect.encoding import JPEG_QUALITY, jpeg
from genlab.detect.scores import auc_interval, balanced_accuracy, roc_auc, tpr_at_fpr

BLUR_SIGMA = 1.0


def resize_half(images: torch.Tensor) -> torch.Tensor:
    """Down to half the side (bilinear with antialiasing) and back up: the detail a resized upload loses."""
    side = images.shape[-1]
    small = F.interpolate(images.float(), size=side // 2, mode="bilinear", antialias=True, align_corners=False)
    back = F.interpolate(small, size=side, mode="bilinear", align_corners=False)
    return back.round().clamp(0, 255).to(torch.uint8)


def blur(images: torch.Tensor, sigma: float = BLUR_SIGMA) -> torch.Tensor:
    """Gaussian blur, 5x5 kernel, standard deviation ``sigma`` pixels."""
    return gaussian_blur(images, [5, 5], [sigma, sigma])


LAUNDERING: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    f"jpeg{JPEG_QUALITY}": jpeg, "resize0.5": resize_half, f"blur{BLUR_SIGMA:g}": blur}
LAUNDERING_PROTOCOL = (f"jpeg{JPEG_QUALITY}: JPEG quality {JPEG_QUALITY} (Pillow/libjpeg, 4:2:0); resize0.5: bilinear to half side "
                       f"(antialiased) and back; blur{BLUR_SIGMA:g}: Gaussian 5x5, sigma {BLUR_SIGMA:g} px; applied "
                       "to real and fake images alike")


@torch.inference_mode()
def detector_scores(detector, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """P(generated) for uint8 images, in eval mode, on the CPU; each image first goes through the
    detector's input encoding (model.encoding), whatever class it is: the same path as in training."""
    out = []
    with detector.evaluating():
        for i in range(0, len(images), batch_size):
            x = to_model_range(detector.encode_input(images[i : i + batch_size]).to(detector.device))
            out.append(torch.sigmoid(detector.logits(x)).cpu())
    return torch.cat(out)


def separation(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> dict:
    return {"auc": roc_auc(real_scores, fake_scores), "auc_interval": auc_interval(real_scores, fake_scores),
            "tpr_at_1pct_fpr": tpr_at_fpr(real_scores, fake_scores, 0.01),
            "accuracy": balanced_accuracy(real_scores, fake_scores)}


def evaluate_against(detector, real: torch.Tensor, fakes: dict[str, torch.Tensor], launder: bool = True,
                     batch_size: int = 256) -> dict[str, dict]:
    """Per fake set: the separation of ``real`` from it, and (``launder``) its AUC after each
    laundering transform under ``laundered``."""
    real_scores = detector_scores(detector, real, batch_size)
    washed_real = {name: detector_scores(detector, t(real), batch_size) for name, t in LAUNDERING.items()} if launder else {}
    results = {}
    for label, fake in fakes.items():
        result = {**separation(real_scores, detector_scores(detector, fake, batch_size)),
                  "n_real": len(real), "n_fake": len(fake)}
        if launder:
            result["laundered"] = {name: roc_auc(washed_real[name], detector_scores(detector, t(fake), batch_size))
                                   for name, t in LAUNDERING.items()}
        results[label] = result
    return results
