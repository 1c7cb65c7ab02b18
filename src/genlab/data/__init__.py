"""Data sources. Every source yields uint8 images of shape (N, C, H, W); conversion to the model's
range happens in one place (:mod:`genlab.data.convert`)."""

from genlab.data.convert import to_model_range, to_uint8
from genlab.data.sources import SOURCES, ImageSplits, build_dataset

__all__ = ["SOURCES", "ImageSplits", "build_dataset", "to_model_range", "to_uint8"]
