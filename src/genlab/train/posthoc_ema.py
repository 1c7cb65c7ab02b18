"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", section 3): choose the EMA's length after training instead of before.

During training, a few power-function EMAs of the family's ``ema_targets`` are kept (``train.
posthoc_ema``: their relative standard deviations sigma_rel) and written as snapshots every
``train.posthoc_every`` updates (or at each epoch's end). The power-function EMA with exponent gamma
averages with beta_t = (1 - 1/t)^(gamma + 1) at update t (eq. 2), so its weight on the update at
time tau is proportional to tau^gamma (the profile), and its width relative to its age is sigma_rel
(eq. 3). Any other profile (any sigma_rel, at any snapshot's time) is a linear combination of the
snapshots' profiles, found by least squares in L2 over time (appendix C.3); the same combination of
the snapshots' weights is that EMA's weights. ``genlab ema RUN`` reconstructs the lengths asked for,
scores each on the choice split and keeps the best as an inference snapshot.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import torch

from genlab.data import build_dataset
from genlab.distributed import unwrap
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.metrics.evaluate import Evaluator
from genlab.metrics.table import HIGHER_IS_BETTER, parse_metrics
from genlab.train.checkpoint import inference_header, load_model
from genlab.train.rundir import checkpoint_path, require_run_dir

SNAPSHOT_DIR = "posthoc-ema"
SNAPSHOT_NAME = re.compile(r"snapshot-(\d{9})\.pt$")


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma whose profile has relative width sigma_rel: the largest real root of
    sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 (eq. 3 solved for gamma), i.e. of
    gamma^3 + 7 gamma^2 + (16 - s^-2) gamma + (12 - s^-2) with s = sigma_rel."""
    if not 0 < sigma_rel < 0.2886:  # sigma_rel(gamma = 0) = sqrt(1/12): the widest (uniform) average
        raise GenlabError(f"sigma_rel={sigma_rel}: a power-function EMA's relative width lies in (0, 0.2886)")
    t = sigma_rel**-2
    roots = np.roots([1, 7, 16 - t, 12 - t])
    return float(roots[np.isreal(roots)].real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))   (eq. 3)."""
    return float(np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3))))


class PowerEMA:
    """Power-function EMAs of a family's ``ema_targets``, one per sigma_rel, updated together."""

    def __init__(self, method, sigma_rels: list[float], run_dir: Path | None = None, every: int = 0,
                 writes: bool = True):
        self.run_dir, self.every, self.writes = run_dir, every, writes and run_dir is not None
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.updates = 0
        nets = method.networks()
        self.targets = {name: unwrap(nets[name]) for name in method.ema_targets}
        self.shadows = [{name: copy.deepcopy(net).requires_grad_(False) for name, net in self.targets.items()}
                        for _ in self.sigma_rels]

    @classmethod
    def for_run(cls, method, train_cfg, run_dir: Path, is_main: bool) -> "PowerEMA | None":
        """The averages ``train.posthoc_ema`` asks for (None when it is empty), writing snapshots into
        ``run_dir`` every ``train.posthoc_every`` updates, or at each epoch's end (rank 0 only)."""
        if not train_cfg.posthoc_ema:
            return None
        return cls(method, train_cfg.posthoc_ema, run_dir, train_cfg.posthoc_every, is_main)

    def end_epoch(self) -> None:
        if self.writes and not self.every:
            self.write_snapshot(self.run_dir)

    @torch.no_grad()
    def update(self) -> None:
        """One update of every average (eq. 2), and the snapshot when one is due."""
        self._average()
        if self.writes and self.every and self.updates % self.every == 0:
            self.write_snapshot(self.run_dir)

    def _average(self) -> None:
        self.updates += 1
        t = self.updates
        for gamma, shadows in zip(self.gammas, self.shadows):
            beta = (1 - 1 / t) ** (gamma + 1)  # eq. 2 (0 at the first update: the average starts at the weights)
            for name, net in self.targets.items():
                torch._foreach_lerp_(list(shadows[name].parameters()), list(net.parameters()), 1.0 - beta)
                for s, b in zip(shadows[name].buffers(), net.buffers()):
                    s.copy_(b)

    def state_dict(self) -> dict:
        return {"sigma_rels": self.sigma_rels, "updates": self.updates,
                "networks": [{name: net.state_dict() for name, net in shadows.items()} for shadows in self.shadows]}

    def load_state_dict(self, state: dict) -> None:
        if [float(s) for s in state["sigma_rels"]] != self.sigma_rels:
            raise GenlabError(f"the checkpoint's post-hoc EMAs have sigma_rel {state['sigma_rels']}, the config "
                              f"{self.sigma_rels}: train.posthoc_ema cannot change during a run")
        self.updates = int(state["updates"])
        for shadows, saved in zip(self.shadows, state["networks"]):
            for name, net in shadows.items():
                net.load_state_dict(saved[name])

    def write_snapshot(self, run_dir: Path) -> Path:
        """The averages now, as ``posthoc-ema/snapshot-<updates>.pt`` (written atomically)."""
        path = Path(run_dir) / SNAPSHOT_DIR / f"snapshot-{self.updates:09d}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": "genlab-posthoc-ema", "updates": self.updates, "sigma_rels": self.sigma_rels,
                   "gammas": self.gammas,
                   # buffers (BatchNorm statistics) are the live ones, the same in every average
                   "buffers": {name: [k for k, _ in net.named_buffers()] for name, net in self.targets.items()},
                   "networks": [{name: {k: v.detach().cpu() for k, v in net.state_dict().items()}
                                 for name, net in shadows.items()} for shadows in self.shadows]}
        atomic_write(path, lambda tmp: torch.save(payload, tmp), "snapshot")
        return path


