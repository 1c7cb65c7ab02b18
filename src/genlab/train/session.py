"""Starting, resuming and naming runs: everything around :class:`~genlab.train.loop.Trainer.fit`.

Everything a run needs is checked before its directory is made or anything in it is written. A
caller may compose more into the model before training (``extend``: the detector benchmark's
frozen adversary, see :mod:`genlab.detect.adversary`); this module knows no such extension.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import torch
import yaml

from genlab.config import Config, apply_overrides, config_to_yaml
from genlab.data import ImageSplits, build_dataset
from genlab.distributed import SINGLE, DistInfo, barrier, broadcast
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods import METHODS, build_method
from genlab.methods.base import Method
from genlab.resolve import init_mapping, resolve_config
from genlab.train.checkpoint import config_from_checkpoint, load_checkpoint, load_model, set_rng_state
from genlab.train.logs import BufferHandler, attach_run_log, detach_run_log
from genlab.train.loop import Trainer
from genlab.train.progress import Progress, check_run, seed_everything, seed_rank
from genlab.train.rundir import checkpoint_path, create_run_dir, require_run_dir, trim_stats

log = logging.getLogger("genlab")

# Keys that may change when a run is resumed: how long it goes on, how it reports, how fast. Anything
# else would make the resumed run a different experiment than the one its directory records.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.max_minutes", "train.patience", "train.on_divergence",
                  "train.rollback_lr_factor", "train.max_rollbacks", "train.log_every", "train.checkpoint_every",
                  "train.grid_every", "train.num_samples", "train.report",
                  "train.compile", "train.compile_mode", "train.channels_last")  # speed only: the same computation

# extend(method, cfg, image_shape, device): composes more into a built model before training
Extension = Callable[[Method, Config, tuple, torch.device], None]


def load_data(cfg: Config, info: DistInfo) -> ImageSplits:
    """Rank 0 prepares the cache first; the other ranks then read the same cache."""
    if info.is_main:
        data = build_dataset(cfg.data)
    barrier(info)
    return data if info.is_main else build_dataset(cfg.data)


def initialise_from_run(method: Method, cfg: Config, data: ImageSplits, device: torch.device) -> None:
    """init.from_run: copy networks from another run's model (its best, else last, inference
    snapshot, so EMA weights when it kept them), checked before the run directory is made."""
    source = Path(cfg.init.from_run).expanduser()
    other, other_cfg, payload, path = load_model(source, device, prefer="best")
    if tuple(payload["image_shape"]) != tuple(data.image_shape):
        raise GenlabError(f"init.from_run={source}: that run was trained on images of shape {payload['image_shape']}, "
                          f"this one has {list(data.image_shape)}")
    copied = method.initialise_from(other, init_mapping(cfg.init.networks), str(source))
    log.info("initialised from %s (%s, step %d, %s): %s", path, other_cfg.method, payload["progress"]["step"],
             payload["weights_used"], ", ".join(copied))


def _make_run_dir(cfg: Config, data: ImageSplits, runs_root: Path, named: Path | None) -> Path:
    if named is not None:
        run_dir = Path(named)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise GenlabError(f"cannot create run directory {run_dir}: {e.strerror or e}") from e
    else:
        run_dir = create_run_dir(runs_root, cfg.name, data.name)
    atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(config_to_yaml(cfg)), "file")
    (run_dir / "checkpoints").mkdir(exist_ok=named is not None)
    return run_dir


def start_training(cfg: Config, runs_root: Path, device: torch.device, quiet: bool = False,
                   info: DistInfo = SINGLE, run_dir: Path | None = None, extend: Extension | None = None) -> Path:
    """Load the data, then (only once everything checked out) create the run directory and train:
    a new numbered one below ``runs_root``, or ``run_dir`` itself when given (a named run)."""
    buffered = BufferHandler()
    log.addHandler(buffered)
    try:
        data = load_data(cfg, info)
        check_run(cfg, data, info)
        seed_everything(cfg.train.seed)  # the same initialisation on every rank
        method = build_method(cfg, data.image_shape, device)
        if extend is not None:
            extend(method, cfg, data.image_shape, device)
        if cfg.init.from_run is not None:
            initialise_from_run(method, cfg, data, device)
        method.prepare(data.train)
    finally:
        log.removeHandler(buffered)
    run_dir = broadcast(_make_run_dir(cfg, data, runs_root, run_dir) if info.is_main else None, info)
    handler = attach_run_log(run_dir, buffered) if info.is_main else None
    try:
        log.info("run directory %s", run_dir)
        log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in method.num_parameters().items()))
        trainer = Trainer(cfg, run_dir, device, data, method, Progress(), quiet, info)
        seed_rank(cfg.train.seed, info)
        trainer.fit()
    finally:
        detach_run_log(handler)
    return run_dir


def _checked_resume(run_dir: Path, overrides: list[str]) -> tuple[Config, dict]:
    """The config a run resumes with and its last checkpoint, refused when they do not belong together."""
    last = checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise GenlabError(f"{run_dir} has no checkpoint to resume from ({last} is missing)")
    payload = load_checkpoint(last)
    cfg = config_from_checkpoint(payload, last)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if payload.get("kind") == "inference":
        raise GenlabError(f"{last} is an inference snapshot (no optimizer state); resuming needs a full checkpoint")
    same = recorded.get("method") in METHODS and METHODS.canonical(recorded["method"]) == METHODS.canonical(payload["method"])
    if not same:
        raise GenlabError(f"{last} is a {payload['method']!r} checkpoint, but {run_dir / 'config.yaml'} "
                          f"describes a {recorded.get('method')!r} run")
    check_resumable(overrides)
    if overrides:
        cfg = resolve_config(apply_overrides(cfg.to_dict(), overrides))
    if cfg.train.posthoc_ema and not payload.get("posthoc_ema"):
        raise GenlabError(f"{last} holds no post-hoc EMA state: train.posthoc_ema must be set when a run starts")
    if cfg.train.ema_decay > 0 and not payload.get("ema"):
        raise GenlabError(f"{last} holds no EMA state although its config sets train.ema_decay")
    return cfg, payload


def _tidy_for_resume(run_dir: Path, progress: Progress) -> None:
    """Remove what a kill left half-written, and the stats written after the checkpoint."""
    for stale in (run_dir / "checkpoints").glob("*.tmp-*"):  # a write a kill interrupted
        stale.unlink(missing_ok=True)
        log.warning("removed %s, a checkpoint write that did not finish", stale.name)
    dropped, torn = trim_stats(run_dir, progress.step)
    if dropped:
        log.warning("stats.jsonl: dropped %d record(s) written after the checkpoint at step %d%s", dropped,
                    progress.step, ", one of them a torn line from an interrupted write" if torn else "")
    with open(run_dir / "stats.jsonl", "a") as f:
        f.write(f'{{"kind": "resume", "step": {progress.step}, "epoch": {progress.epoch}}}\n')


def resume_training(run_dir: Path, overrides: list[str], device: torch.device, quiet: bool = False,
                    info: DistInfo = SINGLE, extend: Extension | None = None) -> Path:
    """Continue a run from its last checkpoint. Everything is checked before anything is written."""
    run_dir = require_run_dir(run_dir)
    cfg, payload = _checked_resume(run_dir, overrides)
    last = checkpoint_path(run_dir, "last")
    data = load_data(cfg, info)
    if list(data.image_shape) != list(payload["image_shape"]):
        raise GenlabError(f"{last} was trained on images of shape {payload['image_shape']}, "
                          f"but data now gives {list(data.image_shape)}")
    method = build_method(cfg, data.image_shape, device)
    method.load_state_dict(payload["state"], source=str(last))
    if extend is not None:
        extend(method, cfg, data.image_shape, device)
    progress = Progress(**payload["progress"])
    set_rng_state(payload["rng"])

    handler = None
    if info.is_main:
        if overrides:
            atomic_write(run_dir / "config.yaml", lambda tmp: tmp.write_text(config_to_yaml(cfg)), "file")
        handler = attach_run_log(run_dir)
    try:
        log.info("resuming %s at epoch %d, step %d%s%s", run_dir, progress.epoch, progress.step,
                 f" with {' '.join(overrides)}" if overrides else "",
                 f" on {info.world_size} processes" if info.enabled else "")
        if info.is_main:
            _tidy_for_resume(run_dir, progress)
        trainer = Trainer(cfg, run_dir, device, data, method, progress, quiet, info, ema_state=payload.get("ema"),
                          posthoc_state=payload.get("posthoc_ema"))
        seed_rank(cfg.train.seed, info, progress.step)
        trainer.fit()
    finally:
        detach_run_log(handler)
    return run_dir


def resumed_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The configuration `genlab train --resume RUN_DIR [overrides]` would continue with."""
    last = checkpoint_path(require_run_dir(run_dir), "last")
    cfg = config_from_checkpoint(load_checkpoint(last), last)
    if overrides:
        check_resumable(overrides)
        cfg = resolve_config(apply_overrides(cfg.to_dict(), overrides))
    return cfg


