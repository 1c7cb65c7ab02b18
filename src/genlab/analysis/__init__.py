"""Analyses of trained runs, each a function (here) and a CLI command (`genlab analyze ...`,
`genlab reconstruct`, `genlab summary`): each writes a PNG and its numbers (JSON) into the run
directory's ``analysis/`` and reads what the run already holds (its grids, its stats.jsonl)
rather than computing it again.

- reconstruct.py: held-out images beside their reconstructions, per-image MSE/PSNR/SSIM;
- latent.py: interpolation, "one sample with variations", latent traversal;
- timeline.py: chosen epochs' sample grids side by side;
- curves.py: every logged scalar over steps, raw and smoothed, validation points over them;
- summary.py: layers, output shapes, parameters and multiply-adds per image (torchinfo).
"""
