"""The table of metrics: what each one needs from a family, what it produces, and which way is
better. A family's abilities (:mod:`genlab.methods.abilities`) and ``latent_kind`` decide
which metrics apply to it, when a config is resolved and when `genlab eval` picks its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from genlab.errors import GenlabError
from genlab.methods.abilities import Encoder, Likelihood
from genlab.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    summary: str
    needs: tuple[str, ...]  # abilities of the family: samples | encoder (learned) | likelihood | latent
    results: tuple[str, ...]  # names of the numbers it produces
    weights: str = ""  # pretrained network it needs: inception | lpips | ""
    higher_is_better: tuple[str, ...] = ()  # results for which larger is better


METRICS: Registry = Registry("metric")
for _name, _spec, _aliases in (
    ("fid", MetricSpec("Fréchet Inception distance", ("samples",), ("fid",), "inception"), ()),
    ("kid", MetricSpec("kernel Inception distance", ("samples",), ("kid",), "inception"), ()),
    ("is", MetricSpec("Inception score", ("samples",), ("is",), "inception", ("is",)), ()),
    ("pr", MetricSpec("precision and recall (k = 3)", ("samples",), ("precision", "recall"), "inception",
                      ("precision", "recall", "f_score")), ("precision", "recall")),
    ("swd", MetricSpec("sliced Wasserstein distance, Laplacian pyramid", ("samples",), ("swd",)), ()),
    ("msssim", MetricSpec("MS-SSIM between sample pairs (diversity)", ("samples",), ("msssim",)), ("diversity",)),
    ("nn", MetricSpec("RMS distance to the nearest training image", ("samples",), ("nn",)), ("memorization",)),
    ("recon", MetricSpec("MSE, PSNR, SSIM of reconstructions", ("encoder",), ("mse", "psnr", "ssim"), "",
                         ("psnr", "ssim")), ("mse", "psnr", "ssim")),
    ("bpd", MetricSpec("bits per dimension", ("likelihood",), ("bpd",)), ()),
    ("ppl", MetricSpec("perceptual path length", ("latent",), ("ppl",), "lpips"), ()),
):
    METRICS.register(_name, _aliases)(_spec)

ALL_METRICS = ("fid", "kid", "is", "pr", "swd", "msssim", "nn", "recon", "bpd", "ppl")  # in the order they print
INCEPTION_METRICS = tuple(m for m in ALL_METRICS if METRICS.get(m).weights == "inception")
SAMPLE_METRICS = tuple(m for m in ALL_METRICS if "samples" in METRICS.get(m).needs)
PIXEL_METRICS = tuple(m for m in SAMPLE_METRICS if m not in INCEPTION_METRICS)  # need no pretrained network
HIGHER_IS_BETTER = frozenset(r for m in ALL_METRICS for r in METRICS.get(m).higher_is_better)

ABILITY_WORDS = {"encoder": "a learned encoder", "likelihood": "a likelihood", "latent": "a latent space that generate(z) maps to images",
                 "samples": "a sampler"}


def parse_metrics(text: str | list[str]) -> list[str]:
    """Metric names (comma-separated or a list, aliases allowed) -> registered names, without repeats."""
    names = text.split(",") if isinstance(text, str) else list(text)
    out: list[str] = []
    for name in (n.strip().lower() for n in names if n.strip()):
        name = METRICS.canonical(name)
        if name not in out:
            out.append(name)
    return out


def abilities(method_cls) -> set[str]:
    """What a family declares it can do, in the words of MetricSpec.needs."""
    have = {"samples"} if method_cls.samplers else set()
    # A *learned* encoder: RealNVP reconstructs by exact inversion, which `genlab reconstruct` shows but
    # a reconstruction score beside the VAEs' would compare an identity map with lossy codes.
    if issubclass(method_cls, Encoder):
        have.add("encoder")
    if issubclass(method_cls, Likelihood):
        have.add("likelihood")
    if method_cls.latent_kind in ("flat", "image"):
        have.add("latent")
    return have


def check_metrics_apply(metrics: list[str], method_cls, where: str = "eval.metrics") -> None:
    """Refuse, naming the metric and the missing ability, a metric the family cannot give."""
    have = abilities(method_cls)
    for metric in metrics:
        missing = [n for n in METRICS.get(metric).needs if n not in have]
        if missing:
            raise GenlabError(f"{where}: {metric} needs {ABILITY_WORDS[missing[0]]}, and method {method_cls.name!r} "
                              f"has none")


def default_metrics(method_cls) -> list[str]:
    """Every metric that applies to the family, except PPL (it needs LPIPS weights and many generator
    passes; ask for it by name)."""
    have = abilities(method_cls)
    return [m for m in ALL_METRICS if m != "ppl" and set(METRICS.get(m).needs) <= have]
