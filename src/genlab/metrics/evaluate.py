"""One evaluation protocol for every family.

images (uint8) -> features -> statistics -> metric, and every number is stored with a protocol
string that names the data set, split, crop, size, filter, flip, feature extractor and sample
counts, so two numbers can be compared only when their protocols match. Generated images are
always quantised to uint8 before anything sees them, as stored images would be (the
TensorFlow-exact FID protocol that torch-fidelity keeps). Features of the real images are cached
under a key naming all of that, and written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging

import torch

from genlab import distributed
from genlab.config import PROTOCOL_N, DataConfig, EvalSettings
from genlab.data.cache import ImageSplits, cache_root
from genlab.data.convert import bits_per_dim, dequantize, to_model_range, to_uint8
from genlab.data.subsets import random_subset, subset_indices
from genlab.distributed import SINGLE
from genlab.errors import GenlabError
from genlab.io import atomic_write
from genlab.methods.abilities import Reconstructs
from genlab.metrics import fidelity, image, swd
from genlab.metrics.features import DESCRIPTIONS, EXTRACTORS, LOGITS, POOL, extract
from genlab.metrics.ppl import perceptual_path_length
from genlab.metrics.table import (
    INCEPTION_METRICS,
    PIXEL_METRICS,
    SAMPLE_METRICS,
    check_metrics_apply,
    parse_metrics,
)
from genlab.samplers import describe

log = logging.getLogger("genlab")

FEATURE_CACHE_FORMAT = 1
__all__ = ["EvalSettings", "Evaluator", "data_protocol", "flat_values", "parse_metrics"]


def data_protocol(cfg: DataConfig, name: str, split: str, count: int) -> str:
    scheme = cfg.split
    crop = f"crop {cfg.crop}" if cfg.crop else "largest centred square"
    part = f", part {cfg.part}/{cfg.num_parts}" if cfg.num_parts > 1 else ""
    return (f"{name} {split} split ({scheme}, seed {cfg.split_seed}{part}), {count} images, {crop}, "
            f"{cfg.size}x{cfg.size} {cfg.resize_filter}, {cfg.channels} ch, no flip")


class Evaluator:
    """Scores images, or a model, against one real data set under one protocol."""

    def __init__(self, data: ImageSplits, data_cfg: DataConfig, settings: EvalSettings, device: torch.device):
        self.data, self.cfg, self.s, self.device = data, data_cfg, settings, device
        self._extractor = None

    # -- real data ---------------------------------------------------------------------------
    def scored_split(self) -> str:
        """The real split every metric of this evaluation uses: ``settings.split`` (a role, choice or
        report, or a split's name); by default the report split, apart from the one choices are made on."""
        return self.data.resolve_split(self.s.split or "report")

    def split_images(self, split: str) -> torch.Tensor:
        if not self.data.has(split):
            have = [s for s in ("train", "val", "test") if self.data.has(s)]
            raise GenlabError(f"the {self.data.name} data has no {split} split here; choose --split {' or '.join(have)}")
        return self.data.split(split)

    def held_out(self, n: int) -> tuple[torch.Tensor, str, str]:
        """``n`` images of the scored split (a seeded random subset, or all of it; never its first n:
        splits are stored in key order, which a folder source sorts by class), with their description."""
        split = self.scored_split()
        images, how = random_subset(self.split_images(split), n, self.s.seed, split)
        return images, split, how

    def extractor(self):
        if self._extractor is None:
            self._extractor = EXTRACTORS.get(self.s.extractor)(self.s.inception_weights)
        return self._extractor

    def feature_key(self, split: str, count: int) -> dict:
        return {"data": self.data.cache_dir.name if self.data.cache_dir else self.data.name, "split": split,
                "count": count, "flip": False, "extractor": self.s.extractor, "layers": [POOL, LOGITS],
                "format": FEATURE_CACHE_FORMAT}

    def reference_features(self, split: str) -> dict[str, torch.Tensor]:
        """Features of every image of ``split``, from the cache when its key matches exactly."""
        images = self.split_images(split)
        key = self.feature_key(split, len(images))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_root(self.cfg) / "features" / f"{self.s.extractor}-{digest}.pt"
        if path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored.get("key") == key:
                    log.info("reference features: cache hit %s", path)
                    return {k: v.double() for k, v in stored["features"].items()}
            except Exception:
                log.warning("reference features at %s are unreadable; recomputing", path)
        log.info("reference features: extracting %d %s images (%s)", len(images), split, self.s.extractor)
        features = extract(self.extractor(), images, self.device, self.s.batch_size)
        stored = {"key": key, "features": {k: v.float() for k, v in features.items()}}
        atomic_write(path, lambda tmp: torch.save(stored, tmp), "reference features")
        return features

    # -- scoring -------------------------------------------------------------------------------
    def score_images(self, fake: torch.Tensor, metrics: list[str], fake_label: str,
                     fake_features: dict[str, torch.Tensor] | None = None) -> dict[str, dict]:
        """Sample-based metrics of uint8 ``fake`` images against the reference split (features of
        ``fake`` may be given, when other processes extracted them)."""
        results: dict[str, dict] = {}
        split = self.scored_split()
        real = self.split_images(split)
        if fake.shape[1:] != real.shape[1:]:
            raise GenlabError(f"generated images are {tuple(fake.shape[1:])} but the {self.data.name} data is "
                              f"{tuple(real.shape[1:])}; compare like with like")
        real_desc = data_protocol(self.cfg, self.data.name, split, len(real))
        wanted_inception = [m for m in metrics if m in INCEPTION_METRICS]
        if wanted_inception:
            count = len(fake_features[POOL]) if fake_features else len(fake)
            if count < PROTOCOL_N:
                log.warning("%d generated images: FID and KID from fewer than %d samples are biased (FID upward); "
                            "compare only numbers with the same sample count", count, PROTOCOL_N)
            real_f = self.reference_features(split)
            fake_f = fake_features or extract(self.extractor(), fake, self.device, self.s.batch_size)
            protocol = f"{fake_label} vs {real_desc} | {DESCRIPTIONS[self.s.extractor]} | torch-fidelity"
            if "fid" in metrics:
                value = fidelity.frechet_distance(fidelity.statistics(fake_f[POOL]), fidelity.statistics(real_f[POOL]))
                results["fid"] = {"value": value, "protocol": protocol}
            if "kid" in metrics:
                out = fidelity.kid(fake_f[POOL], real_f[POOL])
                results["kid"] = {"value": out["kid"], "std": out["kid_std"],
                                  "protocol": f"{protocol}, {fidelity.KID_SUBSETS} subsets of {out['kid_subset_size']}"}
            if "is" in metrics:
                out = fidelity.inception_score(fake_f[LOGITS])
                results["is"] = {"value": out["is"], "std": out["is_std"],
                                 "protocol": f"{fake_label} | {DESCRIPTIONS[self.s.extractor]}, {fidelity.IS_SPLITS} splits"}
            if "pr" in metrics:
                out = fidelity.precision_recall(fake_f[POOL], real_f[POOL])
                for k in ("precision", "recall"):
                    results[k] = {"value": out[k], "protocol": f"{protocol}, k={fidelity.PR_NEIGHBOURHOOD}"}
        if "swd" in metrics:
            n = min(len(fake), len(real), self.s.swd_images)
            out = swd.sliced_wasserstein_distance(fake[:n], real[subset_indices(len(real), n, self.s.seed)], seed=self.s.seed)
            results["swd"] = {"value": out["swd"], "levels": out["swd_levels"], "protocol": (
                f"{n} of {fake_label} vs {n} random of {real_desc} | Laplacian pyramid to {swd.MIN_LEVEL_SIZE}px, "
                f"{swd.DESCRIPTORS_PER_IMAGE} 7x7 descriptors/image, {swd.DIRECTIONS} directions, x1e3, mean over levels")}
        if "msssim" in metrics:
            pairs = self.s.pairs
            kernel, betas = image.ms_ssim_setup(fake.shape[-1])
            results["msssim"] = {
                "value": image.pairwise_ms_ssim(fake, pairs, self.s.seed),
                "real": image.pairwise_ms_ssim(real, pairs, self.s.seed),
                "protocol": f"mean MS-SSIM of {pairs} random pairs within {fake_label} ('real': within {real_desc}); "
                            f"{len(betas)} scales, {kernel}x{kernel} window (torchmetrics); lower is more diverse"}
        if "nn" in metrics:
            train = self.split_images("train")
            m = min(len(fake), self.s.nn_samples)
            index, dist = image.nearest_neighbours(fake[:m], train)
            results["nn"] = {"value": dist.mean().item(), "min": dist.min().item(),
                             "nearest": index[:64].tolist(), "distances": [round(d, 5) for d in dist[:64].tolist()],
                             "protocol": f"RMS pixel distance in [0,1] from each of {m} of {fake_label} to its nearest "
                                         f"of {len(train)} {self.data.name} train images (0 = a copy)"}
        return results

    def _sharded_samples(self, method, metrics: list[str], info) -> tuple[torch.Tensor | None, dict | None]:
        """Generation (and feature extraction) split over the processes of a DDP job by seed range,
        gathered on rank 0 in rank order: the same images and features as one process makes."""
        share = -(-self.s.n // info.world_size)
        first = min(self.s.n, info.rank * share)
        count = min(share, self.s.n - first)
        local = method.sample(count, self.s.seed + first, batch_size=self.s.batch_size)
        features = None
        if any(m in INCEPTION_METRICS for m in metrics):
            mine = extract(self.extractor(), local, self.device, self.s.batch_size) if count else {}
            parts = distributed.gather_to_main(mine, info)
            if info.is_main:
                features = {k: torch.cat([p[k] for p in parts if p]) for k in mine}
        samples = local[:0]  # pixels travel only when a pixel metric needs them
        if any(m in PIXEL_METRICS for m in metrics):
            parts = distributed.gather_to_main(local, info)
            samples = torch.cat(parts) if info.is_main else None
        return samples, features

    def score_method(self, method, metrics: list[str], checkpoint_label: str,
                     info=None, samples: torch.Tensor | None = None) -> tuple[dict, torch.Tensor | None]:
        """Every requested metric for a trained family (those it cannot give are refused first, by
        its declared abilities). Returns results and the generated samples; ``samples`` given are
        this model's images of the same seeds (an earlier call's), scored again instead of drawn
        again (against another split). Under DDP (``info``), every rank must call this: generation
        and feature extraction are shared, rank 0 gets the results and the other ranks an empty dict."""
        check_metrics_apply(metrics, type(method), "metrics")
        info = info or SINGLE
        results: dict[str, dict] = {}
        sample_metrics = [m for m in metrics if m in SAMPLE_METRICS]
        samples = None
        if sample_metrics:
            if any(m in INCEPTION_METRICS for m in metrics):
                self.extractor()  # fail at once on missing weights, before generating anything
            features = None
            if samples is not None:
                if len(samples) != self.s.n:
                    raise ValueError(f"{len(samples)} samples given for an evaluation of {self.s.n}")
            elif info.enabled:
                samples, features = self._sharded_samples(method, sample_metrics, info)
            else:
                samples = method.sample(self.s.n, self.s.seed, batch_size=self.s.batch_size)
            label = (f"{self.s.n} samples of {checkpoint_label} (seeds {self.s.seed}..{self.s.seed + self.s.n - 1}, "
                     f"sampler {describe(method.sampling)}, uint8)")
            if info.is_main:
                results.update(self.score_images(samples, sample_metrics, label, features))
        if not info.is_main:
            return {}, None
        model_results: dict[str, dict] = {}
        if "recon" in metrics:
            model_results.update(self.reconstruction(method))
        if "bpd" in metrics:
            model_results.update(self.bits_per_dim(method))
        if "ppl" in metrics:
            model_results.update(perceptual_path_length(method, self.s, self.device, self.s.ppl_similarity))
        for r in model_results.values():  # which model (checkpoint, step, weights) they measure
            r["protocol"] = f"{checkpoint_label} | {r['protocol']}"
        results.update(model_results)
        return results, samples

    def reconstruction(self, method) -> dict[str, dict]:
        if not isinstance(method, Reconstructs):
            raise GenlabError(f"reconstruction metrics need an encoder; method {method.name!r} has none")
        originals, split, how = self.held_out(self.s.n)
        recon = reconstruct_images(method, originals, self.device, self.s.batch_size)
        per_image = image.reconstruction_metrics(originals, recon)
        protocol = (f"{len(originals)} images of {data_protocol(self.cfg, self.data.name, split, len(self.split_images(split)))}"
                    f" ({how}); "
                    f"{(type(method).reconstruct.__doc__ or 'reconstruct').strip().splitlines()[0].rstrip('.')} "
                    "(the family's reconstruct), "
                    "quantised to uint8; [0,1] units")
        out = {}
        for name, values in per_image.items():
            detail = "SSIM 11x11 Gaussian window (torchmetrics)" if name == "ssim" else "PSNR data range 1" if name == "psnr" else "mean squared error"
            out[name] = {"value": values.mean().item(), "per_image": [round(v, 6) for v in values[:10].tolist()],
                         "protocol": f"{protocol}; {detail}; per_image lists the first 10 of the subset"}
        return out

    def bits_per_dim(self, method) -> dict[str, dict]:
        """-log2 p(x) / D on held-out images, with uniform dequantisation (genlab.data.convert): an
        upper bound on the discrete model's bits per dimension, exact or bounded as the family says."""
        images, split, chosen = self.held_out(self.s.n)
        generator = torch.Generator().manual_seed(self.s.seed)
        d = images[0].numel()
        total, how = [], ""
        calibration, _ = random_subset(self.split_images("train"), self.s.likelihood_calibration, self.s.seed, "train")
        with method.evaluating():
            method.fit_likelihood(to_model_range(calibration).to(self.device))
            for i in range(0, len(images), self.s.batch_size):
                x = images[i : i + self.s.batch_size]
                x_model = dequantize(x, torch.rand(x.shape, generator=generator)).to(self.device)
                log_p, how = method.log_likelihood(x_model)
                total.append(bits_per_dim(log_p.cpu(), d))
        bpd = torch.cat(total)
        return {"bpd": {"value": bpd.mean().item(), "protocol": (
            f"{len(images)} images of {data_protocol(self.cfg, self.data.name, split, len(self.split_images(split)))} "
            f"({chosen}); uniform dequantisation (one draw, seed {self.s.seed}), 8-bit, bits on the [0,255] scale; {how}")}}


def reconstruct_images(method, originals: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """uint8 images -> uint8 reconstructions (the posterior mean for a VAE), in eval mode."""
    with method.evaluating():
        return torch.cat([to_uint8(method.reconstruct(to_model_range(originals[i : i + batch_size].to(device)))).cpu()
                          for i in range(0, len(originals), batch_size)])


def flat_values(results: dict[str, dict]) -> dict[str, float]:
    """{metric: value} for logs and early stopping."""
    return {k: v["value"] for k, v in results.items() if isinstance(v.get("value"), (int, float))}
