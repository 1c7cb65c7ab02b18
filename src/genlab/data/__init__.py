"""Data: sources list items in their own layouts (sources.py), splits are decided per item
(splits.py), every image is decoded once into a uint8 cache (cache.py), and batches are augmented
on the device (augment.py). Images stay uint8 until :mod:`genlab.data.convert`, the one place
where they change range."""

from genlab.data.cache import ImageSplits, load_dataset, prepare
from genlab.data.convert import to_model_range, to_uint8
from genlab.data.sources import SOURCES

build_dataset = load_dataset  # the name the training loop and the CLI use

__all__ = ["SOURCES", "ImageSplits", "build_dataset", "load_dataset", "prepare", "to_model_range", "to_uint8"]
