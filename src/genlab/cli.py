"""The ``genlab`` command: train | sample | reconstruct | eval | analyze | summary | report | sweep |
data | detect | presets.

This module parses arguments and prints; the work is done by the library (``genlab.train``,
``genlab.metrics``, ``genlab.data``, ``genlab.analysis``). Choices come from the registries that
define them, imported only for the command that needs them, so `genlab --help` stays instant.

Bad input (a wrong path, an unknown key, a checkpoint of another model) ends with one line on
stderr naming what and where, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import os
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

SAMPLE_EXAMPLES = """\
examples:
  genlab sample runs/00000-quickstart-digits --n 64 --out grid.png
  genlab sample runs/00000-quickstart-digits --n 16 --seed 100 --out more.png --checkpoint best
  genlab sample runs/00000-quickstart-digits/checkpoints/last.pt --n 1000 --out samples.npz
  genlab sample runs/00001-dcgan-digits-digits --n 64 --out cool.png sampler.temperature=0.7

Image i of a sample uses seed S + i, so the first 16 of --n 64 equal --n 16 with the same seed.
Runs trained with EMA sample with the averaged weights; --raw-weights takes the last iterate.
"""

RECONSTRUCT_EXAMPLES = """\
examples:
  genlab reconstruct runs/00000-quickstart-digits --n 16
  genlab reconstruct runs/00000-quickstart-digits --n 8 --out recon.png --split test --random --seed 3

Writes originals (odd rows) above their reconstructions (even rows) and prints each image's MSE,
PSNR and SSIM in [0,1] units (pixels / 255), the units of `genlab eval --metrics recon`.
"""

DATA_EXAMPLES = """\
examples:
  genlab data info celeba --root ../shared/data/celeba
  genlab data prepare celeba --root ../shared/data/celeba size=64 crop=148
  genlab data prepare folder --root ../shared/data/ckplus48 size=64 channels=1 --strict
  genlab data prepare vae-celeba64-seed002 --root ../shared/data/celeba
  genlab data download cifar10 --root ~/data

SOURCE is a data source (digits, folder, celeba, cifar10) or a preset, whose data section is used.
key=value sets data keys (size=64 or data.size=64); `genlab train` prepares what it needs itself.
"""

EVAL_EXAMPLES = """\
examples:
  genlab eval runs/00000-quickstart-digits --metrics swd,msssim,nn,recon,bpd --n 2000
  genlab eval runs/00003-dcgan-celeba64-celeba --metrics fid,kid,is,pr --inception-weights weights-inception-2015-12-05-6726825d.pth
  genlab eval --real celeba --root ../shared/data/celeba --fake samples.npz --metrics swd,msssim
  genlab eval runs/00000-quickstart-digits --metrics swd --n 1000 --json > result.json
  genlab eval runs/00004-ddpm-cifar10-cifar10 --metrics swd,bpd sampler.steps=100 --bound-timesteps 100

Results are added to the run's metrics.json (the latest per metric) and appended to its
stats.jsonl (every evaluation), each with its protocol. --json prints only JSON on stdout.
"""

ANALYZE_EXAMPLES = """\
examples:
  genlab analyze timeline runs/00001-dcgan-ck-seed001-ckplus48 --epochs 200,1200,2000
  genlab analyze curves runs/00000-quickstart-digits --smoothing 0.8
  genlab analyze interpolate runs/00001-dcgan-digits-digits --seeds 3,7 --steps 10
  genlab analyze interpolate runs/00000-quickstart-digits --images 0,5 --split val
  genlab analyze variations runs/00001-dcgan-digits-digits --seed 4 --scale 0.3
  genlab analyze traversal runs/00000-quickstart-digits --dims 8

Each writes RUN_DIR/analysis/NAME.png and NAME.json (the numbers and settings).
"""

REPORT_EXAMPLES = """\
examples:
  genlab report runs/00000-quickstart-digits --out quickstart.html
  genlab report runs/00003-vae-celeba64-seed002-celeba runs/00004-dcgan-celeba64-celeba --out vae-vs-gan.html
  genlab report sweeps/vae-kl-seed004 --out kl-sweep.html
  genlab report detect-matrix --out detectors.html

The page is one file: images are embedded, nothing is fetched; open it in any browser.
"""

SUMMARY_EXAMPLES = """\
examples:
  genlab summary dcgan-celeba64
  genlab summary vae-celeba64-seed002 data.size=32 model.widths=[64,128,256]
  genlab summary runs/00000-quickstart-digits --json
"""

SWEEP_EXAMPLES = """\
examples:
  genlab sweep vae-ck-seed001 data.root=../shared/data/ckplus48 --grid model.kl_weight=0.001,0.01,0.1 --seeds 0,1,2 --parallel 2
  genlab sweep vae-cifar10-seed003 data.root=../shared/data/cifar10-jpeg --grid model.latent_dim=10,128,512,2048
  genlab sweep vae-kl-seed001 data.root=../shared/data/ckplus48          a shipped sweep (genlab sweep --list)
  genlab sweep --resume sweeps/vae-kl-seed001 --parallel 2
  genlab sweep dcgan-celeba64 data.root=... --grid model.latent_dim=10,100,2000 --runner ray --gpus-per-run 1

