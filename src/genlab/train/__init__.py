"""The one training loop for every family, its checkpoints and its run directory."""
