"""Time to score N generated images with FID, generation included, in one run on one machine:

- genlab: samples generated in memory as uint8, features extracted in batches, statistics compared
  with the cached reference statistics (`genlab eval RUN --metrics fid`);
- files: the way most users do it today: generate, write PNG files to disk, then torch-fidelity's
  `calculate_metrics` over that folder (what its command line runs), reference statistics cached.

Both routes use the same feature extractor. Where the Inception weights are missing (this
project's machines), use `--extractor random-standin`: a fixed random network registered with
torch-fidelity, so both routes still do the same work; the JSON says which was used. The result
also states the cost of periodic evaluation relative to the run's own measured training time.

    python benchmarks/eval_throughput.py --run RUN_DIR --n 10000 --extractor random-standin \\
        --out benchmarks/results/eval_throughput-cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import write_result
from PIL import Image

FIDELITY_NAMES = {"random-standin": "genlab-random-standin", "inception-v3-compat": "inception-v3-compat"}


def write_pngs(images: torch.Tensor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images.numpy()):
        arr = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        Image.fromarray(arr).save(folder / f"{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--extractor", default="inception-v3-compat")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)

    import torch_fidelity

    import genlab.metrics.features  # noqa: F401  (registers the stand-in with torch-fidelity)
    from genlab.config import EvalSettings
    from genlab.data import build_dataset
    from genlab.metrics.evaluate import Evaluator
    from genlab.train.checkpoint import load_model

    method, cfg, payload, _ = load_model(args.run, device, weights="raw")
    data = build_dataset(cfg.data)
    settings = EvalSettings(metrics=["fid"], n=args.n, extractor=args.extractor,
                            inception_weights=args.inception_weights, batch_size=args.batch)
    evaluator = Evaluator(data, cfg.data, settings, device)
    evaluator.reference_features("train")  # warm: both routes compare against cached reference statistics

    start = time.perf_counter()
    results, _ = evaluator.score_method(method, ["fid"], "benchmark")
    genlab_seconds = time.perf_counter() - start

    work = Path(tempfile.mkdtemp(prefix="genlab-eval-bench-"))
    try:
        kwargs = dict(fid=True, cuda=device.type == "cuda", batch_size=args.batch, verbose=False,
                      feature_extractor=FIDELITY_NAMES[args.extractor], cache_root=str(work / "fidelity-cache"),
                      input2_cache_name="genlab-bench-real", samples_find_ext="png",
                      feature_extractor_weights_path=args.inception_weights)
        write_pngs(data.train, work / "real")  # untimed: the reference set, as files
        write_pngs(data.train[:64], work / "warm")
        torch_fidelity.calculate_metrics(input1=str(work / "warm"), input2=str(work / "real"), **kwargs)  # caches input2
        start = time.perf_counter()
        method.eval()
        samples = method.sample(args.n, 0, batch_size=args.batch)
        write_pngs(samples, work / "fake")
        files_out = torch_fidelity.calculate_metrics(input1=str(work / "fake"), input2=str(work / "real"), **kwargs)
        files_seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    train = json.loads((args.run / "metrics.json").read_text())["train"]
    epoch_seconds = train["train_time_s"] / max(1, train["epochs_completed"])
    result = {
        "benchmark": "eval_throughput",
        "what": f"seconds to score {args.n} generated images with FID (generation included), reference statistics cached",
        "extractor": args.extractor,
        "extractor_note": "a fixed random stand-in network, not Inception: timings only, FID values not comparable"
        if args.extractor == "random-standin" else "InceptionV3 (torch-fidelity)",
        "run": {"method": cfg.method, "dataset": data.name, "image_shape": list(data.image_shape), "step": payload["progress"]["step"]},
        "genlab_in_memory": {"seconds": round(genlab_seconds, 2), "images_per_s": round(args.n / genlab_seconds, 1),
                             "fid": results["fid"]["value"]},
        "files_then_torch_fidelity": {"seconds": round(files_seconds, 2), "images_per_s": round(args.n / files_seconds, 1),
                                      "fid": files_out["frechet_inception_distance"]},
        "speedup": round(files_seconds / genlab_seconds, 2),
        "training_epoch_seconds": round(epoch_seconds, 1),
        "eval_share_of_training": {f"every_{k}_epochs": round(genlab_seconds / (genlab_seconds + k * epoch_seconds), 3)
                                   for k in (1, 5)},
    }
    write_result(args.out, result, device)
    print(f"genlab {genlab_seconds:.1f} s, files + torch-fidelity {files_seconds:.1f} s ({result['speedup']}x); "
          f"FID {results['fid']['value']:.5g} vs {files_out['frechet_inception_distance']:.5g}; "
          f"eval share of training at every epoch {result['eval_share_of_training']['every_1_epochs']:.1%}")


if __name__ == "__main__":
    main()