def check_resumable(overrides: list[str]) -> None:
    for text in overrides:
        key = text.partition("=")[0].strip()
        if key not in RESUMABLE_KEYS:
            raise GenlabError(f"cannot change {key!r} when resuming; only {', '.join(RESUMABLE_KEYS)} may change")


def exit_code(run_dir: Path) -> int:
    """The shell's verdict on a finished run: 1 when it stopped on a non-finite loss (the run and its
    last good checkpoint are kept), 143 or 130 when SIGTERM or SIGINT stopped it (128 + the signal,
    as shells report a signal's death; the position is saved), else 0."""
    metrics = run_dir / "metrics.json"
    why = json.loads(metrics.read_text()).get("train", {}).get("stopped_because") if metrics.exists() else None
    return {"non_finite_loss": 1, "SIGTERM": 143, "SIGINT": 130}.get(why, 0)


def _flatten(section, prefix: str = "") -> dict[str, object]:
    """Every key of a resolved config as its dotted name: sections (dataclasses) are opened, any other
    value (a list, or a dict-valued key such as a recorded first stage) is one value."""
    out = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def named_run_plan(cfg: Config, run_dir: Path) -> tuple[str, list[str]]:
    """What `genlab train PRESET --run-dir DIR` does, so a re-queued job script simply continues:
    ("start", []) when DIR is absent or empty, or holds this config's run that never reached a
    checkpoint (it starts again there); ("resume", overrides) when DIR holds a run of the same config
    with a checkpoint (keys that may change on resume, such as train.epochs, are carried over).
    Anything else is refused, naming the keys that differ."""
    run_dir = Path(run_dir)
    if not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())):
        return "start", []
    recorded_path = run_dir / "config.yaml"
    if not run_dir.is_dir() or not recorded_path.is_file():
        raise GenlabError(f"--run-dir {run_dir}: exists and is not a genlab run directory (no config.yaml); "
                          "name an empty or new folder")
    try:
        recorded = resolve_config(yaml.safe_load(recorded_path.read_text()))
    except (yaml.YAMLError, GenlabError) as e:
        raise GenlabError(f"--run-dir {run_dir}: its config.yaml cannot be read: {str(e).splitlines()[0]}") from e
    ours, theirs = _flatten(cfg), _flatten(recorded)
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k) and k != "name")
    fixed = [k for k in differing if k not in RESUMABLE_KEYS]
    if fixed:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} there, {ours.get(k)!r} here)" for k in fixed[:6])
        raise GenlabError(f"--run-dir {run_dir} holds a run of another configuration: {shown}"
                          + (f" and {len(fixed) - 6} more" if len(fixed) > 6 else ""))
    if not checkpoint_path(run_dir, "last").is_file():
        for name in ("stats.jsonl", "log.txt", "metrics.json"):  # a start that never reached its first checkpoint
            (run_dir / name).unlink(missing_ok=True)
        for name in ("tb", "samples", "reconstructions"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
        return "start", []
    return "resume", [f"{k}={_yaml_value(ours[k])}" for k in differing]


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
