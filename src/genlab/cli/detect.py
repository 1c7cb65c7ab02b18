"""`genlab detect train | eval | matrix | loop`: the deepfake-detector benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from genlab.cli.common import COMMANDS, FORMAT, add_common, check_output, positive
from genlab.detect import bench
from genlab.distributed import resolve_device
from genlab.errors import GenlabError

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



def add_parsers(sub) -> None:
    fmt = FORMAT
    p = sub.add_parser("detect", help=COMMANDS["detect"][1],
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
        add_common(q)


def cmd_detect(args) -> int:
    # `--fake A B key=value`: nargs="+" takes the overrides too; a key=value that is no file is one
    stray = [f for f in args.fake if "=" in f and not Path(f).exists()]
    args.fake = [f for f in args.fake if f not in stray]
    args.overrides = list(args.overrides) + stray
    if not args.fake:
        raise GenlabError("--fake names no generator runs (or .npz files)")
    device = resolve_device(args.device)
    if getattr(args, "n", None) is not None:
        positive("--n", args.n)
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
            check_output(args.out, False, (".json",))
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

