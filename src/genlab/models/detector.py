"""Real-vs-generated image classifiers for the detector benchmark: one logit per image, positive
for "generated". Both are trained from scratch (no pretrained weights are needed or used).

- ``cnn``: a small strided CNN (DCGAN's discriminator layout without its last squeeze): cheap, and
  on 32x32 faces enough to tell most generators from real images.
- ``resnet18``: torchvision's ResNet-18 (He et al. 2016) with its stem adapted to small images as
  for CIFAR (a 3x3 stride-1 first convolution and no max-pool: at 32x32 the ImageNet stem would
  leave 1x1 maps after layer 3), and one output.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet18

from genlab.models.blocks import channel_ladder, num_resolution_steps
from genlab.registry import Registry

DETECTOR_ARCHS: Registry = Registry("detector architecture")


@DETECTOR_ARCHS.register("cnn")
class SmallCNN(nn.Module):
    """Stride-2 4x4 convolutions down to 4x4 maps (batch norm after all but the first, LeakyReLU 0.2),
    global average pooling and a linear logit. Pooling rather than DCGAN's 4x4 convolution keeps it
    indifferent to where in the image an artefact sits."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 32):
        super().__init__()
        channels, size, _ = image_shape
        widths = channel_ladder(num_resolution_steps(size), width, cap=256)
        layers: list[nn.Module] = []
        c_in = channels
        for i, c_out in enumerate(widths):
            layers.append(nn.Conv2d(c_in, c_out, 4, 2, 1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


@DETECTOR_ARCHS.register("resnet18")
class ResNet18Detector(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], width: int = 64):
        super().__init__()
        channels = image_shape[0]
        net = resnet18(weights=None, num_classes=1)  # torchvision's widths (model.width is the cnn's)
        net.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)
