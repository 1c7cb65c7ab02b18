"""Each analysis on a run directory, as one call that writes ``analysis/<name>.png`` and
``analysis/<name>.json`` and returns (png path, numbers): what `genlab analyze ...`,
`genlab reconstruct` and `genlab summary` run, for Python users too."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from genlab.analysis import latent
from genlab.analysis.common import analysis_dir, write_analysis
from genlab.analysis.curves import curves_figure
from genlab.analysis.reconstruct import UNITS, pick_images, reconstruct_with_metrics
from genlab.analysis.summary import summarize
from genlab.analysis.timeline import timeline as make
from genlab.data import build_dataset
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods import build_method
from genlab.methods.abilities import Encoder, Reconstructs
from genlab.resolve import load_config
from genlab.train.checkpoint import load_model
from genlab.train.rundir import image_grid, pair_grid, require_run_dir, save_grid


def load_run(run: Path, device: torch.device, checkpoint: str = "last", raw_weights: bool = False):
    """The model of a run (EMA weights when kept), its config and checkpoint payload."""
    method, cfg, payload, _ = load_model(Path(run), device, prefer=checkpoint, weights="raw" if raw_weights else "ema",
                                         fallback=False)
    return method, cfg, payload


def _real_images(cfg, split: str | None):
    data = build_dataset(cfg.data)
    split = split or ("val" if data.val is not None and len(data.val) else "train")
    images = {"train": data.train, "val": data.val, "test": data.test}[split]
    if images is None or not len(images):
        raise GenlabError(f"the {data.name} data has no {split} split here")
    return images, split


def timeline(run: Path, epochs: list[int] | None = None, kind: str = "samples") -> tuple[Path, dict]:
    run = require_run_dir(run)
    fig, numbers = make(run, epochs, kind)
    return write_analysis(run, f"timeline-{kind}", None, numbers, figure=fig), numbers


def curves(run: Path, smoothing: float = 0.6) -> tuple[Path, dict]:
    if not 0 <= smoothing < 1:
        raise GenlabError(f"--smoothing must be in [0, 1), got {smoothing}")
    run = require_run_dir(run)
    fig, numbers = curves_figure({run.name: run}, smoothing)
    return write_analysis(run, "curves", None, numbers, figure=fig), numbers


def interpolation(run: Path, device: torch.device, seeds: tuple[int, int] | None = None,
                  images: tuple[int, int] | None = None, split: str | None = None, steps: int = 10,
                  checkpoint: str = "last") -> tuple[Path, dict]:
    """Between the latents of two seeds (slerp) or the codes of two real images of ``split`` (linear)."""
    if (seeds is None) == (images is None):
        raise GenlabError("give either two seeds (--seeds A,B) or two real images (--images I,J)")
    if steps < 2:
        raise GenlabError(f"--steps must be at least 2, got {steps}")
    run = require_run_dir(run)
    method, cfg, payload = load_run(run, device, checkpoint)
    latent.check_latent(method)
    if seeds is not None:
        a, b = latent.seed_latents(method, list(seeds))
        grid = latent.interpolate(method, a, b, steps, spherical=True)
        name, how = f"interpolation-seeds-{seeds[0]}-{seeds[1]}", "slerp between the prior latents of the two seeds"
        numbers = {"seeds": list(seeds)}
    else:
        real, split = _real_images(cfg, split)
        if max(images) >= len(real):
            raise GenlabError(f"--images {images[0]},{images[1]}: the {split} split has {len(real)} images")
        codes = latent.encode_images(method, real[list(images)])
        path = latent.interpolate(method, codes[0], codes[1], steps, spherical=False)
        grid = torch.cat([real[images[0]][None], path, real[images[1]][None]])
        name, how = (f"interpolation-{split}-{images[0]}-{images[1]}",
                     "linear between the encoded codes of two real images (shown at both ends)")
        numbers = {"split": split, "images": list(images)}
    numbers.update({"steps": steps, "path": how, "checkpoint": payload["progress"]["step"]})
    return write_analysis(run, name, image_grid(grid, nrow=len(grid)), numbers), numbers


def variations(run: Path, device: torch.device, seed: int = 0, n: int = 15, scale: float = 0.3,
               checkpoint: str = "last") -> tuple[Path, dict]:
    if scale <= 0 or n < 1:
        raise GenlabError(f"--scale must be > 0 and --n at least 1, got {scale} and {n}")
    run = require_run_dir(run)
    method, _, payload = load_run(run, device, checkpoint)
    images, distance = latent.variations(method, seed, n, scale)
    numbers = {"seed": seed, "scale": scale, "n": n, "noise_seeds": [1_000_000, 1_000_000 + n - 1],
               "rms_pixel_distance_0_255": [round(d, 3) for d in distance.tolist()],
               "mean_rms_pixel_distance_0_255": round(distance.mean().item(), 3),
               "note": "first image: the sample of the seed; then z + scale * e_i"}
    return write_analysis(run, f"variations-seed-{seed}-scale-{scale:g}", image_grid(images, nrow=min(8, len(images))),
                          numbers), numbers


def traversal(run: Path, device: torch.device, dims: int = 10, image: int = 0, split: str | None = None,
              span: float = 3.0, steps: int = 9, n_kl: int = 1000, checkpoint: str = "last") -> tuple[Path, dict]:
    run = require_run_dir(run)
    method, cfg, _ = load_run(run, device, checkpoint)
    if not isinstance(method, Encoder) or method.latent_kind != "flat":
        raise GenlabError(f"latent traversal needs an encoder family with a flat latent (vae); {cfg.method!r} has none")
    real, split = _real_images(cfg, split)
    if image >= len(real):
        raise GenlabError(f"--image {image}: the {split} split has {len(real)} images")
    grid, order, kl = latent.traversal(method, real[:n_kl], real[image], dims, span, steps)
    numbers = {"split": split, "base_image": image, "span": span, "steps": steps, "kl_images": min(n_kl, len(real)),
               "rows_dimensions": order, "rows_mean_kl_nats": [round(kl[d].item(), 5) for d in order],
               "all_dimensions_mean_kl_nats": [round(v, 5) for v in kl.tolist()]}
    return write_analysis(run, f"traversal-{split}-{image}", image_grid(grid, nrow=steps), numbers), numbers


def reconstructions(run: Path, device: torch.device, n: int = 16, split: str = "val", seed: int | None = None,
                    checkpoint: str = "last", raw_weights: bool = False, out: Path | None = None):
    """Held-out images over their reconstructions with per-image MSE, PSNR, SSIM in [0, 1] units."""
    method, cfg, _ = load_run(run, device, checkpoint, raw_weights)
    if not isinstance(method, Reconstructs):
        raise GenlabError(f"{run} is a {cfg.method!r} model, which has no encoder; reconstruct needs one (e.g. vae)")
    data = build_dataset(cfg.data)
    originals, index = pick_images(data, split, n, seed)
    recon, metrics = reconstruct_with_metrics(method, originals, device)
    numbers = {"units": UNITS, "split": split, "choice": "first" if seed is None else f"random, seed {seed}",
               "images": index, **{k: [round(v, 6) for v in metrics[k].tolist()] for k in ("mse", "psnr", "ssim")},
               "mean": {k: metrics[k].mean().item() for k in ("mse", "psnr", "ssim")}}
    grid = pair_grid(originals, recon)
    if out is not None:
        save_grid(grid, out)
    path = None
    if Path(run).is_dir():
        path = write_analysis(Path(run), f"reconstructions-{split}", grid, numbers)
    return path, numbers


def summary(target: str, device: torch.device, overrides: list[str] | None = None) -> tuple[str, dict, Path | None]:
    """`genlab summary`: for a run directory (written to its analysis/summary.txt and .json) or a
    preset (printed only: no run to write into)."""
    path = Path(target)
    if path.is_dir():
        if overrides:
            raise GenlabError("key=value overrides apply to a preset, not to a run directory")
        method, cfg, _ = load_run(require_run_dir(path), device)
    else:
        cfg = load_config(target, overrides or [])
        method = build_method(cfg, (cfg.data.channels, cfg.data.size, cfg.data.size), device)
    text, numbers = summarize(method)
    numbers = {"method": cfg.method, "image_shape": [cfg.data.channels, cfg.data.size, cfg.data.size], "networks": numbers}
    written = None
    if path.is_dir():
        folder = analysis_dir(path)
        atomic_write(folder / "summary.txt", lambda tmp: tmp.write_text(text + "\n"), "file")
        atomic_write(folder / "summary.json", lambda tmp: tmp.write_text(json.dumps(numbers, indent=2) + "\n"), "file")
        written = folder / "summary.txt"
    return text, numbers, written
