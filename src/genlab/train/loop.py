"""The one training loop for every family.

The loop owns what is common to all of them: device placement, mixed precision, data order,
logging, progress, validation, early stopping, sample grids, the EMA of the sampling networks,
evaluation, checkpoints and resume. A family (see :mod:`genlab.methods.base`) provides its step
and declares what it can do; adding a family never changes this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from genlab.config import Config, config_to_yaml
from genlab.data import ImageSplits, build_dataset, to_model_range, to_uint8
from genlab.data.augment import BatchAugment
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.detect.adversary import attach_adversary
from genlab.methods import METHODS, build_method
from genlab.methods.base import Method
from genlab.metrics.table import HIGHER_IS_BETTER
from genlab.train.checkpoint import config_from_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from genlab.train.ema import EMA
from genlab.train.distributed import SINGLE, DistInfo, any_rank, barrier, broadcast, parameters_agree, wrap_ddp
from genlab.train.rundir import (
    StatsWriter,
    checkpoint_path,
    create_run_dir,
    image_grid,
    inference_path,
    pair_grid,
    require_run_dir,
    save_grid,
    trim_stats,
    update_json,
)
from genlab.train.speed import apply_plan, begin_step, plan_speed

log = logging.getLogger("genlab")

# Keys that may change when a run is resumed: how long it goes on, how it reports, how fast. Anything
# else would make the resumed run a different experiment than the one its directory records.
RESUMABLE_KEYS = ("train.epochs", "train.max_steps", "train.max_minutes", "train.patience", "train.on_divergence",
                  "train.rollback_lr_factor", "train.max_rollbacks", "train.log_every", "train.checkpoint_every",
                  "train.grid_every", "train.num_samples", "train.report",
                  "train.compile", "train.compile_mode", "train.channels_last")  # speed only: the same computation
RECONSTRUCTION_IMAGES = 16  # validation images shown beside their reconstructions each epoch


@dataclass
class Progress:
    step: int = 0  # optimisation steps done
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches done in the current, unfinished epoch
    best_score: float | None = None  # monitored value, negated for higher-is-better metrics: lower is better
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    elapsed_s: float = 0.0  # training wall time over all sessions of this run (validation, grids, evaluation excluded)
    images_seen: int = 0
    rollbacks: int = 0  # times the run went back to its last checkpoint after non-finite values
    epoch_sums: dict = field(default_factory=dict)  # this epoch's logged values x steps so far (train_* means)
    epoch_counts: dict = field(default_factory=dict)


class _Diverged(Exception):
    """A non-finite loss or gradient norm was found (where losses are read, or before a save)."""

    def __init__(self, values: dict[str, float]):
        super().__init__("non-finite values")
        self.values = values


class _StopSignals:
    """SIGTERM (cluster preemption: SLURM, Kubernetes, spot instances) and SIGINT (Ctrl-C) during
    training: the current step finishes, the run saves its position and stops, and the shell sees
    143 or 130. A second Ctrl-C interrupts at once. Installed only in the main thread."""

    def __init__(self):
        self.name: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (an embedding application): leave its handlers alone
                pass

    def _handle(self, signum, frame):
        if self.name == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C
        self.name = signal.Signals(signum).name
        log.warning("%s received: finishing the current step, then saving", self.name)

    def received(self, dist: DistInfo, every: int = 1, step: int = 0) -> bool:
        """Whether to stop now; under DDP every rank decides alike, at log steps only (a collective)."""
        if not dist.enabled:
            return self.name is not None
        if step % every:
            return False
        stop = any_rank(self.name is not None, dist)
        if stop and self.name is None:  # another rank was signalled (torchrun forwards SIGTERM to every worker)
            self.name = "SIGTERM"
        return stop

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GenlabError(f"--device cuda: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    if name not in ("cpu", "cuda"):
        raise GenlabError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a function of (seed, epoch) alone, so resume needs no sampler state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _BufferHandler(logging.Handler):
    """Holds log records made before the run directory exists, to replay them into its log."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


class _RunLogHandler(logging.FileHandler):
    """The run's log.txt. A record that cannot be written (a full disk) is dropped without the traceback
    logging would print: the run's next checkpoint or stats write then fails with one clear line."""

    def handleError(self, record):
        pass

    def close(self):
        try:
            super().close()
        except OSError:  # (the final flush on a full disk: the failure that matters is already reported)
            pass


