"""The one training loop for every family.

The loop owns what is common to all of them: device placement, mixed precision, data order,
logging, progress, validation, early stopping, image grids, the EMA of the sampling networks,
evaluation, checkpoints and the rollback after non-finite values. A family (see
:mod:`genlab.methods.base`) provides its step, an end-of-epoch hook and its grids; adding a family
never changes this file. Starting, resuming and naming runs are in :mod:`genlab.train.session`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from genlab.config import Config, EvalSettings
from genlab.data import ImageSplits, to_model_range
from genlab.data.augment import BatchAugment
from genlab.distributed import (
    SINGLE,
    DistInfo,
    barrier,
    broadcast,
    mean_over_ranks,
    state_mismatches,
    sync_buffers,
    value_mismatches,
    wrap_ddp,
)
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods.base import Method
from genlab.metrics.evaluate import Evaluator, flat_values
from genlab.metrics.table import HIGHER_IS_BETTER
from genlab.train.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from genlab.train.ema import EMA
from genlab.train.posthoc_ema import PowerEMA
from genlab.train.progress import Progress, check_run, epoch_permutation, seed_rank
from genlab.train.rundir import (
    NoWriter,
    StatsWriter,
    checkpoint_path,
    image_grid,
    inference_path,
    pair_grid,
    save_grid,
    update_json,
)
from genlab.train.signals import StopSignals
from genlab.train.speed import apply_plan, begin_step, out_of_memory_message, place_images, plan_speed
from genlab.train.window import Diverged, NonFiniteGuard, RunningMeans, TrainingClock

log = logging.getLogger("genlab")

RECONSTRUCTION_IMAGES = 16  # validation images shown beside their reconstructions each epoch
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
STOPS_INSIDE_AN_EPOCH = ("max_steps", "max_minutes", "SIGTERM", "SIGINT")  # the position is saved mid-epoch


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, data: ImageSplits, method: Method,
                 progress: Progress, quiet: bool = False, dist: DistInfo = SINGLE, ema_state: dict | None = None,
                 posthoc_state: dict | None = None):
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
        self.ema = (EMA(method, cfg.train.ema_decay, cfg.train.ema_warmup, cfg.train.ema_halflife_kimg * 1000,
                        cfg.train.ema_rampup, self.batch_size) if cfg.train.ema_decay > 0 else None)
        self.posthoc = PowerEMA.for_run(method, cfg.train, run_dir, dist.is_main)  # post-hoc EMA's averages
        for average, state in ((self.ema, ema_state), (self.posthoc, posthoc_state)):
            if average is not None and state is not None:
                average.load_state_dict(state)
        self.means = RunningMeans(progress.epoch_sums, progress.epoch_counts)
        self.guard = NonFiniteGuard(device, dist)
        self.clock = TrainingClock(progress.elapsed_s)
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
    def _rollback(self, last: Path) -> None:
        """Back to the last checkpoint (weights, optimizers, EMA, position, RNG) with every learning
        rate times train.rollback_lr_factor for each rollback since that checkpoint was written."""
        barrier(self.dist)
        payload = load_checkpoint(last)
        self.method.load_state_dict(payload["state"], source=str(last))
        for average, key in ((self.ema, "ema"), (self.posthoc, "posthoc_ema")):
            if average is not None and payload.get(key):
                average.load_state_dict(payload[key])
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
        seed_rank(self.cfg.train.seed + rollbacks, self.dist, self.progress.step)
        # the windows, the guard and the clock start again from the checkpoint's position
        self.means.reset(self.progress.epoch_sums, self.progress.epoch_counts)
        self.guard.reset()
        self.clock.restart(self.progress.elapsed_s)

    def _save(self, which: str) -> None:
        self._rollbacks_since_save = 0  # the lower learning rates are now part of the saved state
        if not self.dist.is_main:
            return
        save_checkpoint(checkpoint_path(self.run_dir, which), self.cfg, self.data.image_shape,
                        self.method.state_dict(), dataclasses.asdict(self.progress),
                        self.ema.state_dict() if self.ema is not None else None,
                        self.posthoc.state_dict() if self.posthoc is not None else None)

    def _save_position(self) -> None:
        """The position as last.pt, never from weights that produced a non-finite value (the losses
        so far are logged first, so a resumed run's log continues exactly where this one stops)."""
        self._flush_window()
        self.progress.elapsed_s = self.clock.elapsed()
        self._save("last")

    def _copy_last_to_best(self) -> None:
        last, best = checkpoint_path(self.run_dir, "last"), checkpoint_path(self.run_dir, "best")
        for source, target in ((last, best), (inference_path(last), inference_path(best))):
            atomic_write(target, lambda tmp: shutil.copyfile(source, tmp), "checkpoint")

    def _flush_window(self, check: bool = True) -> None:
        """Log the window's means (the one host sync), then check them for non-finite values."""
        window = self.means.flush(mean_over_ranks if self.dist.enabled else None)
        if window is None:
            if check:
                self.guard.check()
            return
        values, steps, seconds = window
        p = self.progress
        record = {"kind": "train", "step": p.step, "epoch": round(p.epoch + p.batch / self.steps_per_epoch, 4),
                  "time_s": round(self.clock.wall(), 3),
                  "images_per_s": round(steps * self.batch_size / seconds, 1), **values}
        self.writer.write(record)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()} | {"img/s": f"{record['images_per_s']:.0f}"},
                             refresh=False)
        if check:
            self.guard.check(values)

    def _averaged_networks(self) -> dict:
        return {f"ema_{name}": shadow for name, shadow in self.ema.shadows.items()} if self.ema is not None else {}

    def _sync_state(self) -> None:
        """Every buffer the same on every rank before anything reads it (BatchNorm's running statistics
        averaged, the rest rank 0's), the EMA's included: a collective under DDP, nothing otherwise."""
        if self.dist.enabled:
            sync_buffers({**self.method.networks(), **self._averaged_networks()}, self.dist)

    def _check_agreement(self) -> None:
        """At the end of a run under DDP: parameters, buffers, EMA averages and the family's extra state
        (an adaptive noise level) identical on every rank, else the run fails naming what differs."""
        differing = state_mismatches({**self.method.networks(), **self._averaged_networks()}, self.dist)
        differing += value_mismatches({f"extra.{k}": v for k, v in self.method.extra_state().items()}, self.dist)
        if differing:
            shown = ", ".join(differing[:5]) + (f" and {len(differing) - 5} more" if len(differing) > 5 else "")
            raise GenlabError(f"the processes ended with different state: {shown} differ between ranks; "
                              "the run is not consistent")
        log.info("parameters identical on all %d ranks (and buffers%s)", self.dist.world_size,
                 ", EMA averages" if self.ema is not None else "")

    # -- what happens at an epoch's end --------------------------------------------------------
    def _end_epoch_hook(self) -> None:
        """The family's end-of-epoch work (per-epoch schedules, a density refitted to the training
        data), on every process, before validation, evaluation, grids, the checkpoint and the choice
        of best.pt, so that each of them sees the model that is saved. With EMA the hook runs on the
        averages, the networks that sample (a density over the averaged encoder's codes, which the
        averaged decoder decodes), and the live networks then get their buffers (for the prior
        samples some families train on)."""
        if self.ema is None:
            self.method.end_epoch(self.data.train)
            return
        with self.ema.applied(self.method):
            self.method.end_epoch(self.data.train)
        self.ema.buffers_to_live()

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

    def _write_grids(self, tag: str) -> None:
        """The family's grids (samples; reconstructions beside their originals), in eval mode and with
        the EMA weights when EMA is on: reporting must not touch the training state (a BatchNorm
        layer in train mode would fold these batches into its running statistics)."""
        held_out = self.data.val if self.data.val is not None else self.data.train
        with self.reporting():
            images = self.method.grid_images(self.cfg.train.num_samples, self.cfg.train.sample_seed,
                                             held_out[:RECONSTRUCTION_IMAGES], self.speed.autocast)
        for name, shown in images.items():
            grid = pair_grid(*shown) if isinstance(shown, tuple) else image_grid(shown)
            save_grid(grid, self.run_dir / name / f"{tag}.png")
            self.writer.image(name, grid, self.progress.step)

    def _evaluate(self) -> tuple[dict[str, float], dict[str, dict]]:
        """The configured metrics, under `genlab eval`'s protocol, with the training RNG untouched:
        flat values for the epoch record and early stopping, and the full results with protocols."""
        e = self.cfg.eval
        if self._evaluator is None:
            # on the choice split: early stopping and best.pt are decided here, numbers reported on another
            settings = EvalSettings(metrics=e.metrics, n=e.n, extractor=e.extractor, inception_weights=e.inception_weights,
                                    seed=self.cfg.train.sample_seed, split=self.data.resolve_split("choice"))
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

    def _improved(self, record: dict) -> bool:
        """One check of the monitored value (lower is better, except for IS, precision, ...)."""
        p, cfg = self.progress, self.cfg.train
        key = "val_loss" if cfg.monitor == "val_loss" else f"eval_{cfg.monitor}"
        if key not in record:
            return False
        value = record[key] if cfg.monitor not in HIGHER_IS_BETTER else -record[key]
        if p.best_score is None or value < p.best_score:
            p.best_score, p.best_epoch, p.epochs_without_improvement = value, p.epoch, 0
            return True
        p.epochs_without_improvement += 1
        return False

    def _record_epoch(self, evaluated: dict[str, float], results: dict[str, dict]) -> bool:
        """Validation, early stopping, grids and checkpoints (rank 0); True when training should stop."""
        p, cfg = self.progress, self.cfg.train
        record: dict = {"kind": "epoch", "step": p.step, "epoch": p.epoch}
        if (self.method.has_validation_loss or self.method.has_validation_step) and self.data.val is not None:
            record.update({f"val_{k}": v for k, v in self._validate().items()})
        record.update(evaluated)
        if results:  # the evaluation history: every result with its protocol, so checkpoints compare later
            self.writer.write({"kind": "eval", "step": p.step, "epoch": p.epoch, "source": "training",
                               "weights": self.weights_label(), "results": results})
        improved = self._improved(record)
        self.writer.write(record)
        shown = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k.startswith(("val_", "eval_", "train_")))
        log.info("epoch %d/%d done at step %d%s", p.epoch, cfg.epochs, p.step, f": {shown}" if shown else "")
        stop = cfg.patience is not None and p.epochs_without_improvement >= cfg.patience
        if stop:
            log.info("early stopping: no better %s in %d checks (best at epoch %d)", cfg.monitor, cfg.patience, p.best_epoch)
        if (cfg.grid_every and p.epoch % cfg.grid_every == 0) or stop or p.epoch == cfg.epochs:
            self._write_grids(f"epoch-{p.epoch:04d}")
        if self.posthoc is not None:
            self.posthoc.end_epoch()
        self._save("last")
        if improved:
            self._copy_last_to_best()
        return stop

    def _finish_epoch(self) -> bool:
        """The end of an epoch on every rank: the family's hook, evaluation (its work shared out),
        then rank 0 validates, writes and saves; True when every rank should stop early."""
        p = self.progress
        self._flush_window()
        p.epoch, p.batch = p.epoch + 1, 0
        p.elapsed_s = self.clock.elapsed()
        report_start = time.perf_counter()
        self._sync_state()
        self._end_epoch_hook()
        due = self.cfg.eval.every and p.epoch % self.cfg.eval.every == 0
        evaluated, results = self._evaluate() if due else ({}, {})
        train_means = self.means.epoch_means()
        stop = self._record_epoch({**train_means, **evaluated}, results) if self.dist.is_main else False
        self.means.restart_timer()  # images/s counts training only, not validation or grids
        self.clock.exclude(time.perf_counter() - report_start)
        return broadcast(stop, self.dist)

    # -- the loop -------------------------------------------------------------------------------
    def _out_of_time(self) -> bool:  # a host clock, no device sync; under DDP rank 0's clock decides for all
        if self.cfg.train.max_minutes is None:
            return False
        spent = self.clock.elapsed() >= self.cfg.train.max_minutes * 60
        return broadcast(spent, self.dist) if self.dist.enabled else spent

    def _batch(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's share of the current global batch, in [-1, 1] on the device, augmented."""
        start = self.progress.batch * self.batch_size + self.dist.rank * self.rank_batch
        batch = self.train_images[order[start : start + self.rank_batch]]
        if self.device.type == "cuda" and not batch.is_cuda:
            batch = batch.pin_memory()  # (from the caching host allocator: cheap after the first)
        x = to_model_range(batch.to(self.device, non_blocking=True))
        if self.augment.active:
            x = self.augment(x)
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _train_step(self, x: torch.Tensor) -> None:
        p = self.progress
        begin_step(self.speed)
        try:
            with self.speed.autocast():
                stats = self.method.run_step(x, p.step)
        except OUT_OF_MEMORY as e:
            raise GenlabError(out_of_memory_message(self.device, self.rank_batch, self.data.image_shape,
                                                    self.cfg.method, self.batch_size)) from e
        if self.method.averaged_networks_updated(p.step):
            for average in filter(None, (self.ema, self.posthoc)):
                average.update()
        self.means.add(stats)
        self.guard.observe(stats)  # accumulated on the device; read with the losses
        p.step, p.batch, p.images_seen = p.step + 1, p.batch + 1, p.images_seen + self.batch_size
        self.bar.update(1)

    def _run_epochs(self, signals: StopSignals) -> str:
        """Train from the current position until a stop condition; returns why it stopped."""
        cfg, p = self.cfg.train, self.progress
        signal_every = cfg.log_every if self.dist.enabled else 1
        while p.epoch < cfg.epochs:
            self.bar.set_description(f"epoch {p.epoch + 1}/{cfg.epochs}")
            order = epoch_permutation(len(self.train_images), cfg.seed, p.epoch).to(self.train_images.device)
            while p.batch < self.steps_per_epoch:
                if cfg.max_steps is not None and p.step >= cfg.max_steps:
                    return "max_steps"
                # each step alone (a time budget ends within one step of it); under DDP where losses are read
                if (not self.dist.enabled or p.step % cfg.log_every == 0) and self._out_of_time():
                    return "max_minutes"
                self._train_step(self._batch(order))
                if p.step % cfg.log_every == 0:
                    self._flush_window()
                if signals.received(self.dist, every=signal_every, step=p.step):
                    return signals.name
                if cfg.checkpoint_every and p.step % cfg.checkpoint_every == 0:
                    self._save_position()
            if self._finish_epoch():
                return "early_stopping"
            if signals.received(self.dist):
                return signals.name
        return "epochs"

    def _recover(self, diverged: Diverged) -> bool:
        """After non-finite values: roll back to the last checkpoint (True) when allowed, else stop."""
        cfg, p = self.cfg.train, self.progress
        last = checkpoint_path(self.run_dir, "last")
        shown = ", ".join(f"{k} {v:.4g}" for k, v in diverged.values.items()) or "found before a save"
        if cfg.on_divergence == "rollback" and p.rollbacks < cfg.max_rollbacks and last.is_file():
            bad_step = p.step
            self._rollback(last)
            log.warning("non-finite values near step %d (%s): rollback %d of %d to step %d (%s), learning rates x%s",
                        bad_step, shown, p.rollbacks, cfg.max_rollbacks, p.step, last, cfg.rollback_lr_factor)
            self.writer.write({"kind": "rollback", "step": p.step, "from_step": bad_step, "rollback": p.rollbacks,
                               "lr_factor": cfg.rollback_lr_factor, "losses": diverged.values})
            return True
        why = ("after %d rollbacks" % p.rollbacks if cfg.on_divergence == "rollback" and last.is_file()
               else "with no checkpoint to roll back to" if cfg.on_divergence == "rollback" else "")
        log.error("a loss or gradient norm became non-finite near step %d (%s); stopping%s. The last good "
                  "checkpoint is %s", p.step, shown, f" {why}" if why else "",
                  last if last.is_file() else "none (none was written yet)")
        return False

    def _stop(self, stop_reason: str) -> str:
        """Log the last window and save the position of a run stopped inside an epoch (never from
        non-finite weights); returns the final stop reason."""
        p = self.progress
        self._flush_window(check=False)
        p.elapsed_s = self.clock.elapsed()
        self._sync_state()  # (a stop inside an epoch saves, and the agreement check reads, synchronised buffers)
        if stop_reason in STOPS_INSIDE_AN_EPOCH:
            try:
                self.guard.check()  # (on every rank: a collective under DDP)
            except Diverged as diverged:
                log.error("non-finite values before the final save near step %d (%s); the last good checkpoint "
                          "is %s", p.step, diverged.values, checkpoint_path(self.run_dir, "last"))
                return "non_finite_loss"
        if stop_reason in ("max_steps", "max_minutes") and self.dist.is_main:
            self._write_grids(f"step-{p.step:07d}")
            self._save("last")
        elif stop_reason in ("SIGTERM", "SIGINT"):
            self._save("last")
            log.warning("stopped by %s at step %d; continue with: genlab train --resume %s", stop_reason, p.step,
                        self.run_dir)
        return stop_reason

    def _interrupted(self) -> None:
        """A second Ctrl-C, or one outside the training steps: save the position unless it diverged."""
        try:
            self._save_position()
        except Diverged:
            log.error("interrupted after non-finite values; the last good checkpoint is kept")
            raise KeyboardInterrupt from None
        log.warning("interrupted at step %d; continue with: genlab train --resume %s", self.progress.step, self.run_dir)

    def _begin(self) -> None:
        cfg, p = self.cfg.train, self.progress
        total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        # The uint8 training split, on the device when it fits there (batches are then gathered on it).
        self.train_images = place_images(self.data.train, self.device)
        self.augment = BatchAugment(self.cfg.data.augment)
        extras = "".join([f" in {cfg.accumulate} micro-batches" if cfg.accumulate > 1 else "",
                          f", EMA {self.ema.decay} of {', '.join(self.ema.shadows)}" if self.ema is not None else ""])
        log.info("training %s on %s: %d images, batch %d%s, %d steps per epoch, %d epochs, device %s (%s)",
                 self.cfg.method, self.data.name, len(self.data.train), self.batch_size, extras, self.steps_per_epoch,
                 cfg.epochs, self.device, self.speed.describe())
        self.writer = StatsWriter(self.run_dir, purge_step=p.step or None) if self.dist.is_main else NoWriter()
        self.bar = tqdm(total=total_steps, initial=min(p.step, total_steps), disable=self.quiet, unit="step",
                        dynamic_ncols=True, file=sys.stderr, leave=False)
        self.means.reset(p.epoch_sums, p.epoch_counts)
        self.clock.restart(p.elapsed_s)

    def fit(self) -> dict:
        self._begin()
        self.method.train()
        signals = StopSignals()
        try:
            while True:
                try:
                    stop_reason = self._run_epochs(signals)
                    break
                except Diverged as diverged:
                    if not self._recover(diverged):
                        stop_reason = "non_finite_loss"
                        break
            stop_reason = self._stop(stop_reason)
        except KeyboardInterrupt:
            self._interrupted()
            raise
        finally:
            signals.restore()
            self.bar.close()
            self.writer.close()
        if self.dist.enabled:
            self._check_agreement()
            if not self.dist.is_main:
                return {}
        return self._summary(stop_reason)

    def _summary(self, stop_reason: str) -> dict:
        cfg, p = self.cfg.train, self.progress
        summary = {
            "method": self.cfg.method,
            "processes": self.dist.world_size,
            "dataset": self.data.name,
            "steps": p.step, "images_seen": p.images_seen,
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
