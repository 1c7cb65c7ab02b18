"""genlab's Python API: what the ``genlab`` command does, as functions. The CLI only parses
arguments and prints what these return.

>>> from genlab import api
>>> run = api.train("quickstart", overrides=["train.epochs=2"], runs_dir="runs")
>>> images, model = api.sample(run, n=16)
>>> results = api.evaluate(run, metrics=["swd"], n=1000)

Every function takes ``device`` as "auto" (CUDA when available), "cpu", "cuda" or a torch device.
Bad input is a :class:`~genlab.errors.GenlabError` with one line naming what and where.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import yaml

from genlab.analysis import commands as analyses
from genlab.analysis.evaluation import evaluate_run
from genlab.config import Config, DataConfig, EvalSettings
from genlab.data import build_dataset
from genlab.detect.adversary import attach_adversary
from genlab.distributed import SINGLE, DistInfo, resolve_device
from genlab.errors import GenlabError
from genlab.metrics.evaluate import Evaluator
from genlab.metrics.inputs import load_images
from genlab.metrics.table import SAMPLE_METRICS, parse_metrics
from genlab.report import write_report
from genlab.resolve import (
    load_config,
    resolve_config,
    with_sampler_overrides,
)
from genlab.train import session
from genlab.train.checkpoint import LoadedModel, load_model
from genlab.train.posthoc_ema import choose as choose_posthoc_ema

log = logging.getLogger("genlab")


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else resolve_device(device)


def _compose(method, cfg: Config, image_shape, device: torch.device) -> None:
    """What a config composes into a family beyond its own networks: a frozen detector's term
    (adversary.detector_run) for a family that accepts one."""
    attach_adversary(method, cfg, image_shape, device)


def _after_training(cfg: Config, run_dir: Path, info: DistInfo) -> None:
    """train.report: the run's HTML report (genlab report) in RUN_DIR/report.html when training ends."""
    if cfg.train.report and info.is_main:
        path = write_report([run_dir], run_dir / "report.html", force=True)
        log.info("report: %s (open it in a browser)", path)


def train(config: Config | str, runs_dir: Path | str = "runs", device: str | torch.device = "auto",
          quiet: bool = False, info: DistInfo = SINGLE, run_dir: Path | str | None = None,
          overrides: list[str] | None = None) -> Path:
    """Train a run from a resolved config or a preset name (with ``overrides``); returns its run
    directory: a new numbered one below ``runs_dir``, or ``run_dir`` (a named run, resumed when it
    already holds this config's run, so a re-queued job simply continues)."""
    cfg = load_config(config, overrides) if isinstance(config, str) else config
    if overrides and not isinstance(config, str):
        raise GenlabError("overrides go with a preset name; a Config is already resolved")
    device = _device(device)
    if run_dir is not None:
        action, changed = session.named_run_plan(cfg, Path(run_dir))
        if action == "resume":
            return resume(run_dir, changed, device, quiet, info)
    run = session.start_training(cfg, Path(runs_dir), device, quiet, info, None if run_dir is None else Path(run_dir),
                                 extend=_compose)
    _after_training(cfg, run, info)
    return run


def resume(run_dir: Path | str, overrides: list[str] | None = None, device: str | torch.device = "auto",
           quiet: bool = False, info: DistInfo = SINGLE) -> Path:
    """Continue a run from its last checkpoint; only keys in ``session.RESUMABLE_KEYS`` may change."""
    run_dir = Path(run_dir)
    session.resume_training(run_dir, list(overrides or []), _device(device), quiet, info, extend=_compose)
    # the run's config.yaml holds what it resumed with (rewritten with the overrides): no second checkpoint load
    _after_training(resolve_config(yaml.safe_load((run_dir / "config.yaml").read_text())), run_dir, info)
    return run_dir


def load(run: Path | str, device: str | torch.device = "auto", checkpoint: str = "last",
         weights: str = "ema") -> LoadedModel:
    """A trained model: ``checkpoint`` "last" or "best" of a run directory (or a checkpoint file),
    ``weights`` "ema" (the averages when the run kept them) or "raw" (the last iterate)."""
    return load_model(run, _device(device), prefer=checkpoint, weights=weights, fallback=False)


def sample(run: Path | str, n: int = 64, seed: int = 0, device: str | torch.device = "auto",
           checkpoint: str = "last", weights: str = "ema", sampler: list[str] | None = None,
           batch_size: int = 256) -> tuple[torch.Tensor, LoadedModel]:
    """``n`` images (uint8, N x C x H x W, on the CPU; image i from seed ``seed + i`` alone) and the
    model that made them; ``sampler`` holds ``sampler.KEY=VALUE`` settings (default: the run's)."""
    model = load(run, device, checkpoint, weights)
    if sampler:
        model.method.sampling = with_sampler_overrides(model.config, sampler).sampler
    return model.method.sample(n, seed, batch_size=batch_size), model


def evaluate(run: Path | str, metrics: list[str] | None = None, settings: EvalSettings | None = None,
             device: str | torch.device = "auto", checkpoint: str = "last", weights: str = "ema",
             overrides: list[str] | None = None, record: bool = True) -> dict[str, dict]:
    """Score a run under genlab's protocol: each metric's value with its protocol string.
    ``metrics`` default to all the family can give except PPL; ``overrides`` are ``sampler.*`` keys
    and the family's evaluation keys (``model.iw_samples``, ``model.bound_timesteps``). With
    ``record``, a run directory's metrics.json and stats.jsonl get the results."""
    return evaluate_run(run, metrics, settings or EvalSettings(), _device(device), checkpoint, weights, overrides, record)


def evaluate_images(real: DataConfig, fake: Path | str, metrics: list[str] | None = None,
                    settings: EvalSettings | None = None, device: str | torch.device = "auto") -> dict[str, dict]:
    """Score images (a folder, or an .npz with ``images``) against a data set: the sample metrics only."""
    metrics = parse_metrics(metrics or list(SAMPLE_METRICS))
    model_only = [m for m in metrics if m not in SAMPLE_METRICS]
    if model_only:
        raise GenlabError(f"{', '.join(model_only)} need a model; give a RUN_DIR instead of --fake")
    images = load_images(Path(fake), real.channels, real.size)
    evaluator = Evaluator(build_dataset(real), real, settings or EvalSettings(), _device(device))
    return evaluator.score_images(images, metrics, f"{len(images)} images from {fake}")


def posthoc_ema(run: Path | str, sigma_rels: list[float], metric: str = "swd", settings: EvalSettings | None = None,
                device: str | torch.device = "auto") -> dict:
    """Post-hoc EMA (genlab.train.posthoc_ema): each relative width rebuilt from the run's snapshots and
    scored on the choice split; the best written as ``checkpoints/posthoc-inference.pt``."""
    return choose_posthoc_ema(Path(run), sigma_rels, metric, settings or EvalSettings(), _device(device))


def reconstruct(run: Path | str, n: int = 16, split: str = "val", seed: int | None = None,
                device: str | torch.device = "auto", checkpoint: str = "last", weights: str = "ema",
                out: Path | None = None) -> tuple[Path | None, dict]:
    """Held-out images over their reconstructions (families with an encoder), with per-image MSE, PSNR
    and SSIM; ``seed`` picks a seeded random subset instead of the first ``n``. Written to the run's
    analysis/ folder (and ``out``); returns that path and the numbers."""
    return analyses.reconstructions(Path(run), _device(device), n, split, seed, checkpoint, weights == "raw", out)