def attach_run_log(run_dir: Path, buffered: _BufferHandler | None = None) -> logging.Handler:
    handler = _RunLogHandler(run_dir / "log.txt")
    handler.setLevel(logging.INFO)
    if log.getEffectiveLevel() > logging.INFO:  # the run's log is always written, from the CLI or from Python
        log.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    if buffered is not None:
        for record in buffered.records:
            handler.handle(record)
    log.addHandler(handler)
    return handler


def check_run(cfg: Config, data: ImageSplits, dist: DistInfo) -> int:
    """What can only be checked once the data is known, checked before a run directory is made.
    Returns the global batch size (clamped to the training split)."""
    batch = min(cfg.train.batch_size, len(data.train))
    if batch % dist.world_size:
        raise GenlabError(f"train.batch_size {batch} does not divide over {dist.world_size} processes")
    if cfg.train.accumulate > batch // dist.world_size:
        raise GenlabError(f"train.accumulate={cfg.train.accumulate} is more micro-batches than the "
                          f"{batch // dist.world_size} images each process gets per step")
    if cfg.train.patience is not None and cfg.train.monitor == "val_loss" and data.val is None:
        raise GenlabError(f"train.patience={cfg.train.patience} watches the validation loss, but the {data.name} data "
                          "has no validation split here; set data.val_fraction > 0 or leave train.patience unset")
    return batch


