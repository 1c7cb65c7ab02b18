"""Feature extractors for the Inception-based metrics, behind one registry.

- ``inception-v3-compat``: torch-fidelity's InceptionV3, a port of the TensorFlow graph that the
  original FID and IS code used, fed uint8 images resized to 299x299 exactly as TensorFlow 1.x
  did. Its weights are downloaded once on first use where there is internet; offline, give a local
  copy (``--inception-weights FILE``) or put it in torch's hub cache.
- ``random-standin``: a tiny convolutional network with fixed random weights (seed 0), built
  through the very same code path (a torch-fidelity ``FeatureExtractorBase`` with the same feature
  names). It lets the whole metric pipeline run and be tested without pretrained weights. Numbers
  from it are labelled as such and are not comparable with any published FID or IS.

Both take uint8 images (N, 3, H, W); grayscale images are repeated to three channels first.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

from genlab.errors import GenlabError
from genlab.registry import Registry

# The two feature layers every extractor provides, named as torch-fidelity names Inception's:
POOL = "2048"  # pooled features: FID, KID, precision/recall
LOGITS = "logits_unbiased"  # class logits: IS

INCEPTION_FILE = Path(URL_INCEPTION_V3).name  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]  # torch.hub checks this prefix


class RandomStandIn(FeatureExtractorBase):
    """A fixed random network standing in for Inception in tests and offline smoke runs."""

    FEATURES = 64
    CLASSES = 10

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        generator = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.conv3 = nn.Conv2d(32, self.FEATURES, 3, stride=2, padding=1)
        self.fc = nn.Linear(self.FEATURES, self.CLASSES)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * (1.0 / max(1, p[0].numel()) ** 0.5))
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list():
        return POOL, LOGITS

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": LOGITS, "fid": POOL, "kid": POOL, "prc": POOL}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return None

    def forward(self, x):
        x = F.interpolate(x.float(), size=(64, 64), mode="bilinear", align_corners=False)
        x = (x - 128) / 128
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        pooled = F.relu(self.conv3(x)).mean((2, 3))
        out = {POOL: pooled, LOGITS: self.fc(pooled)}
        return tuple(out[name] for name in self.features_list)


try:
    register_feature_extractor("genlab-random-standin", RandomStandIn)  # usable from torch-fidelity too
except Exception:  # already registered (module reloaded)
    pass


def _inception_weights(path: str | None) -> str | None:
    """A local weights file, or None to let torch.hub use its cache or download; offline and absent,
    a GenlabError that names the file, its checksum and where it goes."""
    if path is not None:
        if not Path(path).is_file():
            raise GenlabError(f"--inception-weights: no such file: {path}")
        return path
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return str(cached)
    try:
        with socket.create_connection(("github.com", 443), timeout=5):
            return None  # torch.hub downloads it and checks the sha256 prefix
    except OSError:
        raise GenlabError(
            f"the Inception weights for FID/KID/IS/PR are not here and cannot be downloaded (offline): need "
            f"{INCEPTION_FILE} (sha256 starting {INCEPTION_SHA256_PREFIX}) from {URL_INCEPTION_V3}; put it at "
            f"{cached} or pass --inception-weights FILE") from None


def _build_inception(weights: str | None):
    return FeatureExtractorInceptionV3("inception-v3-compat", [POOL, LOGITS],
                                       feature_extractor_weights_path=_inception_weights(weights), verbose=False)


def _build_standin(weights: str | None):
    return RandomStandIn("random-standin", [POOL, LOGITS])


EXTRACTORS: Registry = Registry("feature extractor")
EXTRACTORS.register("inception-v3-compat")(_build_inception)
EXTRACTORS.register("random-standin")(_build_standin)

# What a protocol string says about each extractor.
DESCRIPTIONS = {
    "inception-v3-compat": "InceptionV3 (TF-compatible, torch-fidelity), pool3 2048-d / logits",
    "random-standin": "RANDOM STAND-IN network (not Inception; not comparable to published numbers), 64-d",
}


@torch.inference_mode()
def extract(extractor: nn.Module, images, device: torch.device, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """uint8 images (a tensor, or an iterable of uint8 batches) -> {layer: float64 features on the CPU}."""
    extractor = extractor.to(device)
    batches = (images[i : i + batch_size] for i in range(0, len(images), batch_size)) if torch.is_tensor(images) else images
    out: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        features = extractor.convert_features_tuple_to_dict(extractor(batch.to(device)))
        for name, value in features.items():
            out.setdefault(name, []).append(value.double().cpu())
    return {name: torch.cat(values) for name, values in out.items()}
