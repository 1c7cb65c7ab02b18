"""How many Gaussians the fitted prior of a trained VAE / VAE–GAN run should have: the run's mixture is
refitted post hoc to the posterior means of N training images with each K of --components, and each
fit is scored by the SWD of --n samples against the validation split (`genlab eval`'s protocol) and
by a copying check, since a mixture with as many components as codes only replays the training set:

    copy ratio = median over samples of the distance from the sample's code to its nearest training code
                 / the same median for the codes of 2,000 validation images.

Above 1 the samples are no closer to the training codes than unseen faces are; below 1 the mixture has
begun to reproduce its training codes. One JSON with the machine, the command and a row per K.

    python benchmarks/mixture_components.py RUN_DIR --components 50,200,500 \\
        --out benchmarks/results/mixture_components-cpu.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import write_result

VALIDATION_CODES = 2_000


def nearest_distance(codes: torch.Tensor, reference: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Euclidean distance from every code to its nearest reference code."""
    return torch.cat([torch.cdist(codes[i : i + chunk], reference).min(1).values for i in range(0, len(codes), chunk)])


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run of a family with a fitted prior (model.prior=fitted or the autoencoder)")
    parser.add_argument("--components", default="50,200,500", help="comma-separated K to refit with")
    parser.add_argument("--images", type=int, default=20_000, help="training images whose codes the mixture is fitted to")
    parser.add_argument("--n", type=int, default=10_000, help="samples for SWD")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)

    from genlab.config import EvalSettings
    from genlab.data import build_dataset
    from genlab.data.subsets import random_subset
    from genlab.distributed import unwrap
    from genlab.methods.encoder_decoder import codes_of, refit_prior
    from genlab.metrics.evaluate import Evaluator
    from genlab.models.latent_prior import add_prior_buffers, from_prior
    from genlab.train.checkpoint import load_model

    method, cfg, payload, _ = load_model(args.run, device)
    evaluator = Evaluator(build_dataset(cfg.data), cfg.data, EvalSettings(n=args.n, split="choice", seed=0), device)
    # random subsets (seed 0), never the first images of a key-sorted split; K is chosen on the choice split
    train, _ = random_subset(evaluator.split_images("train"), args.images, 0, "train")
    code = lambda x: method.encode(x)[0]  # noqa: E731 - the posterior mean, as the prior is fitted to
    train_codes = codes_of(method, code, train)
    val_codes = codes_of(method, code, random_subset(evaluator.split_images("val"), VALIDATION_CODES, 0, "val")[0])
    val_nearest = nearest_distance(val_codes, train_codes).median()

    decoder, latent_dim = unwrap(method.decoder), cfg.model.latent_dim
    rows = []
    for components in [int(k) for k in args.components.split(",")]:
        for name in ("prior_weights", "prior_means", "prior_chols", "prior_mean", "prior_chol"):
            if hasattr(decoder, name):
                delattr(decoder, name)
        add_prior_buffers(decoder, latent_dim, device, components)
        start = time.perf_counter()
        refit_prior(method, code, train, components)
        fit_s = time.perf_counter() - start
        results, _ = evaluator.score_method(method, ["swd"], f"{cfg.name}, mixture of {components} refitted")
        z = torch.randn(len(val_codes), latent_dim, generator=torch.Generator().manual_seed(1)).to(device)
        copy_ratio = (nearest_distance(from_prior(decoder, z), train_codes).median() / val_nearest).item()
        rows.append({"components": components, "images": len(train), "swd": results["swd"]["value"],
                     "swd_protocol": results["swd"]["protocol"], "copy_ratio": copy_ratio, "fit_s": fit_s})
        print(f"K {components:5d}  swd {rows[-1]['swd']:6.2f}  copy ratio {copy_ratio:.3f}  fit {fit_s:.0f} s", flush=True)
    write_result(args.out, {"run": str(args.run), "preset": cfg.name, "step": payload["progress"]["step"],
                            "copy_ratio_definition": "median nearest-training-code distance of samples / of "
                            f"{len(val_codes)} validation codes", "rows": rows}, device)


if __name__ == "__main__":
    main()