class _NoWriter:
    """What ranks other than 0 write: nothing."""

    def write(self, record):
        pass

    def image(self, *args):
        pass

    def close(self):
        pass


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, data: ImageSplits, method: Method,
                 progress: Progress, quiet: bool = False, dist: DistInfo = SINGLE, ema_state: dict | None = None):
        self.cfg, self.run_dir, self.device, self.dist = cfg, run_dir, device, dist
        self.data, self.method, self.progress, self.quiet = data, method, progress, quiet or not dist.is_main
        n = len(data.train)
        self.batch_size = check_run(cfg, data, dist)  # the global batch, over all ranks
        if self.batch_size < cfg.train.batch_size:
            log.warning("train.batch_size %d is larger than the %d training images; using %d",
                        cfg.train.batch_size, n, self.batch_size)
        self.rank_batch = self.batch_size // dist.world_size
        self.steps_per_epoch = n // self.batch_size  # the incomplete last batch is dropped (BatchNorm)
        self.speed = plan_speed(cfg.train, device, dist.enabled)
        self._evaluator = None
        self._rollbacks_since_save = 0
        self.ema = EMA(method, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
        if self.ema is not None and ema_state is not None:
            self.ema.load_state_dict(ema_state)
        self._prepare_networks()

    def _prepare_networks(self) -> None:
        """Device-specific speed-ups and the DDP wrapper, applied the same way to every family."""
        apply_plan(self.speed, self.method, self.cfg.train.accumulate)
        if self.ema is not None and self.speed.channels_last:
            self.ema.to_memory_format(torch.channels_last)
        if self.dist.enabled:
            self.method.distribute(lambda net: wrap_ddp(net, self.device))

    def reporting(self):
        """The context every report on the model runs in: eval mode, and the EMA weights when EMA is on."""
        stack = contextlib.ExitStack()
        if self.ema is not None:
            stack.enter_context(self.ema.applied(self.method))
        stack.enter_context(self.method.evaluating())
        return stack

    def weights_label(self) -> str:
        return f"EMA weights (decay {self.ema.decay})" if self.ema is not None else "raw weights"

    # -- helpers ------------------------------------------------------------------------------
    def _out_of_memory_message(self) -> str:
        where = str(self.device)
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory / 2**30
            where += f" ({torch.cuda.get_device_name(self.device)}, {total:.0f} GiB)"
        return (f"out of memory: a batch of {self.rank_batch} images of {'x'.join(map(str, self.data.image_shape))} "
                f"does not fit on {where} for {self.cfg.method}; lower train.batch_size (now {self.batch_size})")

    def _place(self, images: torch.Tensor) -> torch.Tensor:
        """The whole uint8 training split on the device when it fits in half the free memory, so
        batches are gathered there; otherwise it stays memory-mapped on the host, and each batch is
        gathered into pinned memory so its copy to the GPU runs asynchronously."""
        if self.device.type != "cuda":
            return images
        free, _ = torch.cuda.mem_get_info(self.device)
        nbytes = images.numel() * images.element_size()
        if nbytes < free // 2:
            return images.to(self.device)
        log.info("training images (%.1f GB) stay on the host: the GPU has %.1f GB free", nbytes / 1e9, free / 1e9)
        return images

    def _rollback(self, last: Path) -> None:
        """Back to the last checkpoint (weights, optimizers, EMA, position, RNG) with every learning
        rate times train.rollback_lr_factor for each rollback since that checkpoint was written."""
        barrier(self.dist)
        payload = load_checkpoint(last)
        self.method.load_state_dict(payload["state"], source=str(last))
        if self.ema is not None and payload.get("ema"):
            self.ema.load_state_dict(payload["ema"])
        rollbacks = self.progress.rollbacks + 1
        saved = Progress(**payload["progress"])
        for f in dataclasses.fields(Progress):
            setattr(self.progress, f.name, getattr(saved, f.name))
        self.progress.rollbacks = rollbacks
        self._rollbacks_since_save += 1
        factor = self.cfg.train.rollback_lr_factor ** self._rollbacks_since_save
        for optimizer in self.method.optimizers().values():
            for group in optimizer.param_groups:
                group["lr"] *= factor
        set_rng_state(payload["rng"])
        _seed_rank(self.cfg.train.seed + rollbacks, self.dist, self.progress.step)

    def _save(self, which: str) -> None:
        self._rollbacks_since_save = 0  # the lower learning rates are now part of the saved state
        if not self.dist.is_main:
            return
        save_checkpoint(checkpoint_path(self.run_dir, which), self.cfg, self.data.image_shape,
                        self.method.state_dict(), dataclasses.asdict(self.progress),
                        self.ema.state_dict() if self.ema is not None else None)

    def _copy_last_to_best(self) -> None:
        last, best = checkpoint_path(self.run_dir, "last"), checkpoint_path(self.run_dir, "best")
        for source, target in ((last, best), (inference_path(last), inference_path(best))):
            atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), "checkpoint")

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        """Mean validation losses over the whole split, with the same noise every epoch so epochs compare."""
        generator = torch.Generator().manual_seed(self.cfg.train.seed)
        totals: dict[str, torch.Tensor] = {}
        val = self.data.val
        with self.reporting():
            for i in range(0, len(val), self.batch_size):
                x = to_model_range(val[i : i + self.batch_size].to(self.device))
                with self.speed.autocast():
                    losses = self.method.validation_step(x, generator)
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0) + v.float() * len(x)
        return {k: (v / len(val)).item() for k, v in totals.items()}

    def _write_grids(self, tag: str, writer: StatsWriter) -> None:
        """Sample and reconstruction grids, in eval mode and with the EMA weights when EMA is on:
        reporting must not touch the training state (a BatchNorm layer in train mode would fold these
        batches into its running statistics)."""
        with self.reporting():
            self._write_grids_eval(tag, writer)

    def _write_grids_eval(self, tag: str, writer: StatsWriter) -> None:
        if not self.method.samplers:  # a family that makes no images (a detector) has no grids
            return
        samples = self.method.sample(self.cfg.train.num_samples, self.cfg.train.sample_seed)
        grid = image_grid(samples)
        save_grid(grid, self.run_dir / "samples" / f"{tag}.png")
        writer.image("samples", grid, self.progress.step)
        if self.method.has_encoder:
            source = self.data.val if self.data.val is not None else self.data.train
            originals = source[:RECONSTRUCTION_IMAGES]
            with self.speed.autocast():
                recon = self.method.reconstruct(to_model_range(originals.to(self.device)))
            grid = pair_grid(originals, to_uint8(recon).cpu())
            save_grid(grid, self.run_dir / "reconstructions" / f"{tag}.png")
            writer.image("reconstructions", grid, self.progress.step)

    def _evaluate(self) -> tuple[dict[str, float], dict[str, dict]]:
        """The configured metrics, under `genlab eval`'s protocol, with the training RNG untouched:
        flat values for the epoch record and early stopping, and the full results with protocols."""
        from genlab.metrics.evaluate import Evaluator, flat_values
        from genlab.metrics.settings import EvalSettings

        e = self.cfg.eval
        if self._evaluator is None:
            settings = EvalSettings(metrics=e.metrics, n=e.n, extractor=e.extractor, inception_weights=e.inception_weights,
                                    seed=self.cfg.train.sample_seed)
            self._evaluator = Evaluator(self.data, self.cfg.data, settings, self.device)
        start = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        label = f"{self.cfg.method} epoch {self.progress.epoch} at step {self.progress.step}, {self.weights_label()}"
        with torch.random.fork_rng(devices=devices), self.reporting():
            # every rank takes part: generation and features are shared out, rank 0 scores
            results, _ = self._evaluator.score_method(self.method, e.metrics, label, self.dist)
        values = {f"eval_{k}": v for k, v in flat_values(results).items()}
        values["eval_seconds"] = round(time.perf_counter() - start, 2)
        return values, results

    def _end_of_epoch(self, writer: StatsWriter, evaluated: dict[str, float], results: dict[str, dict]) -> bool:
        """Validation, early stopping, grids and checkpoints (rank 0); True when training should stop."""
        p, cfg = self.progress, self.cfg.train
        if self.ema is None:
            self.method.fit_prior(self.data.train)
        else:
            # fitted with the averages, the networks that sample and reconstruct: a density over the
            # averaged encoder's codes, which the averaged decoder decodes (fitted to the live
            # encoder's, it sat a little off them: a GAN-trained decoder moves between steps); the live
            # networks get the same buffers, for the prior samples some families train on
            with self.ema.applied(self.method):
                self.method.fit_prior(self.data.train)
            self.ema.buffers_to_live()
        record: dict = {"kind": "epoch", "step": p.step, "epoch": p.epoch}
        if (self.method.has_validation_loss or self.method.has_validation_step) and self.data.val is not None:
            record.update({f"val_{k}": v for k, v in self._validate().items()})
        record.update(evaluated)
        if results:  # the evaluation history: every result with its protocol, so checkpoints compare later
            writer.write({"kind": "eval", "step": p.step, "epoch": p.epoch, "source": "training",
                          "weights": self.weights_label(), "results": results})
        improved = False
        key = "val_loss" if cfg.monitor == "val_loss" else f"eval_{cfg.monitor}"
        if key in record:  # one check of the monitored value: lower is better, except for IS, precision, ...
            value = record[key] if cfg.monitor not in HIGHER_IS_BETTER else -record[key]
            if p.best_score is None or value < p.best_score:
                p.best_score, p.best_epoch, p.epochs_without_improvement = value, p.epoch, 0
                improved = True
            else:
                p.epochs_without_improvement += 1
        writer.write(record)
        shown = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith(("val_", "eval_", "train_")))
        log.info("epoch %d/%d done at step %d%s", p.epoch, cfg.epochs, p.step, f": {shown}" if shown else "")
        stop = cfg.patience is not None and p.epochs_without_improvement >= cfg.patience
        if stop:
            log.info("early stopping: no better %s in %d checks (best at epoch %d)", cfg.monitor, cfg.patience, p.best_epoch)
        if (cfg.grid_every and p.epoch % cfg.grid_every == 0) or stop or p.epoch == cfg.epochs:
            self._write_grids(f"epoch-{p.epoch:04d}", writer)
        self._save("last")
        if improved:
            self._copy_last_to_best()
        return stop

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, p = self.cfg.train, self.progress
        total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        # The uint8 training split, on the device when it fits there (batches are then gathered on it).
        train_images = self._place(self.data.train)
        augment = BatchAugment(self.cfg.data.augment)
        main = self.dist.is_main
        offset = self.dist.rank * self.rank_batch  # this rank's share of every global batch
        extras = "".join([f" in {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else "",
                          f", EMA {self.ema.decay} of {', '.join(self.ema.shadows)}" if self.ema is not None else ""])
        log.info("training %s on %s: %d images, batch %d%s, %d steps per epoch, %d epochs, device %s (%s)",
                 self.cfg.method, self.data.name, len(self.data.train), self.batch_size, extras, self.steps_per_epoch,
                 cfg.epochs, self.device, self.speed.describe())
        writer = StatsWriter(self.run_dir, purge_step=p.step or None) if main else _NoWriter()
        bar = tqdm(total=total_steps, initial=min(p.step, total_steps), disable=self.quiet, unit="step",
                   dynamic_ncols=True, file=sys.stderr, leave=False)
        # Running sums per key and how many steps returned each key: a value a family returns on some
        # steps only (G's loss under n_critic, a lazy penalty) is the mean over those steps.
        running: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        # The same over the epoch, from the values already read back (no further sync): `train_<key>`
        # in the epoch record, beside `val_<key>` (a flow's bits/dim on training and validation images);
        # kept in the progress, so an epoch resumed in its middle reports the same means.
        epoch_sums, epoch_counts = p.epoch_sums, p.epoch_counts
        window_steps, window_start, session_start = 0, time.perf_counter(), time.perf_counter()
        elapsed_before = p.elapsed_s

        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite loss since the last check

        def check_finite(values: dict[str, float] | None = None) -> None:
            """Raise _Diverged when a loss (or a clipped gradient norm) was non-finite since the last
            check: the one read of the device flag, where losses are read and before every save."""
            nonlocal nonfinite
            bad = bool(nonfinite | self.method.stepper.nonfinite)
            if values is not None:
                bad = bad or not all(math.isfinite(v) for v in values.values())
            if any_rank(bad, self.dist):
                raise _Diverged(values or {})
            nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
            self.method.stepper.nonfinite = False

        def flush_window(check: bool = True) -> None:
            nonlocal running, counts, window_steps, window_start
            if not window_steps:
                if check:
                    check_finite()
                return
            now = time.perf_counter()
            values = {k: (v / counts[k]).item() for k, v in running.items()}  # the only host sync
            for k, v in values.items():
                epoch_sums[k] = epoch_sums.get(k, 0.0) + v * counts[k]
                epoch_counts[k] = epoch_counts.get(k, 0) + counts[k]
            record = {"kind": "train", "step": p.step, "epoch": round(p.epoch + p.batch / self.steps_per_epoch, 4),
                      "time_s": round(elapsed_before + now - session_start, 3),
                      "images_per_s": round(window_steps * self.batch_size / (now - window_start), 1), **values}
            writer.write(record)
            bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()} | {"img/s": f"{record['images_per_s']:.0f}"},
                            refresh=False)
            running, counts, window_steps, window_start = {}, {}, 0, now
            if check:
                check_finite(values)

        def save_last() -> None:
            """The position as last.pt, never from weights that produced a non-finite value (the losses
            so far are logged first, so a resumed run's log continues exactly where this one stops)."""
            flush_window()
            p.elapsed_s = training_time()
            self._save("last")

        reporting_s = 0.0  # validation, grids and evaluation this session: not training time

        def training_time() -> float:
            return elapsed_before + time.perf_counter() - session_start - reporting_s

        def out_of_time() -> bool:  # (a host clock, no device sync; under DDP rank 0's clock decides for all)
            if cfg.max_minutes is None:
                return False
            spent = training_time() >= cfg.max_minutes * 60
            return broadcast(spent, self.dist) if self.dist.enabled else spent

        def run_epochs() -> str:
            """Train from the current position until a stop condition; returns why it stopped."""
            nonlocal nonfinite, window_steps, window_start, reporting_s
            while p.epoch < cfg.epochs:
                bar.set_description(f"epoch {p.epoch + 1}/{cfg.epochs}")
                order = epoch_permutation(len(train_images), cfg.seed, p.epoch).to(train_images.device)
                while p.batch < self.steps_per_epoch:
                    if cfg.max_steps is not None and p.step >= cfg.max_steps:
                        return "max_steps"
                    if p.step % cfg.log_every == 0 and out_of_time():  # (checked where losses are read)
                        return "max_minutes"
                    start = p.batch * self.batch_size + offset
                    index = order[start : start + self.rank_batch]
                    batch = train_images[index]
                    if self.device.type == "cuda" and not batch.is_cuda:
                        batch = batch.pin_memory()  # (from the caching host allocator: cheap after the first)
                    x = to_model_range(batch.to(self.device, non_blocking=True))
                    if augment.active:
                        x = augment(x)
                    if self.speed.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    begin_step(self.speed)
                    try:
                        with self.speed.autocast():
                            stats = self.method.run_step(x, p.step)
                    except OUT_OF_MEMORY as e:
                        raise GenlabError(self._out_of_memory_message()) from e
                    if self.ema is not None:
                        self.ema.update()
                    for k, v in stats.items():
                        running[k] = running.get(k, 0) + v.float()
                        counts[k] = counts.get(k, 0) + 1
                    if stats:  # accumulated on the device; read with the losses (check_finite)
                        nonfinite = nonfinite | ~torch.isfinite(torch.stack([v.float() for v in stats.values()])).all()
                    window_steps += 1
                    p.step, p.batch, p.images_seen = p.step + 1, p.batch + 1, p.images_seen + self.batch_size
                    bar.update(1)
                    if p.step % cfg.log_every == 0:
                        flush_window()
                    if signals.received(self.dist, every=1 if not self.dist.enabled else cfg.log_every, step=p.step):
                        return signals.name
                    if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                        save_last()
                flush_window()
                p.epoch, p.batch = p.epoch + 1, 0
                self.method.end_epoch()
                p.elapsed_s = training_time()
                # Rank 0 validates, evaluates and writes; every rank learns whether to stop.
                due = self.cfg.eval.every and p.epoch % self.cfg.eval.every == 0
                report_start = time.perf_counter()
                evaluated, results = self._evaluate() if due else ({}, {})  # on every rank: the work is shared
                train_means = {f"train_{k}": v / epoch_counts[k] for k, v in epoch_sums.items()}
                epoch_sums.clear()
                epoch_counts.clear()
                stop = self._end_of_epoch(writer, {**train_means, **evaluated}, results) if main else False
                window_start = time.perf_counter()  # images/s counts training only, not validation or grids
                reporting_s += window_start - report_start
                if broadcast(stop, self.dist):
                    return "early_stopping"
                if signals.received(self.dist):
                    return signals.name
            return "epochs"

        self.method.train()
        signals = _StopSignals()
        try:
            while True:
                try:
                    stop_reason = run_epochs()
                    break
                except _Diverged as diverged:
                    last = checkpoint_path(self.run_dir, "last")
                    shown = ", ".join(f"{k} {v:.4g}" for k, v in diverged.values.items()) or "found before a save"
                    if cfg.on_divergence == "rollback" and p.rollbacks < cfg.max_rollbacks and last.is_file():
                        bad_step = p.step
                        self._rollback(last)
                        log.warning("non-finite values near step %d (%s): rollback %d of %d to step %d (%s), learning "
                                    "rates x%s", bad_step, shown, p.rollbacks, cfg.max_rollbacks, p.step, last,
                                    cfg.rollback_lr_factor)
                        writer.write({"kind": "rollback", "step": p.step, "from_step": bad_step, "rollback": p.rollbacks,
                                      "lr_factor": cfg.rollback_lr_factor, "losses": diverged.values})
                        running, counts = {}, {}
                        epoch_sums, epoch_counts = p.epoch_sums, p.epoch_counts  # (the checkpoint's)
                        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
                        self.method.stepper.nonfinite = False
                        elapsed_before, session_start, reporting_s = p.elapsed_s, time.perf_counter(), 0.0
                        continue
                    why = ("after %d rollbacks" % p.rollbacks if cfg.on_divergence == "rollback" and last.is_file()
                           else "with no checkpoint to roll back to" if cfg.on_divergence == "rollback" else "")
                    log.error("a loss or gradient norm became non-finite near step %d (%s); stopping%s. The last good "
                              "checkpoint is %s", p.step, shown, f" {why}" if why else "",
                              last if last.is_file() else "none (none was written yet)")
                    stop_reason = "non_finite_loss"
                    break
            flush_window(check=False)
            p.elapsed_s = training_time()
            if stop_reason in ("max_steps", "max_minutes", "SIGTERM", "SIGINT"):  # inside an epoch: keep its position
                try:
                    check_finite()  # (on every rank: a collective under DDP)
                except _Diverged as diverged:
                    log.error("non-finite values before the final save near step %d (%s); the last good checkpoint "
                              "is %s", p.step, diverged.values, checkpoint_path(self.run_dir, "last"))
                    stop_reason = "non_finite_loss"
            if stop_reason in ("max_steps", "max_minutes") and main:
                self._write_grids(f"step-{p.step:07d}", writer)
                self._save("last")
            elif stop_reason in ("SIGTERM", "SIGINT"):
                self._save("last")
                log.warning("stopped by %s at step %d; continue with: genlab train --resume %s", stop_reason, p.step,
                            self.run_dir)
        except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training steps
            try:
                save_last()
            except _Diverged:
                log.error("interrupted after non-finite values; the last good checkpoint is kept")
                raise KeyboardInterrupt from None
            log.warning("interrupted at step %d; continue with: genlab train --resume %s", p.step, self.run_dir)
            raise
        finally:
            signals.restore()
            bar.close()
            writer.close()

        if self.dist.enabled:
            if not parameters_agree(self.method.networks(), self.dist):
                raise GenlabError("the processes ended with different parameters; the run is not consistent")
            log.info("parameters identical on all %d ranks", self.dist.world_size)
            if not main:
                return {}
        summary = {
            "method": self.cfg.method,
            "processes": self.dist.world_size,
            "dataset": self.data.name,
            "steps": p.step,
            "epochs_completed": p.epoch,
            "stopped_because": stop_reason,
            "monitor": cfg.monitor,
            "best_monitored": p.best_score if cfg.monitor not in HIGHER_IS_BETTER or p.best_score is None
            else -p.best_score,
            "best_epoch": p.best_epoch,
            "train_time_s": round(p.elapsed_s, 2),
            "images_per_s": round(p.images_seen / p.elapsed_s, 1) if p.elapsed_s > 0 else None,
            "device": str(self.device),
            "parameters": self.method.num_parameters(),
        }
        update_json(self.run_dir / "metrics.json", {"train": summary})
        log.info("finished (%s) after %d steps, %.1f s; run directory %s", stop_reason, p.step, p.elapsed_s, self.run_dir)
        return summary


