"""Networks only (nn.Modules), one architecture per file; shared blocks in blocks.py.

``GAN_ARCHS`` names the generator/discriminator pairs a GAN can be built from (``model.arch``),
apart from the objective it is trained with (``model.loss``). An entry is a function
``build(cfg, image_shape) -> (generator, discriminator)`` that reads the widths and options it
needs from the GAN config.
"""

from genlab.registry import Registry

GAN_ARCHS: Registry = Registry("GAN architecture")

# Importing an architecture registers it.
from genlab.models import dcgan, resnet_gan  # noqa: E402,F401
from genlab.models.detector import DETECTOR_ARCHS  # noqa: E402  (real-vs-generated classifiers)

__all__ = ["GAN_ARCHS", "DETECTOR_ARCHS"]
