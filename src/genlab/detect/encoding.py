"""The one encoding every image passes through before a detector sees it (format parity).

Real CelebA and CIFAR-10 images are decoded JPEGs; generated images never meet an encoder. A
detector trained on such pairs can separate them by compression traces alone and look strong while
knowing nothing of generation: the shortcut that published detector benchmarks fell into when real
images were JPEG and fakes PNG. genlab's detector therefore re-encodes *both* classes the same way
(``model.encoding``, default ``jpeg75``) in training, validation and evaluation, and the detector
benchmark runs a control: a detector of real images against the same real images re-encoded, whose
AUC must sit at chance (see ``genlab.detect.bench.control_fakes``).
"""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from PIL import Image

from genlab.errors import GenlabError

JPEG_QUALITY = 75
DEFAULT_ENCODING = f"jpeg{JPEG_QUALITY}"


def jpeg(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """uint8 images encoded as JPEG at ``quality`` (4:2:0 chroma subsampling, Pillow's default, as
    most uploads get) and decoded again, through Pillow's libjpeg."""
    out = []
    for image in images.cpu().permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
        out.append(torch.from_numpy(decoded.reshape(image.shape).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).contiguous()


def parse_encoding(name: str, key: str = "model.encoding") -> int | None:
    """``none`` -> None; ``jpegQ`` (1 <= Q <= 100) -> Q; anything else is refused naming ``key``."""
    if name == "none":
        return None
    match = re.fullmatch(r"jpeg(\d{1,3})", name)
    if not match or not 1 <= int(match.group(1)) <= 100:
        raise GenlabError(f"config key '{key}': {name!r} is not an encoding; use none or jpegQ with 1 <= Q <= 100 "
                          f"(default {DEFAULT_ENCODING})")
    return int(match.group(1))


def describe(name: str) -> str:
    quality = parse_encoding(name)
    if quality is None:
        return "no re-encoding (real images as decoded from their files, fakes as generated)"
    return f"real and generated images alike re-encoded as JPEG quality {quality} (Pillow/libjpeg, 4:2:0) before the detector"
