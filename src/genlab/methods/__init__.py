"""Model families. Each registers under the name used by the config's ``method`` key."""

from genlab.registry import Registry

METHODS: Registry = Registry("method")

# Importing a family registers it.
from genlab.methods import gan, vae  # noqa: E402,F401

__all__ = ["METHODS"]