# ----------------------------------------------------------------------------------------------
# Entry points used by the CLI


def _load_data(cfg: Config, info: DistInfo) -> ImageSplits:
    """Rank 0 prepares the cache first; the other ranks then read the same cache."""
    if info.is_main:
        data = build_dataset(cfg.data)
    barrier(info)
    return data if info.is_main else build_dataset(cfg.data)


def _seed_rank(seed: int, info: DistInfo, step: int = 0) -> None:
    """Different training noise on each rank (after identical initialisation)."""
    if info.enabled and info.rank:
        torch.manual_seed(seed * 1_000_003 + step * 7919 + info.rank)


def initialise_from_run(method: Method, cfg: Config, data: ImageSplits, device: torch.device) -> None:
    """init.from_run: copy networks from another run's model (its best, else last, inference
    snapshot, so EMA weights when it kept them), checked before the run directory is made."""
    from genlab.resolve import init_mapping
    from genlab.train.checkpoint import build_method_from_checkpoint
    from genlab.train.rundir import find_checkpoint

    source = Path(cfg.init.from_run).expanduser()
    try:
        path = find_checkpoint(source, "best", inference=True)
    except GenlabError:
        path = find_checkpoint(source, "last", inference=True)
    other, other_cfg, payload = build_method_from_checkpoint(path, device)
    if tuple(payload["image_shape"]) != tuple(data.image_shape):
        raise GenlabError(f"init.from_run={source}: that run was trained on images of shape {payload['image_shape']}, "
                          f"this one has {list(data.image_shape)}")
    copied = method.initialise_from(other, init_mapping(cfg.init.networks), str(source))
    log.info("initialised from %s (%s, step %d, %s): %s", path, other_cfg.method, payload["progress"]["step"],
             payload["weights_used"], ", ".join(copied))


