"""The ``genlab`` command: train | sample | reconstruct | presets.

Bad input (a wrong path, an unknown key, a checkpoint of another model) ends with one line on
stderr naming what and where, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import genlab
from genlab.errors import GenlabError

log = logging.getLogger("genlab")

MAIN_EXAMPLES = """\
examples:
  genlab presets                                   list the shipped presets
  genlab train quickstart                          train the quickstart VAE on the embedded digits
  genlab sample runs/00000-quickstart-digits --n 64 --out grid.png
  genlab reconstruct runs/00000-quickstart-digits --n 16
"""

TRAIN_EXAMPLES = """\
examples:
  genlab train quickstart
  genlab train dcgan-digits train.epochs=5 model.latent_dim=64
  genlab train vae-ck-seed001 data.root=../shared/data/ckplus48 --dry-run
  genlab train --resume runs/00000-quickstart-digits train.epochs=60

Overrides are dotted key=value pairs read as YAML (3, 0.5, true, null, [64, 128]).
On --resume only train.epochs, train.max_steps, train.patience, train.log_every and
train.checkpoint_every may change.
"""

SAMPLE_EXAMPLES = """\
examples:
  genlab sample runs/00000-quickstart-digits --n 64 --out grid.png
  genlab sample runs/00000-quickstart-digits --n 16 --seed 100 --out more.png --checkpoint best
  genlab sample runs/00000-quickstart-digits/checkpoints/last.pt --n 1000 --out samples.npz

Image i of a sample uses seed S + i, so the first 16 of --n 64 equal --n 16 with the same seed.
"""

RECONSTRUCT_EXAMPLES = """\
examples:
  genlab reconstruct runs/00000-quickstart-digits --n 16
  genlab reconstruct runs/00000-quickstart-digits --n 8 --out recon.png --split train

Writes originals (odd rows) above their reconstructions (even rows) and prints each image's MSE.
"""

PRESETS_EXAMPLES = """\
examples:
  genlab presets
  genlab train <name> --dry-run      show a preset's full resolved configuration
"""


def _common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="genlab", description="Train, evaluate and compare deep generative image models.",
        epilog=MAIN_EXAMPLES, formatter_class=fmt)
    parser.add_argument("--version", action="version", version=f"genlab {genlab.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a preset", description="Train a model from a preset.",
                       epilog=TRAIN_EXAMPLES, formatter_class=fmt)
    p.add_argument("preset", nargs="?", help="preset name (see `genlab presets`) or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last checkpoint")
    p.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where new run directories go (default: runs)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the log")
    _common(p)

    p = sub.add_parser("sample", help="generate images from a trained run", description="Generate images from a trained run.",
                       epilog=SAMPLE_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory, or a checkpoint file")
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--out", type=Path, default=Path("samples.png"), help=".png grid or .npz array (default: samples.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default: 0)")
    p.add_argument("--checkpoint", default="last", help="last | best (default: last)")
    p.add_argument("--batch-size", type=int, default=256, help="images generated at once (default: 256)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _common(p)

    p = sub.add_parser("reconstruct", help="reconstruct held-out images (families with an encoder)",
                       description="Reconstruct held-out images with a trained model that has an encoder.",
                       epilog=RECONSTRUCT_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory, or a checkpoint file")
    p.add_argument("--n", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--out", type=Path, default=Path("reconstructions.png"), help="output grid (default: reconstructions.png)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split to take images from (default: val)")
    p.add_argument("--checkpoint", default="last", help="last | best (default: last)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _common(p)

    p = sub.add_parser("presets", help="list the shipped presets", description="List the shipped presets, one line each.",
                       epilog=PRESETS_EXAMPLES, formatter_class=fmt)
    _common(p, device=False)
    return parser


class _ConsoleHandler(logging.Handler):
    """Log lines on stderr, printed above the progress bar rather than through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def _setup_console_logging() -> None:
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in log.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.propagate = False


