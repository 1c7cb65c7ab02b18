"""Scoring a run directory under genlab's protocol: what `genlab eval RUN` and `genlab bench`
both run, so a number means the same thing whichever of them measured it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from genlab.config import EvalSettings
from genlab.data import build_dataset
from genlab.metrics.evaluate import Evaluator
from genlab.metrics.table import METRICS, abilities, default_metrics, parse_metrics
from genlab.resolve import with_evaluation_overrides
from genlab.train.checkpoint import load_model, weights_description
from genlab.train.rundir import record_evaluation


def evaluate_run(run: Path | str, metrics: list[str] | None, settings: EvalSettings, device: torch.device,
                 checkpoint: str = "last", weights: str = "ema", overrides: list[str] | None = None,
                 record: bool = True) -> dict[str, dict]:
    """Each metric's value with its protocol string for the ``checkpoint`` of ``run``; ``overrides``
    are ``sampler.*`` keys and the family's evaluation keys. With ``record``, a run directory's
    metrics.json and stats.jsonl get the results (under the split role evaluated)."""
    method, cfg, payload, path = load_model(run, device, prefer=checkpoint, weights=weights, fallback=False)
    if overrides:
        cfg = with_evaluation_overrides(cfg, overrides)
        method.sampling, method.cfg = cfg.sampler, cfg.model
    metrics = parse_metrics(metrics) if metrics else default_metrics(type(method))
    step = payload["progress"]["step"]
    label = f"{cfg.method} {path.name} at step {step}, {weights_description(payload)}"
    evaluator = Evaluator(build_dataset(cfg.data), cfg.data, settings, device)
    results, _ = evaluator.score_method(method, metrics, label)
    split = evaluator.scored_split()
    for r in results.values():
        r.update({"checkpoint": path.name, "step": step, "split": split})
    if record and Path(run).is_dir():
        record_evaluation(Path(run), results, step, path.name, weights_description(payload), settings.split or "report")
    return results


def evaluate_on_splits(run: Path | str, metrics: list[str], settings: EvalSettings, roles: dict[str, str],
                       device: torch.device, overrides: list[str] | None = None, applicable_only: bool = False):
    """:func:`evaluate_run` of the last checkpoint on several splits ({name: split role or name}) from
    one draw of samples: the same images (seeds ``settings.seed``..) are scored against each split,
    exactly as `genlab eval --split` would score them one at a time. Returns ({name: results}, the
    loaded model with ``overrides`` applied). With ``applicable_only``, metrics the family cannot give
    (bits/dim of a GAN) are left out instead of refused."""
    model = load_model(run, device, prefer="last", weights="ema", fallback=False)
    method, cfg, payload, path = model
    if overrides:
        cfg = with_evaluation_overrides(cfg, overrides)
        method.sampling, method.cfg = cfg.sampler, cfg.model
    label = f"{cfg.method} {path.name} at step {payload['progress']['step']}, {weights_description(payload)}"
    metrics = parse_metrics(metrics)
    if applicable_only:
        have = abilities(type(method))
        metrics = [m for m in metrics if set(METRICS.get(m).needs) <= have]
    data, samples, out = build_dataset(cfg.data), None, {}
    for name, split in roles.items():
        evaluator = Evaluator(data, cfg.data, replace(settings, split=split), device)
        results, samples = evaluator.score_method(method, metrics, label, samples=samples)
        for r in results.values():
            r.update({"checkpoint": path.name, "step": payload["progress"]["step"], "split": evaluator.scored_split()})
        out[name] = results
    return out, model._replace(config=cfg)