def write_run_report(cfg: Config, run_dir: Path, info: DistInfo) -> None:
    """train.report: the run's HTML report (genlab report) in RUN_DIR/report.html when training ends."""
    if not cfg.train.report or not info.is_main:
        return
    from genlab.report import write_report

    path = write_report([run_dir], run_dir / "report.html", force=True)
    log.info("report: %s (open it in a browser)", path)


def start_training(cfg: Config, runs_root: Path, device: torch.device, quiet: bool = False,
                   info: DistInfo = SINGLE, run_dir: Path | None = None) -> Path:
    """Load the data, then (only once everything checked out) create the run directory and train:
    a new numbered one below ``runs_root``, or ``run_dir`` itself when given (a named run)."""
    named = run_dir
    buffered = _BufferHandler()
    log.addHandler(buffered)
    try:
        data = _load_data(cfg, info)
        check_run(cfg, data, info)
        seed_everything(cfg.train.seed)  # the same initialisation on every rank
        method = build_method(cfg, data.image_shape, device)
        attach_adversary(method, cfg, data.image_shape, device)
        if cfg.init.from_run is not None:
            initialise_from_run(method, cfg, data, device)
        method.prepare(data.train)
    finally:
        log.removeHandler(buffered)
    run_dir = None
    if info.is_main:
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
    run_dir = broadcast(run_dir, info)
    handler = attach_run_log(run_dir, buffered) if info.is_main else None
    try:
        log.info("run directory %s", run_dir)
        log.info("parameters: %s", ", ".join(f"{k} {v:,}" for k, v in method.num_parameters().items()))
        trainer = Trainer(cfg, run_dir, device, data, method, Progress(), quiet, info)
        _seed_rank(cfg.train.seed, info)
        trainer.fit()
        write_run_report(cfg, run_dir, info)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return run_dir


