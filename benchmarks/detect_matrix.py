"""The deepfake-detector benchmark on real data: generators of several families trained on the same
data for the same number of training images, then `genlab detect matrix` over them (a detector per
generator, each tested on every generator's fresh samples; robustness to JPEG, resizing and blur),
and optionally `genlab detect loop` on one of them; then the format-parity control (a detector of
real images against the same real images re-encoded, with and without the detector's input
encoding: see ``control_rows``). One JSON with the machine, the command, each
generator's run (preset, steps, wall time, SWD of its samples) and the matrix; the heat map is
copied to --heatmap for the README.

On a CPU: 32x32 and a budget that fits in about 20 minutes; on a GPU: 64x64 and longer budgets.

    python benchmarks/detect_matrix.py --root ../shared/data/celeba --size 32 --images 40960 \\
        --presets "vae-celeba64-seed002+model.widths=[64,128,256],dcgan-celeba64,lsgan-celeba64-seed002,gan-celeba64" \\
        --detector-epochs 3 --loop-preset lsgan-celeba64-seed002 --loop-rounds 2 \\
        --out benchmarks/results/detect_matrix-cpu.json --heatmap docs/detect/matrix-cpu.png
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import score_run, write_result

from genlab.sweep import split_top_level


def control_rows(args, detector_overrides: list[str], folder: Path, device: torch.device) -> dict:
    """The format-parity control: a detector of real images against the same real images re-encoded as
    JPEG (nothing generated), trained and scored like the matrix's detectors, once with the detector's
    input encoding (both classes re-encoded alike: the benchmark's setting) and once without it. With
    parity its AUC must sit at chance (0.5 inside the bootstrap interval); without it, how far it
    rises is what a compression shortcut alone is worth."""
    from genlab.detect.bench import detector_config, evaluate_detector_run, train_named, write_control_fakes
    from genlab.detect.encoding import DEFAULT_ENCODING
    from genlab.resolve import load_config

    data = load_config("detector", ["data.source=celeba", f"data.root={args.root}", f"data.size={args.size}"]).data
    fakes = folder / "real-reencoded.npz"
    written = write_control_fakes(data, fakes, n=args.n)
    rows = {"fakes": written}
    for encoding in (DEFAULT_ENCODING, "none"):
        cfg = detector_config("celeba", [str(fakes)], [*detector_overrides, f"model.encoding={encoding}"], str(args.root))
        run = train_named(cfg, folder / f"detector-{encoding}", device, quiet=True)
        report = evaluate_detector_run(run, [str(fakes)], device, n=args.n, launder=False)
        (r,) = report["results"].values()
        low, high = r["auc_interval"]
        rows[encoding] = {"auc": r["auc"], "auc_interval": [low, high], "at_chance": low <= 0.5 <= high,
                          "accuracy": r["accuracy"], "run": str(run), "protocol": report["protocol"]}
        print(f"control, encoding {encoding}: AUC {r['auc']:.3f} [{low:.3f}, {high:.3f}]", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="the CelebA folder")
    parser.add_argument("--presets", default="vae-celeba64-seed002+model.widths=[64,128,256],dcgan-celeba64,"
                        "lsgan-celeba64-seed002,gan-celeba64",
                        help="comma-separated; PRESET+key=value+... adapts a preset (a VAE's widths to 32x32)")
    parser.add_argument("--images", type=int, default=40_960, help="training images per generator (the budget)")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--detector-epochs", type=int, default=3)
    parser.add_argument("--detector-arch", default="cnn")
    parser.add_argument("--n", type=int, default=1000, help="held-out reals and fresh fakes per generator")
    parser.add_argument("--swd-n", type=int, default=4000, help="samples per generator for its SWD")
    parser.add_argument("--loop-preset", default=None, help="also run `detect loop` on this generator")
    parser.add_argument("--loop-rounds", type=int, default=2)
    parser.add_argument("--loop-weight", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--heatmap", type=Path, default=None, help="copy the matrix heat map here")
    parser.add_argument("--no-control", action="store_true", help="skip the format-parity control detectors")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)

    from genlab.detect.bench import adversarial_loop, detection_matrix, train_named
    from genlab.resolve import load_config

    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-detect-"))
    began = time.perf_counter()
    generators, rows = {}, []
    for spec in split_top_level(args.presets):
        preset, *variant = spec.split("+")
        base = load_config(preset, [f"data.root={args.root}", *variant])
        steps = math.ceil(args.images / base.train.batch_size)
        overrides = [f"data.root={args.root}", f"data.size={args.size}", f"train.max_steps={steps}",
                     "train.epochs=100000", "train.grid_every=0", "train.log_every=50", "train.patience=null", *variant]
        cfg = load_config(preset, overrides)
        print(f"{preset}: {steps} steps of {cfg.train.batch_size}", flush=True)
        start = time.perf_counter()
        run = train_named(cfg, runs / "generators" / preset, device, quiet=True)
        wall = time.perf_counter() - start
        summary = json.loads((run / "metrics.json").read_text())["train"]
        results = score_run(run, cfg, ["swd"], args.swd_n, "report", device)
        rows.append({"preset": preset, "overrides": overrides, "family": cfg.method, "run": str(run), "steps": summary["steps"],
                     "images": summary["steps"] * cfg.train.batch_size, "train_wall_s": round(wall, 1),
                     "stopped_because": summary["stopped_because"], "swd": results["swd"]["value"],
                     "swd_protocol": results["swd"]["protocol"]})
        generators[preset] = run
    detector_overrides = [f"data.root={args.root}", f"data.size={args.size}", f"train.epochs={args.detector_epochs}",
                          f"model.arch={args.detector_arch}"]
    start = time.perf_counter()
    matrix = detection_matrix("celeba", [str(r) for r in generators.values()], runs / "matrix", device,
                              detector_overrides, str(args.root), n=args.n)
    matrix_wall = time.perf_counter() - start
    result = {"size": args.size, "images_per_generator": args.images, "detector_epochs": args.detector_epochs,
              "detector_overrides": detector_overrides, "generators": rows, "matrix": matrix,
              "matrix_wall_s": round(matrix_wall, 1)}
    if args.loop_preset:
        start = time.perf_counter()
        result["loop"] = adversarial_loop("celeba", generators[args.loop_preset], runs / "loop", device,
                                          args.loop_rounds, args.loop_weight, 1, detector_overrides, str(args.root),
                                          n=args.n, swd_n=args.swd_n)
        result["loop_wall_s"] = round(time.perf_counter() - start, 1)
    if not args.no_control:
        start = time.perf_counter()
        result["control"] = control_rows(args, detector_overrides, runs / "control", device)
        result["control_wall_s"] = round(time.perf_counter() - start, 1)
    result["total_wall_s"] = round(time.perf_counter() - began, 1)
    write_result(args.out, result, device)
    if args.heatmap:
        args.heatmap.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(runs / "matrix" / "matrix.png", args.heatmap)
    labels = matrix["rows_trained_on"]
    print("AUC (rows: trained on; columns: tested on)")
    for label, line in zip(labels, matrix["auc"]):
        print(f"{label:<32} " + " ".join(f"{v:6.3f}" for v in line))


if __name__ == "__main__":
    main()
