"""`genlab sample`, `genlab reconstruct`, `genlab eval` and `genlab summary`: what a trained model makes and how it scores."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from torchvision.utils import save_image

from genlab import api
from genlab.analysis import commands
from genlab.analysis.reconstruct import UNITS
from genlab.cli.common import CHECKPOINTS, COMMANDS, FORMAT, add_common, check_output, positive, weights
from genlab.cli.data import data_config
from genlab.config import EvalSettings
from genlab.distributed import resolve_device
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.metrics.features import EXTRACTORS
from genlab.metrics.table import ALL_METRICS, METRICS
from genlab.samplers import describe
from genlab.train.rundir import image_grid, save_grid

log = logging.getLogger("genlab")

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

EVAL_EXAMPLES = """\
examples:
  genlab eval runs/00000-quickstart-digits --metrics swd,msssim,nn,recon,bpd --n 2000
  genlab eval runs/00003-dcgan-celeba64-celeba --metrics fid,kid,is,pr --inception-weights weights-inception-2015-12-05-6726825d.pth
  genlab eval --real celeba --root ../shared/data/celeba --fake samples.npz --metrics swd,msssim
  genlab eval runs/00000-quickstart-digits --metrics swd --n 1000 --json > result.json
  genlab eval runs/00004-ddpm-cifar10-cifar10 --metrics swd,bpd sampler.steps=100 --bound-timesteps 100
  genlab eval runs/00005-edm-celeba32-celeba --metrics swd,bpd sampler.nfe=19 model.divergence=hutchinson model.probes=4

Results are added to the run's metrics.json (the latest per metric) and appended to its
stats.jsonl (every evaluation), each with its protocol. --json prints only JSON on stdout.
"""

EMA_EXAMPLES = """\
examples:
  genlab train edm-celeba32 data.root=../shared/data/celeba train.posthoc_ema=[0.05,0.10]
  genlab ema runs/00007-edm-celeba32-celeba --sigma-rel 0.03,0.05,0.08,0.12 --metric swd --n 2000
  genlab eval runs/00007-edm-celeba32-celeba/checkpoints/posthoc-inference.pt --metrics swd
"""

SUMMARY_EXAMPLES = """\
examples:
  genlab summary dcgan-celeba64
  genlab summary vae-celeba64-seed002 data.size=32 model.widths=[64,128,256]
  genlab summary runs/00000-quickstart-digits --json