def profile_inner_products(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b> = integral over tau of p_a(tau) p_b(tau) for power profiles p(tau) = (gamma + 1)
    tau^gamma / t^(gamma + 1) on [0, t] (each integrates to 1), in closed form (appendix C.3)."""
    t_a, gamma_a = np.asarray(t_a, dtype=np.float64)[:, None], np.asarray(gamma_a, dtype=np.float64)[:, None]
    t_b, gamma_b = np.asarray(t_b, dtype=np.float64)[None, :], np.asarray(gamma_b, dtype=np.float64)[None, :]
    end = np.minimum(t_a, t_b)
    g = gamma_a + gamma_b + 1
    # computed in logs: t^(gamma + 1) overflows for long runs
    log_value = (np.log(gamma_a + 1) + np.log(gamma_b + 1) + g * np.log(end) - np.log(g)
                 - (gamma_a + 1) * np.log(t_a) - (gamma_b + 1) * np.log(t_b))
    return np.exp(log_value)


def solve_coefficients(snapshot_t, snapshot_gamma, target_t: float, target_gamma: float) -> np.ndarray:
    """Weights x of the snapshots whose combined profile sum_i x_i p_i is nearest the target profile
    in L2: the normal equations A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p_target>."""
    A = profile_inner_products(snapshot_t, snapshot_gamma, snapshot_t, snapshot_gamma)
    b = profile_inner_products(snapshot_t, snapshot_gamma, [target_t], [target_gamma])[:, 0]
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    return x


def read_snapshots(run_dir: Path) -> list[dict]:
    """Every snapshot of a run, oldest first; a run without them is refused with the reason."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    paths = sorted(p for p in folder.glob("snapshot-*.pt") if SNAPSHOT_NAME.search(p.name)) if folder.is_dir() else []
    if not paths:
        raise GenlabError(f"{run_dir} has no post-hoc EMA snapshots ({folder} is empty or missing): train with "
                          "train.posthoc_ema=[0.05,0.10] to keep them")
    snapshots = []
    for path in paths:
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise GenlabError(f"{path} is not a readable post-hoc EMA snapshot ({type(e).__name__})") from e
        if not isinstance(payload, dict) or payload.get("format") != "genlab-posthoc-ema":
            raise GenlabError(f"{path} is not a post-hoc EMA snapshot")
        snapshots.append(payload)
    return snapshots


def reconstruct(snapshots: list[dict], sigma_rel: float, at_update: int | None = None) -> tuple[dict, dict]:
    """The weights of the power-function EMA of width ``sigma_rel`` at update ``at_update`` (the last
    snapshot's by default), from the snapshots up to then. Returns {network: state_dict} and a
    description (the snapshots used, the profile's fit)."""
    target_gamma = sigma_rel_to_gamma(sigma_rel)
    at_update = at_update or snapshots[-1]["updates"]
    used = [s for s in snapshots if s["updates"] <= at_update]
    if not used:
        raise GenlabError(f"no post-hoc EMA snapshot at or before update {at_update}")
    ts, gammas, sources = [], [], []
    for s in used:
        for k, gamma in enumerate(s["gammas"]):
            ts.append(float(s["updates"]))
            gammas.append(float(gamma))
            sources.append((s, k))
    x = solve_coefficients(ts, gammas, float(at_update), target_gamma)
    # how well the combined profile matches the target (relative L2 error of the profiles)
    A = profile_inner_products(ts, gammas, ts, gammas)
    b = profile_inner_products(ts, gammas, [at_update], [target_gamma])[:, 0]
    target_norm = profile_inner_products([at_update], [target_gamma], [at_update], [target_gamma])[0, 0]
    residual = float(np.sqrt(max(x @ A @ x - 2 * x @ b + target_norm, 0.0) / target_norm))
    last = used[-1]
    weights: dict[str, dict[str, torch.Tensor]] = {}
    for name, state in last["networks"][0].items():
        buffers = set(last["buffers"][name])
        weights[name] = {}
        for key, reference in state.items():
            if key in buffers or not reference.is_floating_point():
                weights[name][key] = reference.clone()  # buffers: the latest, as the EMA itself keeps them
                continue
            combined = sum(float(c) * snapshot["networks"][k][name][key].double() for c, (snapshot, k) in zip(x, sources))
            weights[name][key] = combined.to(reference.dtype)
    info = {"sigma_rel": sigma_rel, "gamma": target_gamma, "at_update": at_update, "snapshots": len(used),
            "profile_error": residual}
    return weights, info


def choose(run_dir: Path, sigma_rels: list[float], metric: str, settings, device: torch.device,
           at_update: int | None = None) -> dict:
    """Reconstruct each sigma_rel's EMA from a run's snapshots, score each with ``metric`` on the
    choice split (never the report split: this is a choice), and keep the best as
    ``checkpoints/posthoc-inference.pt``, an inference snapshot `genlab sample` and `genlab eval`
    take like any other. Returns every row, the choice and where it was written."""
    run_dir = require_run_dir(Path(run_dir))
    (metric,) = parse_metrics([metric])
    snapshots = read_snapshots(run_dir)
    method, cfg, payload, _ = load_model(run_dir, device, prefer="last", weights="ema")
    settings = dataclasses.replace(settings, split="choice")
    evaluator = Evaluator(build_dataset(cfg.data), cfg.data, settings, device)
    rows = []
    for sigma_rel in sigma_rels:
        weights, info = reconstruct(snapshots, sigma_rel, at_update)
        for name, state in weights.items():
            method.networks()[name].load_state_dict(state)
        label = (f"{cfg.method} post-hoc EMA sigma_rel={sigma_rel:g} at update {info['at_update']} "
                 f"({info['snapshots']} snapshots, profile error {info['profile_error']:.2%})")
        results, _ = evaluator.score_method(method, [metric], label)
        key = next(iter(results))
        rows.append({**info, "metric": key, "value": results[key]["value"], "protocol": results[key]["protocol"],
                     "weights": weights})
    higher = rows[0]["metric"] in HIGHER_IS_BETTER
    best = (max if higher else min)(rows, key=lambda r: r["value"])
    networks = {name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in method.networks().items()}
    networks.update(best["weights"])
    chosen = {k: v for k, v in best.items() if k != "weights"}
    lean = {**inference_header(cfg, payload["image_shape"], dict(payload["progress"])), "state": {"networks": networks},
            "weights": "posthoc-ema", "posthoc_ema": chosen, "ema_decay": None}
    out = checkpoint_path(run_dir, "posthoc-inference")
    atomic_write(out, lambda tmp: torch.save(lean, tmp), "checkpoint")
    table = [{k: v for k, v in r.items() if k != "weights"} for r in rows]
    atomic_write(run_dir / SNAPSHOT_DIR / "choice.json",
                 lambda tmp: tmp.write_text(json.dumps({"split": "choice", "rows": table, "chosen": chosen,
                                                        "checkpoint": str(out)}, indent=2)), "file")
    return {"rows": table, "chosen": chosen, "checkpoint": out}