Each run is an ordinary run directory (SWEEP/runs/POINT-seedK); after training it is evaluated
(--metrics, default swd). The sweep writes sweep.json, results.json, sweep.png and report.html.
"""

DETECT_EXAMPLES = """\
examples:
  genlab detect train --real celeba --root ../shared/data/celeba --fake runs/00003-dcgan-celeba32 train.epochs=3
  genlab detect train --real celeba --root ../shared/data/celeba --fake runs/A runs/B samples.npz model.arch=resnet18
  genlab detect eval runs/00007-detector-celeba --fake runs/00003-dcgan-celeba32 runs/00004-vae-celeba32 --n 1000
  genlab detect matrix --real celeba --root ../shared/data/celeba --fake runs/A runs/B runs/C --out detect-matrix
  genlab detect loop --real celeba --root ../shared/data/celeba --fake runs/00003-dcgan-celeba32 --rounds 3 --out evade

A detector is an ordinary run of the `detector` family: `genlab train --resume` continues it.
Fakes are drawn by seed (training 0.., validation 500000.., evaluation 1000000..); an .npz
from `genlab sample --out F.npz --seed S` works as a fake when it holds the seeds needed.
data.size and data.channels follow the fakes unless set; key=value sets detector config keys.
"""

PRESETS_EXAMPLES = """\
examples:
  genlab presets
  genlab train <name> --dry-run      show a preset's full resolved configuration