"""


def _metrics_help() -> str:
    return "; ".join(f"{m} ({METRICS.get(m).summary})" for m in ALL_METRICS)


def add_parsers(sub) -> None:
    fmt = FORMAT
    defaults = EvalSettings()
    p = sub.add_parser("sample", help=COMMANDS["sample"][1], description="Generate images from a trained run.",
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
    add_common(p)

    p = sub.add_parser("reconstruct", help=COMMANDS["reconstruct"][1],
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
    add_common(p)

    p = sub.add_parser("eval", help=COMMANDS["eval"][1],
                       description="Evaluate a trained run, or any images against a data set, under one protocol.",
                       epilog=EVAL_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, nargs="?", metavar="RUN_DIR", help="run directory or checkpoint file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data keys for --real (size=64 ...); for a run, sampler.* keys (sampler.steps=100) and the "
                        "family's evaluation keys (model.bound_timesteps=100, model.divergence=hutchinson)")
    p.add_argument("--metrics", default=None,
                   help=f"comma-separated (default: all the run's family can give, except ppl): {_metrics_help()}")
    p.add_argument("--n", type=int, default=defaults.n, help=f"generated images (default: {defaults.n}, the FID protocol)")
    p.add_argument("--split", choices=("report", "choice", "train", "val", "test"), default=None,
                   help="the real split every metric uses (default: report, i.e. test, else val; choice = val, the split "
                        "training chose best.pt on)")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="which checkpoint of a run (default: last)")
    p.add_argument("--raw-weights", "--no-ema", action="store_true", help="the last iterate instead of the EMA weights")
    p.add_argument("--real", metavar="SOURCE", help="score --fake images against this data source or preset")
    p.add_argument("--root", help="data root for --real")
    p.add_argument("--fake", type=Path, metavar="DIR_OR_NPZ", help="images to score: a folder or an .npz with 'images'")
    p.add_argument("--extractor", default=defaults.extractor, choices=EXTRACTORS.names(),
                   help=f"feature extractor of fid/kid/is/pr (default: {defaults.extractor})")
    p.add_argument("--inception-weights", metavar="FILE", help="a local copy of the Inception weights")
    p.add_argument("--iw-samples", type=int, default=None,
                   help="k of a VAE's importance-weighted bound for bpd (default: the run's model.iw_samples)")
    p.add_argument("--bound-timesteps", type=int, default=None,
                   help="terms of a DDPM's bound for bpd: 0 = all T, k = a stratified estimate (default: the run's)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"first sample seed (default {defaults.seed})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--json", action="store_true", help="print only JSON on stdout")
    add_common(p)

    p = sub.add_parser("ema", help=COMMANDS["ema"][1],
                       description="Post-hoc EMA (Karras et al. 2024): rebuild the EMA of each relative width from the "
                                   "power-function EMA snapshots a run kept (train.posthoc_ema), score each on the choice "
                                   "split, and write the best as checkpoints/posthoc-inference.pt.",
                       epilog=EMA_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, metavar="RUN_DIR", help="a run trained with train.posthoc_ema")
    p.add_argument("--sigma-rel", default="0.02,0.05,0.08,0.12,0.16",
                   help="comma-separated relative widths to rebuild (default: 0.02,0.05,0.08,0.12,0.16)")
    p.add_argument("--metric", default="swd", help="what chooses between them, on the choice split (default: swd)")
    p.add_argument("--n", type=int, default=2000, help="generated images per width (default: 2000)")
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"first sample seed (default {defaults.seed})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    add_common(p)

    p = sub.add_parser("summary", help=COMMANDS["summary"][1],
                       description="Each network's layers, output shapes, parameters and multiply-adds per image (torchinfo).",
                       epilog=SUMMARY_EXAMPLES, formatter_class=fmt)
    p.add_argument("target", metavar="PRESET|RUN_DIR")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (a preset only)")
    p.add_argument("--json", action="store_true", help="print only the numbers, as JSON")
    add_common(p)


def cmd_sample(args) -> int:
    positive("--n", args.n)
    positive("--batch-size", args.batch_size)
    folder = args.out.endswith(("/", os.sep)) or Path(args.out).is_dir()
    args.out = Path(args.out)
    if folder:
        taken = sorted(args.out.glob("*.png")) if args.out.is_dir() else []
        if taken and not args.force:
            raise GenlabError(f"--out {args.out} already holds {len(taken)} PNG files; pass --force to overwrite them")
        if not args.out.parent.exists():
            raise GenlabError(f"--out {args.out}: folder {args.out.parent} does not exist")
    else:
        check_output(args.out, args.force, (".png", ".npz"))
    images, (method, cfg, payload, _) = api.sample(args.run, args.n, args.seed, args.device, args.checkpoint,
                                                   weights(args), args.overrides, args.batch_size)
    if folder:  # seed 004's test output: one PNG per image, named by its seed
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
    positive("--n", args.n)
    if args.out is not None:
        check_output(args.out, args.force, (".png",))
    elif not args.run.is_dir():
        raise GenlabError(f"{args.run} is a checkpoint file: give --out for the grid (a run directory keeps it in analysis/)")
    written, m = api.reconstruct(args.run, args.n, args.split, args.seed if args.random else None, args.device,
                                 args.checkpoint, weights(args), args.out)
    print(f"{args.split} image    mse        psnr (dB)  ssim     [{UNITS}]")
    for row, i in enumerate(m["images"]):
        print(f"{i:9d}  {m['mse'][row]:.6f}  {m['psnr'][row]:9.3f}  {m['ssim'][row]:.4f}")
    print(f"     mean  {m['mean']['mse']:.6f}  {m['mean']['psnr']:9.3f}  {m['mean']['ssim']:.4f}")
    log.info("wrote %d reconstructions to %s", len(m["images"]), " and ".join(str(p) for p in (written, args.out) if p))
    return 0


def cmd_eval(args) -> int:
    positive("--n", args.n)
    positive("--batch-size", args.batch_size)
    settings = EvalSettings(n=args.n, split=args.split, extractor=args.extractor, inception_weights=args.inception_weights,
                            batch_size=args.batch_size, seed=args.seed)
    if args.run is not None and "=" in str(args.run) and not args.run.exists():  # `--real digits size=32`
        args.overrides, args.run = [str(args.run)] + list(args.overrides), None
    if args.real is not None or args.fake is not None:
        if args.real is None or args.fake is None or args.run is not None:
            raise GenlabError("scoring images needs both --real SOURCE and --fake DIR_OR_NPZ, and no RUN_DIR")
        args.source, args.strict = args.real, False
        results = api.evaluate_images(data_config(args), args.fake, args.metrics, settings, args.device)
    else:
        if args.run is None:
            raise GenlabError("give a RUN_DIR, or --real SOURCE --fake DIR_OR_NPZ")
        wrong = [o for o in args.overrides if not o.startswith(("sampler.", "model."))]
        if wrong:  # (model.* keys: the family's evaluation keys only, checked by genlab.resolve)
            raise GenlabError(f"unexpected {' '.join(wrong)}: with a RUN_DIR only sampler.* keys and the family's "
                              "evaluation keys (model.*) may be given (data keys go with --real)")
        overrides = list(args.overrides)
        for option, key in (("iw_samples", "iw_samples"), ("bound_timesteps", "bound_timesteps")):
            if getattr(args, option) is not None:  # --iw-samples K -> model.iw_samples=K (checked by the family)
                overrides.append(f"model.{key}={getattr(args, option)}")
        results = api.evaluate(args.run, args.metrics, settings, args.device, args.checkpoint, weights(args), overrides)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            extra = f" ± {r['std']:.4g}" if "std" in r else ""
            extra += f" (real: {r['real']:.4g})" if "real" in r else ""
            print(f"{name:<10} {r['value']:.6g}{extra}\n           [{r['protocol']}]")
    return 0


def cmd_ema(args) -> int:
    positive("--n", args.n)
    try:
        sigma_rels = [float(s) for s in args.sigma_rel.split(",") if s.strip()]
    except ValueError as e:
        raise GenlabError(f"--sigma-rel {args.sigma_rel}: give comma-separated numbers such as 0.05,0.10") from e
    if not sigma_rels:
        raise GenlabError("--sigma-rel: give at least one relative width")
    settings = EvalSettings(n=args.n, batch_size=args.batch_size, seed=args.seed)
    result = api.posthoc_ema(args.run, sigma_rels, args.metric, settings, args.device)
    print(f"sigma_rel  gamma    {result['rows'][0]['metric']:<10} profile error  [choice split]")
    for r in result["rows"]:
        mark = "  <- chosen" if r["sigma_rel"] == result["chosen"]["sigma_rel"] else ""
        print(f"{r['sigma_rel']:<9g}  {r['gamma']:<7.2f}  {r['value']:<10.4g} {r['profile_error']:<13.2%}{mark}")
    print(f"[{result['chosen']['protocol']}]")
    log.info("wrote %s (sample or evaluate it like any checkpoint: genlab eval %s)", result["checkpoint"],
             result["checkpoint"])
    return 0


def cmd_summary(args) -> int:
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