def _check_output(path: Path, force: bool, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise GenlabError(f"--out {path}: use a file ending in {' or '.join(suffixes)}")
    if path.exists() and not force:
        raise GenlabError(f"--out {path} exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise GenlabError(f"--out {path}: folder {path.parent} does not exist")


def cmd_train(args) -> int:
    from genlab.config import config_to_yaml, load_config
    from genlab.train.loop import resolve_device, resume_training, start_training

    overrides = list(args.overrides)
    preset = args.preset
    if preset is not None and "=" in preset:  # `genlab train --resume RUN key=value`
        overrides.insert(0, preset)
        preset = None
    if args.resume is not None:
        if preset is not None:
            raise GenlabError("give either a preset or --resume RUN_DIR, not both")
        if args.dry_run:
            from genlab.train.checkpoint import config_from_checkpoint, load_checkpoint
            from genlab.train.rundir import checkpoint_path, require_run_dir

            last = checkpoint_path(require_run_dir(args.resume))
            print(config_to_yaml(config_from_checkpoint(load_checkpoint(last), last)), end="")
            return 0
        device = resolve_device(args.device)
        resume_training(args.resume, overrides, device, quiet=args.quiet)
        return 0
    if preset is None:
        raise GenlabError("name a preset (see `genlab presets`) or --resume RUN_DIR")
    cfg = load_config(preset, overrides)
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return 0
    device = resolve_device(args.device)
    start_training(cfg, args.runs_dir, device, quiet=args.quiet)
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from genlab.train.checkpoint import build_method_from_checkpoint
    from genlab.train.loop import resolve_device
    from genlab.train.rundir import find_checkpoint, image_grid, save_grid

    if args.n < 1:
        raise GenlabError(f"--n must be at least 1, got {args.n}")
    _check_output(args.out, args.force, (".png", ".npz"))
    device = resolve_device(args.device)
    method, cfg, _ = build_method_from_checkpoint(find_checkpoint(args.run, args.checkpoint), device)
    images = method.sample(args.n, args.seed, batch_size=args.batch_size)
    if args.out.suffix.lower() == ".npz":
        np.savez_compressed(args.out, images=images.numpy(), seeds=np.arange(args.seed, args.seed + args.n))
    else:
        save_grid(image_grid(images), args.out)
    log.info("wrote %d %s samples (seeds %d..%d) to %s", args.n, cfg.method, args.seed, args.seed + args.n - 1, args.out)
    return 0


def cmd_reconstruct(args) -> int:
    from genlab.data import build_dataset, to_model_range, to_uint8
    from genlab.train.checkpoint import build_method_from_checkpoint
    from genlab.train.loop import resolve_device
    from genlab.train.rundir import find_checkpoint, pair_grid, save_grid

    if args.n < 1:
        raise GenlabError(f"--n must be at least 1, got {args.n}")
    _check_output(args.out, args.force, (".png",))
    device = resolve_device(args.device)
    path = find_checkpoint(args.run, args.checkpoint)
    method, cfg, _ = build_method_from_checkpoint(path, device)
    if not method.has_encoder:
        raise GenlabError(f"{path} is a {cfg.method!r} model, which has no encoder; reconstruct needs one (e.g. vae)")
    data = build_dataset(cfg.data)
    source = data.val if args.split == "val" and data.val is not None else data.train
    if args.split == "val" and data.val is None:
        log.warning("this run has no validation split; reconstructing training images")
    originals = source[: args.n]
    method.eval()
    recon = to_uint8(method.reconstruct(to_model_range(originals.to(device)))).cpu()
    save_grid(pair_grid(originals, recon), args.out)
    # Per-image MSE in the model's [-1, 1] range, as seed 004's table reports it.
    mse = (to_model_range(recon) - to_model_range(originals)).square().flatten(1).mean(1)
    print("image  mse([-1,1])")
    for i, value in enumerate(mse.tolist()):
        print(f"{i:5d}  {value:.5f}")
    print(f" mean  {mse.mean().item():.5f}")
    log.info("wrote %d reconstructions to %s", len(originals), args.out)
    return 0


def cmd_presets(args) -> int:
    from genlab.config import load_preset, preset_names

    names = preset_names()
    width = max(map(len, names))
    for name in names:
        raw = load_preset(name)
        print(f"{name:<{width}}  {raw.get('method', '?'):<6} {raw.get('description', '')}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct, "presets": cmd_presets}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _setup_console_logging()
    debug = args.debug
    try:
        return COMMANDS[args.command](args)
    except GenlabError as e:
        if debug:
            raise
        print(f"genlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("genlab: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk, a folder without permission: name the file, no traceback
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"genlab: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
