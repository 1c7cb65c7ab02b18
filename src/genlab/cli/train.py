"""`genlab train` (also under torchrun, and `--gpus N` which launches it) and `genlab presets`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from genlab import api, distributed
from genlab.cli.common import COMMANDS, FORMAT, add_common, positive
from genlab.config import config_to_yaml, load_preset, preset_names
from genlab.errors import GenlabError
from genlab.resolve import load_config
from genlab.train import session

log = logging.getLogger("genlab")

TRAIN_EXAMPLES = """\
examples:
  genlab train quickstart
  genlab train dcgan-digits train.epochs=5 model.latent_dim=64 train.ema_decay=0.999
  genlab train vae-ck-seed001 data.root=../shared/data/ckplus48 --dry-run
  genlab train --resume runs/00000-quickstart-digits train.epochs=60
  genlab train ddpm-cifar10 --run-dir /scratch/$SLURM_JOB_NAME data.root=../shared/data/cifar10-jpeg
  genlab train ldm-celeba64 data.root=../shared/data/celeba init.from_run=runs/00002-vae-celeba64-seed002-celeba

Overrides are dotted key=value pairs read as YAML (3, 0.5, true, null, [64, 128]).
On --resume only how long a run goes on, how it reports, how fast it runs and what it does on
divergence may change (train.epochs, train.max_steps, train.max_minutes, train.patience,
train.on_divergence, train.rollback_lr_factor, train.max_rollbacks, train.log_every,
train.checkpoint_every, train.grid_every, train.num_samples, train.report, train.compile,
train.compile_mode, train.channels_last).
SIGTERM and Ctrl-C finish the step, save and exit with 143 and 130; --resume continues.
"""

PRESETS_EXAMPLES = """\
examples:
  genlab presets
  genlab train <name> --dry-run      show a preset's full resolved configuration
"""



def add_parsers(sub) -> None:
    fmt = FORMAT
    p = sub.add_parser("train", help=COMMANDS["train"][1], description="Train a model from a preset.",
                       epilog=TRAIN_EXAMPLES, formatter_class=fmt)
    p.add_argument("preset", nargs="?", help="preset name (see `genlab presets`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where new run directories go (default: runs)")
    p.add_argument("--run-dir", type=Path, metavar="DIR",
                   help="a named run: start it in DIR, or resume DIR when it holds this config's run (re-queued jobs)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the log")
    p.add_argument("--gpus", type=int, default=1, help="train on N GPUs of this machine with DDP (launches torchrun)")
    add_common(p)

    p = sub.add_parser("presets", help=COMMANDS["presets"][1], description="List the shipped presets, one line each.",
                       epilog=PRESETS_EXAMPLES, formatter_class=fmt)
    add_common(p, device=False)


def _train_device(args):
    """The device and distributed role: torchrun's environment, when present, decides both."""
    device = distributed.resolve_device(args.device)
    info = distributed.from_environment()
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device, info


def _launch_torchrun(args, argv: list[str]) -> int:
    """`genlab train --gpus N ...` re-runs the same command under torchrun with N processes."""
    distributed.check_gpus(args.gpus)
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            rest.append(a)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.gpus}",
               "-m", "genlab", *rest]
    log.info("launching %s", " ".join(command))
    return subprocess.call(command)


def cmd_train(args) -> int:
    positive("--gpus", args.gpus)
    if args.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args, args.argv)

    overrides = list(args.overrides)
    preset = args.preset
    if preset is not None and "=" in preset:  # `genlab train --resume RUN key=value`
        overrides.insert(0, preset)
        preset = None
    if args.resume is not None:
        if preset is not None:
            raise GenlabError("give either a preset or --resume RUN_DIR, not both")
        if args.dry_run:
            print(config_to_yaml(session.resumed_config(args.resume, overrides)), end="")
            return 0
        device, info = _train_device(args)
        return _finish(info, api.resume(args.resume, overrides, device, quiet=args.quiet, info=info))
    if preset is None:
        raise GenlabError("name a preset (see `genlab presets`) or --resume RUN_DIR")
    cfg = load_config(preset, overrides)
    if args.dry_run:
        if args.run_dir is not None:  # a named run that holds this config's run continues it
            action, changed = session.named_run_plan(cfg, args.run_dir)
            cfg = session.resumed_config(args.run_dir, changed) if action == "resume" else cfg
        print(config_to_yaml(cfg), end="")
        return 0
    device, info = _train_device(args)
    return _finish(info, api.train(cfg, args.runs_dir, device, quiet=args.quiet, info=info, run_dir=args.run_dir))


def _finish(info, run_dir: Path) -> int:
    """The exit code of a finished run; under torchrun every process leaves the group together."""
    distributed.shutdown(info)
    return session.exit_code(run_dir)


def cmd_presets(args) -> int:
    names = preset_names()
    width = max(map(len, names))
    raws = {name: load_preset(name) for name in names}
    method_width = max(len(str(raw.get("method", "?"))) for raw in raws.values())
    for name, raw in raws.items():
        print(f"{name:<{width}}  {raw.get('method', '?'):<{method_width}}  {raw.get('description', '')}")
    return 0

