"""genlab: train, evaluate and compare deep generative image models under one pipeline."""

__version__ = "0.1.0"
