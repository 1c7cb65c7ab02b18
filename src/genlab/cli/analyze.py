"""`genlab analyze timeline | curves | interpolate | variations | traversal`."""

from __future__ import annotations

from pathlib import Path

from genlab.analysis import commands
from genlab.cli.common import CHECKPOINTS, COMMANDS, FORMAT, add_common
from genlab.distributed import resolve_device
from genlab.errors import GenlabError

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



def add_parsers(sub) -> None:
    fmt = FORMAT
    p = sub.add_parser("analyze", help=COMMANDS["analyze"][1],
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
        add_common(q, device=action in ("interpolate", "variations", "traversal"))


def cmd_analyze(args) -> int:
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