def resume_training(run_dir: Path, overrides: list[str], device: torch.device, quiet: bool = False,
                    info: DistInfo = SINGLE) -> Path:
    """Continue a run from its last checkpoint. Everything is checked before anything is written."""
    from genlab.config import apply_overrides
    from genlab.resolve import resolve_config

    run_dir = require_run_dir(run_dir)
    last = checkpoint_path(run_dir, "last")
    if not last.is_file():
        raise GenlabError(f"{run_dir} has no checkpoint to resume from ({last} is missing)")
    payload = load_checkpoint(last)
    cfg = config_from_checkpoint(payload, last)
    import yaml

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
    data = _load_data(cfg, info)
    if list(data.image_shape) != list(payload["image_shape"]):
        raise GenlabError(f"{last} was trained on images of shape {payload['image_shape']}, "
                          f"but data now gives {list(data.image_shape)}")
    method = build_method(cfg, data.image_shape, device)
    method.load_state_dict(payload["state"], source=str(last))
    attach_adversary(method, cfg, data.image_shape, device)  # its detector run must still be there
    if cfg.train.ema_decay > 0 and not payload.get("ema"):
        raise GenlabError(f"{last} holds no EMA state although its config sets train.ema_decay")
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
            for stale in (run_dir / "checkpoints").glob("*.tmp-*"):  # a write a kill interrupted
                stale.unlink(missing_ok=True)
                log.warning("removed %s, a checkpoint write that did not finish", stale.name)
            dropped, torn = trim_stats(run_dir, progress.step)
            if dropped:
                log.warning("stats.jsonl: dropped %d record(s) written after the checkpoint at step %d%s", dropped,
                            progress.step, ", one of them a torn line from an interrupted write" if torn else "")
            with open(run_dir / "stats.jsonl", "a") as f:
                f.write(f'{{"kind": "resume", "step": {progress.step}, "epoch": {progress.epoch}}}\n')
        trainer = Trainer(cfg, run_dir, device, data, method, progress, quiet, info, ema_state=payload.get("ema"))
        _seed_rank(cfg.train.seed, info, progress.step)
        trainer.fit()
        write_run_report(cfg, run_dir, info)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
    return run_dir


def resumed_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The configuration `genlab train --resume RUN_DIR [overrides]` would continue with."""
    from genlab.config import apply_overrides
    from genlab.resolve import resolve_config

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
    import json

    metrics = run_dir / "metrics.json"
    why = json.loads(metrics.read_text()).get("train", {}).get("stopped_because") if metrics.exists() else None
    return {"non_finite_loss": 1, "SIGTERM": 143, "SIGINT": 130}.get(why, 0)


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and not key == "first_stage":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def named_run_plan(cfg: Config, run_dir: Path) -> tuple[str, list[str]]:
    """What `genlab train PRESET --run-dir DIR` does, so a re-queued job script simply continues:
    ("start", []) when DIR is absent or empty, or holds this config's run that never reached a
    checkpoint (it starts again there); ("resume", overrides) when DIR holds a run of the same config
    with a checkpoint (keys that may change on resume, such as train.epochs, are carried over).
    Anything else is refused, naming the keys that differ."""
    import yaml

    from genlab.resolve import resolve_config

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
    ours, theirs = _flatten(cfg.to_dict()), _flatten(recorded.to_dict())
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
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
