"""Why seed 000's hybrid did not converge, measured: variants of the latent GAN (genlab's
``latent-gan``) over one trained VAE run, each trained for the same number of steps, and each
scored by what its generated latents and images are: the Frechet distance between generated and
real (validation) latents, the SWD of decoded samples against the validation images, and the
training signals (D's beliefs, r_d, the noise level T_max, G's gradient norm) at the start and end.
The VAE's own samples (its N(0, I) prior through the same decoder) are the reference.

    python benchmarks/hybrid_convergence.py --vae RUN_DIR --steps 1500 \\
        --out benchmarks/results/hybrid_convergence-cpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import score_run, write_result

SEED000 = ["model.loss=wgan-gp", "model.diffusion=fixed", "model.g_optim.lr=2e-5", "model.d_optim.lr=6e-5",
           "model.g_optim.agc=0.01", "model.d_optim.agc=0.01", "model.d_spectral_norm=true"]
VARIANTS = {
    "seed000": SEED000,  # the report's ingredients as it describes them
    "seed000+adaptive": [o for o in SEED000 if "diffusion" not in o] + ["model.diffusion=adaptive"],
    "ns+r1+adaptive": ["model.loss=nonsaturating", "model.r1_gamma=1.0", "model.diffusion=adaptive",
                       "model.g_optim.lr=2e-4", "model.d_optim.lr=2e-4"],
    "ns+r1+adaptive+ttur": ["model.loss=nonsaturating", "model.r1_gamma=1.0", "model.diffusion=adaptive",
                            "model.g_optim.lr=1e-4", "model.d_optim.lr=3e-4"],
    "ns+r1+no-diffusion": ["model.loss=nonsaturating", "model.r1_gamma=1.0", "model.diffusion=none",
                            "model.g_optim.lr=2e-4", "model.d_optim.lr=2e-4"],
}


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the trace of the root from the
    eigenvalues of S_a S_b (real parts, clamped at 0), in float64."""
    a, b = a.double(), b.double()
    mu = (a.mean(0) - b.mean(0)).square().sum()
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    root = torch.linalg.eigvals(sa @ sb).real.clamp(min=0).sqrt().sum()
    return float(mu + sa.trace() + sb.trace() - 2 * root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="the VAE run (its data config is used)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=4000, help="samples for SWD and the latent distance")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    device = torch.device(args.device)

    from genlab.api import train as start_training
    from genlab.data import build_dataset
    from genlab.data.convert import to_model_range
    from genlab.resolve import load_run_config, resolve_config
    from genlab.train.checkpoint import load_model

    runs = args.runs or Path(tempfile.mkdtemp(prefix="genlab-hybrid-"))
    vae_cfg = load_run_config(str(args.vae))
    data = build_dataset(vae_cfg.data)
    vae_results = score_run(args.vae, vae_cfg, ["swd"], args.n, "choice", device)
    rows = [{"variant": "VAE prior N(0, I) (reference)", "swd": vae_results["swd"]["value"],
             "swd_protocol": vae_results["swd"]["protocol"]}]
    base = {"method": "latent-gan", "name": "hybrid", "data": vae_cfg.to_dict()["data"],
            "init": {"from_run": str(args.vae)},
            "train": {"batch_size": 64, "epochs": 100000, "max_steps": args.steps, "log_every": 25, "grid_every": 0}}
    for name in args.variants.split(","):
        from genlab.config import apply_overrides

        cfg = resolve_config(apply_overrides(json.loads(json.dumps(base)), VARIANTS[name]))
        print(f"{name}: {args.steps} steps", flush=True)
        start = time.perf_counter()
        run = start_training(cfg, runs, device, quiet=True)
        wall = time.perf_counter() - start
        records = [json.loads(l) for l in (run / "stats.jsonl").read_text().splitlines()]
        train = [r for r in records if r.get("kind") == "train"]
        keys = ("loss_d", "loss_g", "d_real", "d_fake", "r_d", "t_max", "g_grad_norm", "gp", "r1")
        first, last = ({k: r[k] for k in keys if k in r} for r in (train[0], train[-1]))
        summary = json.loads((run / "metrics.json").read_text())["train"]
        row = {"variant": name, "overrides": VARIANTS[name], "steps": summary["steps"], "wall_s": round(wall, 1),
               "stopped_because": summary["stopped_because"], "first_log": first, "last_log": last}
        if summary["stopped_because"] != "non_finite_loss":
            model = load_model(run, device).method
            with torch.no_grad(), model.evaluating():
                real = torch.cat([model.real_latents(to_model_range(data.val[i:i + 256].to(device)))
                                  for i in range(0, min(args.n, len(data.val)), 256)])
                noise = torch.randn(len(real), model.noise_dim, generator=torch.Generator().manual_seed(0)).to(device)
                fake = model.generator(noise)
            row["latent_frechet"] = frechet(fake.cpu(), real.cpu())
            prior = torch.randn(len(real), real.shape[1], generator=torch.Generator().manual_seed(1))
            row["latent_frechet_vae_prior"] = frechet(prior * model.generator.latent_scale.cpu(), real.cpu())
            results = score_run(run, cfg, ["swd"], args.n, "choice", device)
            row["swd"] = results["swd"]["value"]
            row["swd_over_vae"] = round(row["swd"] / rows[0]["swd"], 4)
        rows.append(row)
        print(f"  {json.dumps({k: v for k, v in row.items() if k not in ('overrides', 'first_log')})}", flush=True)
    write_result(args.out, {"vae": str(args.vae), "steps": args.steps, "n": args.n, "rows": rows}, device)


if __name__ == "__main__":
    main()