"""

CHECKPOINTS = ("last", "best")


def _common(parser: argparse.ArgumentParser, device: bool = True) -> None:
    if device:
        parser.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda (default: auto)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def _metrics_help() -> str:
    from genlab.metrics.table import ALL_METRICS, METRICS

    return "; ".join(f"{m} ({METRICS.get(m).summary})" for m in ALL_METRICS)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; registries that only one command needs are imported when that is ``command``."""
    from genlab.metrics.settings import EvalSettings

    defaults = EvalSettings()
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
    p.add_argument("--run-dir", type=Path, metavar="DIR",
                   help="a named run: start it in DIR, or resume DIR when it holds this config's run (re-queued jobs)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar; only the log")
    p.add_argument("--gpus", type=int, default=1, help="train on N GPUs of this machine with DDP (launches torchrun)")
    _common(p)

    p = sub.add_parser("sample", help="generate images from a trained run", description="Generate images from a trained run.",
                       epilog=SAMPLE_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory, or a checkpoint file")
    p.add_argument("overrides", nargs="*", metavar="sampler.key=value", help="sampler settings (default: the run's)")
    p.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
    p.add_argument("--out", default="samples.png",  # a str: Path would drop the trailing / of a folder
                   help=".png grid, .npz array, or a folder (DIR/) of numbered PNGs, one per seed (default: samples.png)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (default: 0)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="which checkpoint of a run (default: last)")
    p.add_argument("--raw-weights", "--no-ema", action="store_true", help="the last iterate instead of the EMA weights")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images generated at once")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _common(p)

    p = sub.add_parser("reconstruct", help="reconstruct held-out images (families with an encoder)",
                       description="Reconstruct held-out images with a trained model that has an encoder.",
                       epilog=RECONSTRUCT_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="run directory, or a checkpoint file")
    p.add_argument("--n", type=int, default=16, help="number of images (default: 16)")
    p.add_argument("--out", type=Path, default=None,
                   help="also write the grid here (always: RUN_DIR/analysis/reconstructions-SPLIT.png and .json)")
    p.add_argument("--split", choices=("val", "test", "train"), default="val", help="which split (default: val)")
    p.add_argument("--random", action="store_true", help="a seeded random choice of images instead of the first --n")
    p.add_argument("--seed", type=int, default=0, help="seed of --random (default: 0)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="which checkpoint of a run (default: last)")
    p.add_argument("--raw-weights", "--no-ema", action="store_true", help="the last iterate instead of the EMA weights")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _common(p)

    extractors = None
    if command == "eval":
        from genlab.metrics.features import EXTRACTORS

        extractors = EXTRACTORS.names()
    p = sub.add_parser("eval", help="evaluate a run (or a folder of images) under one protocol",
                       description="Evaluate a trained run, or any images against a data set, under one protocol.",
                       epilog=EVAL_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, nargs="?", metavar="RUN_DIR", help="run directory or checkpoint file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data keys for --real (size=64 ...); sampler.* keys for a run (sampler.steps=100)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated (default: all the run's family can give, except ppl): {_metrics_help()}")
    p.add_argument("--n", type=int, default=defaults.n, help=f"generated images (default: {defaults.n}, the FID protocol)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="reference split (default train) and held-out split for recon/bpd (default test, else val)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="which checkpoint of a run (default: last)")
    p.add_argument("--raw-weights", "--no-ema", action="store_true", help="the last iterate instead of the EMA weights")
    p.add_argument("--real", metavar="SOURCE", help="score --fake images against this data source or preset")
    p.add_argument("--root", help="data root for --real")
    p.add_argument("--fake", type=Path, metavar="DIR_OR_NPZ", help="images to score: a folder or an .npz with 'images'")
    p.add_argument("--extractor", default=defaults.extractor, choices=extractors,
                   help=f"feature extractor of fid/kid/is/pr (default: {defaults.extractor})")
    p.add_argument("--inception-weights", metavar="FILE", help="a local copy of the Inception weights")
    p.add_argument("--iw-samples", type=int, default=None,
                   help="k of a VAE's importance-weighted bound for bpd (default: the run's model.iw_samples)")
    p.add_argument("--bound-timesteps", type=int, default=None,
                   help="terms of a DDPM's bound for bpd: 0 = all T, k = a stratified estimate (default: the run's)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"first sample seed (default {defaults.seed})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    _common(p)

    p = sub.add_parser("data", help="inspect, prepare and download data sets",
                       description="Inspect, prepare (decode once into the cache) and download data sets.",
                       epilog=DATA_EXAMPLES, formatter_class=fmt)
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for action, text in (("info", "counts per split, image size and mode, cache state"),
                         ("prepare", "decode every image once into the cache")):
        q = data_sub.add_parser(action, help=text, description=text, epilog=DATA_EXAMPLES, formatter_class=fmt)
        q.add_argument("source", metavar="SOURCE", help="digits | folder | celeba | cifar10, or a preset name")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="data keys, e.g. size=64 crop=148")
        q.add_argument("--root", help="the data set's folder (sets data.root)")
        q.add_argument("--strict", action="store_true", help="unusable images are an error instead of skipped")
        if action == "prepare":
            q.add_argument("--force", action="store_true", help="rebuild the cache even if it exists")
        _common(q, device=False)
    from genlab.data.download import DOWNLOADS

    q = data_sub.add_parser("download", help="download a data set from its official source",
                            description="Download a data set from its official source and verify checksums.",
                            epilog=DATA_EXAMPLES, formatter_class=fmt)
    q.add_argument("dataset", choices=sorted(DOWNLOADS))
    q.add_argument("--root", type=Path, required=True, help="folder to download into")
    _common(q, device=False)

    p = sub.add_parser("analyze", help="analyses of a run: timeline, curves, interpolate, variations, traversal",
                       description="Analyses of a trained run; each writes RUN_DIR/analysis/NAME.png and NAME.json.",
                       epilog=ANALYZE_EXAMPLES, formatter_class=fmt)
    analyze_sub = p.add_subparsers(dest="analyze_command", metavar="ANALYSIS", required=True)
    texts = {"timeline": "chosen epochs' sample grids side by side (from the grids the run wrote)",
             "curves": "every logged scalar over steps, raw and smoothed, with validation points",
             "interpolate": "a path between two seeds (slerp) or two real images (linear)",
             "variations": "one sample and small latent perturbations of it",
             "traversal": "one row per latent dimension, highest mean KL first (vae)"}
    for action, text in texts.items():
        q = analyze_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".",
                                   epilog=ANALYZE_EXAMPLES, formatter_class=fmt)
        q.add_argument("run", type=Path, metavar="RUN_DIR")
        if action == "timeline":
            q.add_argument("--epochs", default=None, help="comma-separated epochs (default: up to 6, evenly spread)")
            q.add_argument("--kind", choices=("samples", "reconstructions"), default="samples")
        if action == "curves":
            q.add_argument("--smoothing", type=float, default=0.6, help="TensorBoard-style EMA weight (default 0.6)")
        if action == "interpolate":
            q.add_argument("--seeds", default=None, metavar="A,B", help="two seeds (prior latents, slerp)")
            q.add_argument("--images", default=None, metavar="I,J", help="two real images of --split (encoded, linear)")
            q.add_argument("--split", choices=("train", "val", "test"), default=None)
            q.add_argument("--steps", type=int, default=10)
        if action == "variations":
            q.add_argument("--seed", type=int, default=0)
            q.add_argument("--n", type=int, default=15, help="variations (default 15)")
            q.add_argument("--scale", type=float, default=0.3, help="std of the latent perturbation (default 0.3)")
        if action == "traversal":
            q.add_argument("--dims", type=int, default=10, help="rows: the dimensions with the highest mean KL")
            q.add_argument("--image", type=int, default=0, help="index of the held-out image whose code is varied")
            q.add_argument("--split", choices=("train", "val", "test"), default=None)
            q.add_argument("--span", type=float, default=3.0, help="values from -span to +span (default 3)")
            q.add_argument("--steps", type=int, default=9)
        if action in ("interpolate", "variations", "traversal"):
            q.add_argument("--checkpoint", choices=CHECKPOINTS, default="last")
        _common(q, device=action in ("interpolate", "variations", "traversal"))

    p = sub.add_parser("summary", help="layers, output shapes, parameters and multiply-adds of a preset's or run's networks",
                       description="Each network's layers, output shapes, parameters and multiply-adds per image (torchinfo).",
                       epilog=SUMMARY_EXAMPLES, formatter_class=fmt)
    p.add_argument("target", metavar="PRESET|RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (a preset only)")
    p.add_argument("--json", action="store_true", help="print only the numbers, as JSON")
    _common(p)

    p = sub.add_parser("report", help="one self-contained HTML page for runs, sweeps and detector matrices",
                       description="Write one self-contained HTML report (images embedded) for runs side by side, "
                                   "sweeps and detector matrices.", epilog=REPORT_EXAMPLES, formatter_class=fmt)
    p.add_argument("paths", nargs="+", type=Path, metavar="RUN_DIR|SWEEP_DIR|MATRIX_DIR")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="the HTML file (default: report.html)")
    p.add_argument("--title", default=None)
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    _common(p, device=False)

    p = sub.add_parser("sweep", help="a grid of runs over config keys and seeds, with a sweep report",
                       description="Run a grid of ordinary runs under one sweep folder, then chart each metric against "
                                   "each swept key with the spread over seeds.", epilog=SWEEP_EXAMPLES, formatter_class=fmt)
    p.add_argument("preset", nargs="?", help="a preset, or a shipped sweep (see the list below)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a swept key and its values (repeatable)")
    p.add_argument("--seeds", default=None, help="comma-separated training seeds (default: 0, or the shipped sweep's)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (local runner; default 1)")
    p.add_argument("--out", type=Path, default=None, help="the sweep folder (default: sweeps/NAME)")
    p.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="continue a sweep: keep finished runs, resume the rest")
    p.add_argument("--metrics", default=None, help="evaluated after each run (default: swd, weight-free)")
    p.add_argument("--eval-n", type=int, default=None, help="samples per evaluation (default 2000)")
    p.add_argument("--runner", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", default="auto", help="the Ray cluster ('auto': the one this machine is in; 'local': "
                                                         "start a single-node instance here)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="Ray: GPUs each run requests")
    p.add_argument("--cpus-per-run", type=float, default=1, help="Ray: CPUs each run requests")
    p.add_argument("--list", action="store_true", help="list the shipped sweeps")
    _common(p)

    p = sub.add_parser("detect", help="deepfake-detector benchmark: train, evaluate, cross-generator matrix, adversarial loop",
                       description="Train real-vs-generated detectors on genlab's generators and benchmark them.",
                       epilog=DETECT_EXAMPLES, formatter_class=fmt)
    detect_sub = p.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    texts = {"train": "train a detector on real images against generator runs' samples",
             "eval": "score a detector run per generator: accuracy, AUC, TPR at 1% FPR, laundered AUCs",
             "matrix": "a detector per generator, each tested on every generator: the AUC matrix",
             "loop": "alternate detector training and generator fine-tuning against the frozen detector"}
    for action, text in texts.items():
        q = detect_sub.add_parser(action, help=text.replace("%", "%%"), description=text[0].upper() + text[1:] + ".",
                                  epilog=DETECT_EXAMPLES, formatter_class=fmt)
        if action == "eval":
            q.add_argument("detector", type=Path, metavar="DETECTOR_RUN", help="a detector run directory")
        q.add_argument("overrides", nargs="*", metavar="key=value", help="detector config keys (data.*, model.*, train.*)")
        q.add_argument("--real", metavar="SOURCE", required=action != "eval",
                       help="real images: a data source (celeba, cifar10, folder, digits) or a preset's data"
                       + (" (default: the detector's own data)" if action == "eval" else ""))
        q.add_argument("--root", help="data root for --real")
        q.add_argument("--fake", nargs="+", required=True, metavar="RUN_DIR_OR_NPZ",
                       help="generator run directories or .npz files" + (" (one for loop)" if action == "loop" else ""))
        if action in ("eval", "matrix", "loop"):
            q.add_argument("--n", type=int, default=None,
                           help="held-out real images, and fresh fakes per generator (default: the split's, at most 1000)")
        if action == "eval":
            q.add_argument("--split", choices=("val", "test"), default=None, help="held-out split (default: test, else val)")
            q.add_argument("--seed", type=int, default=None, help="first seed of the fresh fakes (default: 1000000)")
            q.add_argument("--no-launder", action="store_true", help="skip the JPEG / resize / blur columns")
            q.add_argument("--json", action="store_true", help="print only JSON on stdout")
            q.add_argument("--out", type=Path, help="also write the JSON here")
        if action == "train":
            q.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the run directory goes (default: runs)")
            q.add_argument("--run-dir", type=Path, metavar="DIR", help="a named run directory (resumed when it holds this run)")
        if action in ("matrix", "loop"):
            q.add_argument("--out", type=Path, required=True, metavar="DIR",
                           help="folder for the runs and the results (a re-run keeps finished runs)")
        if action == "loop":
            q.add_argument("--rounds", type=int, default=3, help="detector/generator rounds (default: 3)")
            q.add_argument("--weight", type=float, default=0.1, help="weight of the detector term in the generator's loss")
            q.add_argument("--generator-epochs", type=int, default=1, help="generator fine-tuning epochs per round")
            q.add_argument("--swd-n", type=int, default=2000, help="samples for the generator's SWD per round")
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        _common(q)

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
        if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks; others only warn
            handler.setLevel(logging.WARNING)
        log.addHandler(handler)
    log.propagate = False


def _check_output(path: Path, force: bool, suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise GenlabError(f"--out {path}: use a file ending in {' or '.join(suffixes)}")
    if path.exists() and not force:
        raise GenlabError(f"--out {path} exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise GenlabError(f"--out {path}: folder {path.parent} does not exist")


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise GenlabError(f"{name} must be at least 1, got {value}")


def _train_device(args):
    """The device and distributed role: torchrun's environment, when present, decides both."""
    import torch

    from genlab.train import distributed
    from genlab.train.loop import resolve_device

    device = resolve_device(args.device)
    info = distributed.from_environment()
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device, info


def _launch_torchrun(args, argv: list[str]) -> int:
    """`genlab train --gpus N ...` re-runs the same command under torchrun with N processes."""
    import subprocess

    from genlab.train.distributed import check_gpus

    check_gpus(args.gpus)
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


def _load_model(args, device):
    """The model a RUN_DIR or checkpoint holds, with the sampler overrides given on the line."""
    from genlab.train.checkpoint import build_method_from_checkpoint
    from genlab.train.rundir import find_checkpoint

    path = find_checkpoint(args.run, args.checkpoint, inference=not args.raw_weights)
    method, cfg, payload = build_method_from_checkpoint(path, device, raw_weights=args.raw_weights)
    return path, method, cfg, payload


def cmd_train(args) -> int:
    from genlab.config import config_to_yaml
    from genlab.resolve import load_config
    from genlab.train.loop import resume_training, resumed_config, start_training

    _positive("--gpus", args.gpus)
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
            print(config_to_yaml(resumed_config(args.resume, overrides)), end="")
            return 0
        device, info = _train_device(args)
        return _finish(info, resume_training(args.resume, overrides, device, quiet=args.quiet, info=info))
    if preset is None:
        raise GenlabError("name a preset (see `genlab presets`) or --resume RUN_DIR")
    cfg = load_config(preset, overrides)
    if args.run_dir is not None:
        from genlab.train.loop import named_run_plan

        action, changed = named_run_plan(cfg, args.run_dir)
        if action == "resume":
            if args.dry_run:
                print(config_to_yaml(resumed_config(args.run_dir, changed)), end="")
                return 0
            device, info = _train_device(args)
            return _finish(info, resume_training(args.run_dir, changed, device, quiet=args.quiet, info=info))
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return 0
    device, info = _train_device(args)
    return _finish(info, start_training(cfg, args.runs_dir, device, quiet=args.quiet, info=info, run_dir=args.run_dir))


def _finish(info, run_dir) -> int:
    """The exit code of a finished run; under torchrun every process leaves the group together."""
    from genlab.train.distributed import shutdown
    from genlab.train.loop import exit_code

    shutdown(info)
    return exit_code(run_dir)


def cmd_sample(args) -> int:
    import numpy as np

    from genlab.resolve import with_sampler_overrides
    from genlab.samplers import describe
    from genlab.train.loop import resolve_device
    from genlab.train.rundir import image_grid, save_grid

    _positive("--n", args.n)
    _positive("--batch-size", args.batch_size)
    folder = args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
    args.out = Path(args.out)
    if folder:
        taken = sorted(args.out.glob("*.png")) if args.out.is_dir() else []
        if taken and not args.force:
            raise GenlabError(f"--out {args.out} already holds {len(taken)} PNG files; pass --force to overwrite them")
        if not args.out.parent.exists():
            raise GenlabError(f"--out {args.out}: folder {args.out.parent} does not exist")
    else:
        _check_output(args.out, args.force, (".png", ".npz"))
    device = resolve_device(args.device)
    path, method, cfg, payload = _load_model(args, device)
    if args.overrides:
        method.sampling = with_sampler_overrides(cfg, args.overrides).sampler
    images = method.sample(args.n, args.seed, batch_size=args.batch_size)
    if folder:  # seed 004's test output: one PNG per image, named by its seed
        from torchvision.utils import save_image

        from genlab.io import atomic_write

        args.out.mkdir(exist_ok=True)
        for i, image in enumerate(images):
            atomic_write(args.out / f"{args.seed + i:06d}.png",
                         lambda tmp, image=image: save_image(image.float() / 255, tmp, format="png"), "image")
    elif args.out.suffix.lower() == ".npz":
        np.savez_compressed(args.out, images=images.numpy(), seeds=np.arange(args.seed, args.seed + args.n))
    else:
        save_grid(image_grid(images), args.out)
    log.info("wrote %d %s samples (seeds %d..%d, sampler %s, %s weights) to %s", args.n, cfg.method, args.seed,
             args.seed + args.n - 1, describe(method.sampling), payload["weights_used"], args.out)
    return 0


def cmd_reconstruct(args) -> int:
    from genlab.analysis import commands
    from genlab.analysis.reconstruct import UNITS
    from genlab.train.loop import resolve_device

    _positive("--n", args.n)
    if args.out is not None:
        _check_output(args.out, args.force, (".png",))
    elif not args.run.is_dir():
        raise GenlabError(f"{args.run} is a checkpoint file: give --out for the grid (a run directory keeps it in analysis/)")
    device = resolve_device(args.device)
    written, m = commands.reconstructions(args.run, device, args.n, args.split, args.seed if args.random else None,
                                          args.checkpoint, args.raw_weights, args.out)
    print(f"{args.split} image    mse        psnr (dB)  ssim     [{UNITS}]")
    for row, i in enumerate(m["images"]):
        print(f"{i:9d}  {m['mse'][row]:.6f}  {m['psnr'][row]:9.3f}  {m['ssim'][row]:.4f}")
    print(f"     mean  {m['mean']['mse']:.6f}  {m['mean']['psnr']:9.3f}  {m['mean']['ssim']:.4f}")
    log.info("wrote %d reconstructions to %s", len(m["images"]), " and ".join(str(p) for p in (written, args.out) if p))
    return 0


def _data_config(args):
    """DataConfig from SOURCE (a source or a preset), --root, --strict and data key=value overrides."""
    from genlab.config import apply_overrides, load_preset
    from genlab.data import SOURCES
    from genlab.resolve import resolve_config

    if args.source in SOURCES:
        raw = {"data": {"source": args.source}}
    else:
        raw = load_preset(args.source)
        raw = {"data": dict(raw.get("data") or {})}
    overrides = [o if o.startswith("data.") else f"data.{o}" for o in args.overrides]
    if args.root is not None:
        overrides.append(f"data.root={args.root}")
    if args.strict:
        overrides.append("data.strict=true")
    return resolve_config(apply_overrides(raw, overrides)).data


def cmd_data(args) -> int:
    if args.data_command == "download":
        from genlab.data.download import DOWNLOADS

        path = DOWNLOADS[args.dataset](args.root.expanduser())
        print(f"{args.dataset} is ready in {path}")
        return 0
    cfg = _data_config(args)
    if args.data_command == "prepare":
        from genlab.data import prepare
        from genlab.data.cache import read_meta

        path = prepare(cfg, force=args.force)
        meta = read_meta(path)
        counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
        print(f"{meta['name']}: {counts}; {len(meta['skipped'])} skipped; cache {path}")
        return 0
    from genlab.data.inspect import format_info, inspect_source

    print(format_info(inspect_source(cfg)))
    return 0


def cmd_eval(args) -> int:
    import json

    from genlab.data import build_dataset
    from genlab.metrics.evaluate import Evaluator
    from genlab.metrics.settings import EvalSettings
    from genlab.metrics.table import SAMPLE_METRICS, default_metrics, parse_metrics
    from genlab.train.loop import resolve_device

    _positive("--n", args.n)
    _positive("--batch-size", args.batch_size)
    device = resolve_device(args.device)
    settings = EvalSettings(n=args.n, split=args.split, extractor=args.extractor, inception_weights=args.inception_weights,
                            batch_size=args.batch_size, seed=args.seed)
    if args.run is not None and "=" in str(args.run) and not args.run.exists():  # `--real digits size=32`
        args.overrides, args.run = [str(args.run)] + list(args.overrides), None
    if args.real is not None or args.fake is not None:
        from genlab.metrics.inputs import load_images

        if args.real is None or args.fake is None or args.run is not None:
            raise GenlabError("scoring images needs both --real SOURCE and --fake DIR_OR_NPZ, and no RUN_DIR")
        args.source, args.strict = args.real, False
        data_cfg = _data_config(args)
        metrics = parse_metrics(args.metrics or list(SAMPLE_METRICS))
        model_only = [m for m in metrics if m not in SAMPLE_METRICS]
        if model_only:
            raise GenlabError(f"{', '.join(model_only)} need a model; give a RUN_DIR instead of --fake")
        data = build_dataset(data_cfg)
        fake = load_images(args.fake, data_cfg.channels, data_cfg.size)
        results = Evaluator(data, data_cfg, settings, device).score_images(fake, metrics, f"{len(fake)} images from {args.fake}")
    else:
        from genlab.train.checkpoint import weights_description
        from genlab.train.rundir import record_evaluation

        if args.run is None:
            raise GenlabError("give a RUN_DIR, or --real SOURCE --fake DIR_OR_NPZ")
        wrong = [o for o in args.overrides if not o.startswith("sampler.")]
        if wrong:
            raise GenlabError(f"unexpected {' '.join(wrong)}: with a RUN_DIR only sampler.* keys may be given "
                              "(data keys go with --real)")
        path, method, cfg, payload = _load_model(args, device)
        if args.overrides:
            from genlab.resolve import with_sampler_overrides

            method.sampling = with_sampler_overrides(cfg, args.overrides).sampler
        if args.bound_timesteps is not None:
            if not hasattr(cfg.model, "bound_timesteps"):
                raise GenlabError(f"--bound-timesteps: method {cfg.method!r} has no diffusion bound (model.bound_timesteps)")
            if not 0 <= args.bound_timesteps <= cfg.model.timesteps:
                raise GenlabError(f"--bound-timesteps must be in 0..{cfg.model.timesteps} (0 = all), got {args.bound_timesteps}")
            method.cfg.bound_timesteps = args.bound_timesteps
        if args.iw_samples is not None:
            if not hasattr(cfg.model, "iw_samples"):
                raise GenlabError(f"--iw-samples: method {cfg.method!r} has no importance-weighted bound (model.iw_samples)")
            _positive("--iw-samples", args.iw_samples)
            cfg.model.iw_samples = args.iw_samples
        metrics = parse_metrics(args.metrics) if args.metrics else default_metrics(type(method))
        data = build_dataset(cfg.data)
        step = payload["progress"]["step"]
        label = f"{cfg.method} {path.name} at step {step}, {weights_description(payload)}"
        results, _ = Evaluator(data, cfg.data, settings, device).score_method(method, metrics, label)
        for r in results.values():
            r.update({"checkpoint": path.name, "step": step})
        if args.run.is_dir():
            record_evaluation(args.run, results, step, path.name, weights_description(payload))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            extra = f" ± {r['std']:.4g}" if "std" in r else ""
            extra += f" (real: {r['real']:.4g})" if "real" in r else ""
            print(f"{name:<10} {r['value']:.6g}{extra}\n           [{r['protocol']}]")
    return 0


def cmd_analyze(args) -> int:
    from genlab.analysis import commands

    def pair(text, name):
        try:
            a, b = (int(v) for v in text.split(","))
        except ValueError:
            raise GenlabError(f"{name} takes two comma-separated integers, got {text!r}") from None
        return a, b

    action = args.analyze_command
    if action == "timeline":
        epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
        path, numbers = commands.timeline(args.run, epochs, args.kind)
        print(f"epochs {', '.join(map(str, numbers['epochs']))}")
    elif action == "curves":
        path, numbers = commands.curves(args.run, args.smoothing)
        for name, runs in numbers["quantities"].items():
            (values,) = runs.values()
            shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "steps")
            print(f"{name:<24} {shown}")
    else:
        from genlab.train.loop import resolve_device

        device = resolve_device(args.device)
        if action == "interpolate":
            path, numbers = commands.interpolation(args.run, device, pair(args.seeds, "--seeds") if args.seeds else None,
                                                   pair(args.images, "--images") if args.images else None, args.split,
                                                   args.steps, args.checkpoint)
        elif action == "variations":
            path, numbers = commands.variations(args.run, device, args.seed, args.n, args.scale, args.checkpoint)
            print(f"mean RMS pixel distance from the sample (0-255): {numbers['mean_rms_pixel_distance_0_255']}")
        else:
            path, numbers = commands.traversal(args.run, device, args.dims, args.image, args.split, args.span,
                                               args.steps, checkpoint=args.checkpoint)
            print("rows (dimension: mean KL, nats): " + ", ".join(
                f"{d}: {k:.3g}" for d, k in zip(numbers["rows_dimensions"], numbers["rows_mean_kl_nats"])))
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def cmd_summary(args) -> int:
    import json

    from genlab.analysis import commands
    from genlab.train.loop import resolve_device

    text, numbers, written = commands.summary(args.target, resolve_device(args.device), args.overrides)
    if args.json:
        print(json.dumps(numbers, indent=2))
        return 0
    print(text)
    for name, n in numbers["networks"].items():
        print(f"{name}: {n['parameters']:,} parameters, {n['mult_adds_per_image']:,} multiply-adds per image")
    if written:
        log.info("wrote %s", written)
    return 0


def cmd_report(args) -> int:
    from genlab.report import write_report

    out = write_report(args.paths, args.out, args.force, args.title)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0


def cmd_sweep(args) -> int:
    from genlab import sweep
    from genlab.report import write_report
    from genlab.sweep.runners import LocalRunner, RayRunner

    if args.list:
        for name in sweep.sweep_presets():
            spec = sweep.load_sweep_preset(name)
            print(f"{name:<24} {spec.preset:<24} {spec.description}")
        return 0
    if args.runner == "ray":
        runner = RayRunner(None if args.ray_address == "local" else args.ray_address, args.gpus_per_run, args.cpus_per_run)
    else:
        runner = LocalRunner(args.parallel)
    if args.resume is not None:
        if args.preset or args.grid or args.overrides:
            raise GenlabError("--resume SWEEP_DIR continues a sweep as it was planned: give no preset, --grid or overrides")
        folder = args.resume
        results = sweep.execute(folder, runner)
    else:
        if args.preset is None:
            raise GenlabError("name a preset or a shipped sweep (genlab sweep --list), or --resume SWEEP_DIR")
        if args.preset in sweep.sweep_presets():
            spec = sweep.load_sweep_preset(args.preset)
            spec.overrides = spec.overrides + list(args.overrides)
            spec.grid.update(sweep.parse_grid(args.grid))
        else:
            spec = sweep.SweepSpec(preset=args.preset, grid=sweep.parse_grid(args.grid), overrides=list(args.overrides),
                                   name=args.preset)
        if args.seeds is not None:
            spec.seeds = sweep.parse_seeds(args.seeds)
        if args.metrics is not None:
            spec.metrics = [m for m in args.metrics.split(",") if m.strip()]
        if args.eval_n is not None:
            _positive("--eval-n", args.eval_n)
            spec.eval_n = args.eval_n
        folder = args.out or Path("sweeps") / spec.name
        results = sweep.start(spec, folder, runner, args.device)
    report = write_report([folder], folder / "report.html", force=True)
    print(f"{results['finished']} of {results['total']} runs finished")
    for point in results["points"]:
        shown = ", ".join(f"{m} {s['mean']:.4g} [{s['min']:.4g}, {s['max']:.4g}]" for m, s in point["stats"].items())
        print(f"  {point['label']:<40} {shown or '(no numbers)'}")
    print(f"wrote {folder / 'results.json'}, {folder / 'sweep.png'} and {report}")
    return 0 if results["finished"] == results["total"] else 1


def cmd_detect(args) -> int:
    import json

    from genlab.detect import bench
    from genlab.train.loop import resolve_device

    # `--fake A B key=value`: nargs="+" takes the overrides too; a key=value that is no file is one
    stray = [f for f in args.fake if "=" in f and not Path(f).exists()]
    args.fake = [f for f in args.fake if f not in stray]
    args.overrides = list(args.overrides) + stray
    if not args.fake:
        raise GenlabError("--fake names no generator runs (or .npz files)")
    device = resolve_device(args.device)
    if getattr(args, "n", None) is not None:
        _positive("--n", args.n)
    if args.detect_command == "train":
        run = bench.train_detector(args.real, args.fake, device, args.overrides, args.root, args.runs_dir, args.run_dir,
                                   quiet=args.quiet)
        print(f"detector run {run}")
        return 0
    if args.detect_command == "eval":
        wrong = [o for o in args.overrides if not o.startswith("data.")]
        if wrong:
            raise GenlabError(f"unexpected {' '.join(wrong)}: detect eval takes only data.* keys (for --real)")
        if args.out is not None:
            _check_output(args.out, False, (".json",))
        report = bench.evaluate_detector_run(args.detector, args.fake, device, args.real, args.root, args.overrides,
                                             args.n, args.seed if args.seed is not None else bench.EVAL_SEED, args.split,
                                             launder=not args.no_launder)
        if args.out is not None:
            bench.write_json(args.out, report)
        print(json.dumps(report, indent=2) if args.json else bench.format_results(report))
        return 0
    if args.detect_command == "matrix":
        result = bench.detection_matrix(args.real, args.fake, args.out, device, args.overrides, args.root, args.n,
                                        quiet=args.quiet)
        labels = result["rows_trained_on"]
        width = max(12, *(len(x) for x in labels))
        print(f"{'AUC: trained on':<{width}} " + " ".join(f"{c[:12]:>12}" for c in labels))
        for label, row in zip(labels, result["auc"]):
            print(f"{label:<{width}} " + " ".join(f"{v:12.3f}" for v in row))
        print(f"[{result['protocol']}]\nwrote {args.out / 'matrix.json'} and {args.out / 'matrix.png'}")
        return 0
    if len(args.fake) != 1:
        raise GenlabError(f"detect loop fine-tunes one generator; --fake names {len(args.fake)}")
    record = bench.adversarial_loop(args.real, args.fake[0], args.out, device, args.rounds, args.weight,
                                    args.generator_epochs, args.overrides, args.root, args.n, args.swd_n, quiet=args.quiet)
    print(f"round  auc_before  auc_after  swd      (start swd {record['swd_start']:.4f})")
    for r in record["rounds"]:
        print(f"{r['round']:5d}  {r['auc_before']:10.3f}  {r['auc_after']:9.3f}  {r['swd']:.4f}")
    print(f"wrote {args.out / 'loop.json'}")
    return 0


def cmd_presets(args) -> int:
    from genlab.config import load_preset, preset_names

    names = preset_names()
    width = max(map(len, names))
    raws = {name: load_preset(name) for name in names}
    method_width = max(len(str(raw.get("method", "?"))) for raw in raws.values())
    for name, raw in raws.items():
        print(f"{name:<{width}}  {raw.get('method', '?'):<{method_width}}  {raw.get('description', '')}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct, "eval": cmd_eval, "data": cmd_data,
            "analyze": cmd_analyze, "summary": cmd_summary, "report": cmd_report, "sweep": cmd_sweep, "detect": cmd_detect, "presets": cmd_presets}


def _command_in(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


import threading as _threading

_DEFAULT_THREAD_HOOK = _threading.excepthook


def _quiet_thread_os_errors(args) -> None:
    """A background writer (TensorBoard's) that hits a full disk must not print a traceback: the main
    thread reports the same failure as one line when it next writes."""
    if not issubclass(args.exc_type, OSError):
        _DEFAULT_THREAD_HOOK(args)


def main(argv: list[str] | None = None) -> int:
    import threading

    threading.excepthook = _quiet_thread_os_errors
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    # key=value overrides may stand anywhere on the line, also after options such as --root DIR.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = argv
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
    except BrokenPipeError:  # the reader went away (`genlab presets | head -3`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except OSError as e:  # a full disk, a folder without permission: name the file, no traceback
        if debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"genlab: error: cannot access{where}: {e.strerror or e}", file=sys.stderr)
        return 2
