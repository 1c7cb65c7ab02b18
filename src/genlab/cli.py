"""The ``genlab`` command: train | sample | reconstruct | eval | data | presets.

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

Metrics: fid kid is pr (Inception, torch-fidelity), ppl (LPIPS), swd, msssim (diversity), nn
(nearest training image), recon (mse, psnr, ssim), bpd (bits per dimension). Results are added to
the run's metrics.json, each with its protocol. --json prints only JSON on stdout.
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
    p.add_argument("--gpus", type=int, default=1, help="train on N GPUs of this machine with DDP (launches torchrun)")
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

    p = sub.add_parser("eval", help="evaluate a run (or a folder of images) under one protocol",
                       description="Evaluate a trained run, or any images against a data set, under one protocol.",
                       epilog=EVAL_EXAMPLES, formatter_class=fmt)
    p.add_argument("run", type=Path, nargs="?", metavar="RUN_DIR", help="run directory or checkpoint file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data keys for --real (size=64 ...)")
    p.add_argument("--metrics", default=None, help="comma-separated (default: all that apply)")
    p.add_argument("--n", type=int, default=50_000, help="generated images (default: 50000, the FID protocol)")
    p.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="reference split (default train) and held-out split for recon/bpd (default test, else val)")
    p.add_argument("--checkpoint", default="last", help="last | best (default: last)")
    p.add_argument("--real", metavar="SOURCE", help="score --fake images against this data source or preset")
    p.add_argument("--root", help="data root for --real")
    p.add_argument("--fake", type=Path, metavar="DIR_OR_NPZ", help="images to score: a folder or an .npz with 'images'")
    p.add_argument("--extractor", default="inception-v3-compat", help="inception-v3-compat | random-standin")
    p.add_argument("--inception-weights", metavar="FILE", help="a local copy of the Inception weights")
    p.add_argument("--iw-samples", type=int, default=64, help="k of the importance-weighted bound for bpd (default 64)")
    p.add_argument("--seed", type=int, default=0, help="first sample seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256)
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
    q = data_sub.add_parser("download", help="download celeba or cifar10 from the official sources",
                            description="Download a data set from its official source and verify checksums.",
                            epilog=DATA_EXAMPLES, formatter_class=fmt)
    q.add_argument("dataset", choices=("celeba", "cifar10"))
    q.add_argument("--root", type=Path, required=True, help="folder to download into")
    _common(q, device=False)

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


def _exit_code(run_dir: Path) -> int:
    """1 when training stopped on a non-finite loss (the run is kept, its last good checkpoint too)."""
    import json

    metrics = run_dir / "metrics.json"
    if metrics.exists() and json.loads(metrics.read_text()).get("train", {}).get("stopped_because") == "non_finite_loss":
        return 1
    return 0


def cmd_train(args) -> int:
    import os

    from genlab.config import config_to_yaml, load_config
    from genlab.train.loop import resume_training, start_training

    if args.gpus < 1:
        raise GenlabError(f"--gpus must be at least 1, got {args.gpus}")
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
            from genlab.train.checkpoint import config_from_checkpoint, load_checkpoint
            from genlab.train.rundir import checkpoint_path, require_run_dir

            last = checkpoint_path(require_run_dir(args.resume))
            print(config_to_yaml(config_from_checkpoint(load_checkpoint(last), last)), end="")
            return 0
        device, info = _train_device(args)
        return _exit_code(resume_training(args.resume, overrides, device, quiet=args.quiet, info=info))
    if preset is None:
        raise GenlabError("name a preset (see `genlab presets`) or --resume RUN_DIR")
    cfg = load_config(preset, overrides)
    if args.dry_run:
        print(config_to_yaml(cfg), end="")
        return 0
    device, info = _train_device(args)
    return _exit_code(start_training(cfg, args.runs_dir, device, quiet=args.quiet, info=info))


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


def _data_config(args):
    """DataConfig from SOURCE (a source or a preset), --root, --strict and data key=value overrides."""
    from genlab.config import apply_overrides, load_preset, resolve_config
    from genlab.data import SOURCES

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
    from genlab.data import prepare
    from genlab.data.cache import read_meta

    cfg = _data_config(args)
    if args.data_command == "prepare":
        path = prepare(cfg, force=args.force)
        meta = read_meta(path)
        counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
        print(f"{meta['name']}: {counts}; {len(meta['skipped'])} skipped; cache {path}")
        return 0
    return data_info(cfg)


def data_info(cfg) -> int:
    from collections import Counter

    from genlab.data.cache import CACHE_FORMAT, cache_path, list_catalog, read_meta
    from genlab.data.splits import SPLITS, assign_splits

    catalog = list_catalog(cfg)
    splits = assign_splits(catalog, cfg)
    scheme = "official" if cfg.split == "official" or (cfg.split == "auto" and catalog.has_official_split) else "random"
    print(f"source   {cfg.source}" + (f" ({cfg.root})" if cfg.root else ""))
    print(f"items    {len(catalog)}")
    for note in catalog.notes:
        print(f"note     {note}")
    print(f"splits   {', '.join(f'{s} {len(splits[s])}' for s in SPLITS)} ({scheme}"
          + (f", seed {cfg.split_seed}" if scheme == "random" or catalog.official.count('val') == 0 else "") + ")")
    if cfg.num_parts > 1:
        print(f"parts    train cut into {cfg.num_parts} equal parts of {len(splits['train']) // cfg.num_parts}; using part {cfg.part}")
    sizes, modes, failed = Counter(), Counter(), 0
    step = max(1, len(catalog) // 50)
    for i in range(0, len(catalog), step):  # up to 50 items spread over the set
        try:
            raw = catalog.decode(i)
        except Exception:
            failed += 1
            continue
        if hasattr(raw, "mode"):
            sizes[f"{raw.size[0]}x{raw.size[1]}"] += 1
            modes[raw.mode] += 1
        else:
            sizes[f"{raw.shape[1]}x{raw.shape[0]}"] += 1
            modes["L" if raw.ndim == 2 else "RGB"] += 1
    looked = sum(sizes.values()) + failed
    print(f"images   {', '.join(f'{k} ({v})' for k, v in sizes.most_common(3))}; modes "
          f"{', '.join(f'{k} ({v})' for k, v in modes.most_common())}" + (f"; {failed} unreadable" if failed else "")
          + f" - of {looked} sampled")
    if catalog.labels is not None:
        print(f"labels   {len(set(catalog.labels))} classes" + (f": {', '.join(catalog.label_names[:10])}"
                                                                 if 0 < len(catalog.label_names) <= 10 else ""))
    if catalog.attributes is not None:
        print(f"attrs    {len(catalog.attribute_names)} attributes")
    print(f"output   {cfg.size}x{cfg.size}, {cfg.channels} channel(s), crop {cfg.crop or 'largest centred square'}, "
          f"filter {cfg.resize_filter}")
    path = cache_path(cfg, catalog)
    meta = read_meta(path)
    if meta is None:
        print(f"cache    not prepared (would be {path})")
    elif meta.get("format") != CACHE_FORMAT:
        print(f"cache    {path} is of another format ({meta.get('format')}); it will be rebuilt")
    else:
        print(f"cache    ready at {path} ({', '.join(f'{k} {v}' for k, v in meta['counts'].items())}; "
              f"{len(meta['skipped'])} skipped; prepared in {meta['prepare_seconds']} s)")
    return 0


def _load_fake_images(path: Path, channels: int, size: int):
    """Images to score: an .npz (key 'images', uint8 N x C x H x W) or a folder, as a uint8 tensor."""
    import numpy as np
    import torch

    if not path.exists():
        raise GenlabError(f"--fake: no such file or folder: {path}")
    if path.suffix == ".npz":
        try:
            images = np.load(path)["images"]
        except Exception as e:
            raise GenlabError(f"--fake {path}: not an .npz with an 'images' array ({e})") from e
        if images.dtype != np.uint8 or images.ndim != 4:
            raise GenlabError(f"--fake {path}: 'images' must be uint8 (N, C, H, W), got {images.dtype} {images.shape}")
        return torch.from_numpy(images)
    from genlab.config import DataConfig
    from genlab.data import load_dataset

    data = load_dataset(DataConfig(source="folder", root=str(path), size=size, channels=channels,
                                   val_fraction=0.0, split="random"))
    return data.train


def cmd_eval(args) -> int:
    import json

    from genlab.data import build_dataset
    from genlab.metrics.evaluate import ALL_METRICS, INCEPTION_METRICS, OFFLINE_METRICS, EvalSettings, Evaluator, parse_metrics
    from genlab.train.loop import resolve_device
    from genlab.train.rundir import update_json

    if args.n < 1:
        raise GenlabError(f"--n must be at least 1, got {args.n}")
    device = resolve_device(args.device)
    settings = EvalSettings(n=args.n, split=args.split, extractor=args.extractor, inception_weights=args.inception_weights,
                            batch_size=args.batch_size, seed=args.seed, iw_samples=args.iw_samples)
    from genlab.metrics.features import EXTRACTORS

    EXTRACTORS.get(args.extractor)  # an unknown name fails here, before any work
    if args.run is not None and "=" in str(args.run) and not args.run.exists():  # `--real digits size=32`
        args.overrides, args.run = [str(args.run)] + list(args.overrides), None
    if args.real is not None or args.fake is not None:
        if args.real is None or args.fake is None or args.run is not None:
            raise GenlabError("scoring images needs both --real SOURCE and --fake DIR_OR_NPZ, and no RUN_DIR")
        args.source, args.strict = args.real, False
        data_cfg = _data_config(args)
        metrics = parse_metrics(args.metrics or ",".join(INCEPTION_METRICS + OFFLINE_METRICS))
        model_only = [m for m in metrics if m not in INCEPTION_METRICS + OFFLINE_METRICS]
        if model_only:
            raise GenlabError(f"{', '.join(model_only)} need a model; give a RUN_DIR instead of --fake")
        data = build_dataset(data_cfg)
        fake = _load_fake_images(args.fake, data_cfg.channels, data_cfg.size)
        evaluator = Evaluator(data, data_cfg, settings, device)
        results = evaluator.score_images(fake, metrics, f"{len(fake)} images from {args.fake}")
    else:
        if args.run is None:
            raise GenlabError("give a RUN_DIR, or --real SOURCE --fake DIR_OR_NPZ")
        if args.overrides:
            raise GenlabError(f"unexpected {' '.join(args.overrides)}: data keys only go with --real")
        from genlab.train.checkpoint import build_method_from_checkpoint
        from genlab.train.rundir import find_checkpoint

        path = find_checkpoint(args.run, args.checkpoint)
        method, cfg, payload = build_method_from_checkpoint(path, device)
        default = [m for m in ALL_METRICS if m != "ppl" and (m != "recon" or method.has_encoder)
                   and (m != "bpd" or cfg.method == "vae")]
        metrics = parse_metrics(args.metrics or default)
        data = build_dataset(cfg.data)
        evaluator = Evaluator(data, cfg.data, settings, device)
        label = f"{cfg.method} {path.name} at step {payload['progress']['step']}"
        results, _ = evaluator.score_method(method, metrics, label)
        for r in results.values():
            r.update({"checkpoint": path.name, "step": payload["progress"]["step"]})
        if args.run.is_dir():
            metrics_file = args.run / "metrics.json"
            existing = json.loads(metrics_file.read_text()).get("eval", {}) if metrics_file.exists() else {}
            update_json(metrics_file, {"eval": existing | results})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            extra = f" ± {r['std']:.4g}" if "std" in r else ""
            extra += f" (real: {r['real']:.4g})" if "real" in r else ""
            print(f"{name:<10} {r['value']:.6g}{extra}\n           [{r['protocol']}]")
    return 0


def cmd_presets(args) -> int:
    from genlab.config import load_preset, preset_names

    names = preset_names()
    width = max(map(len, names))
    for name in names:
        raw = load_preset(name)
        print(f"{name:<{width}}  {raw.get('method', '?'):<6} {raw.get('description', '')}")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "reconstruct": cmd_reconstruct, "eval": cmd_eval, "data": cmd_data,
            "presets": cmd_presets}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may stand anywhere on the line, also after options such as --root DIR.
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    args.argv = list(sys.argv[1:] if argv is None else argv)
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
