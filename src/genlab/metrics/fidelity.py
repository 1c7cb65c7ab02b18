"""FID, KID, IS and precision/recall from features, through torch-fidelity's own functions, so the
numbers follow its TensorFlow-exact protocol (KID: 100 subsets of 1,000 with a cubic polynomial
kernel; IS: 10 splits; precision/recall: k = 3 neighbourhoods, Kynkäänniemi et al. 2019)."""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import (
    KEY_METRIC_F_SCORE,
    KEY_METRIC_PRECISION,
    KEY_METRIC_RECALL,
    prc_features_to_metric,
)

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
PR_NEIGHBOURHOOD = 3
RNG_SEED = 2020  # torch-fidelity's default seed for KID subsets and IS shuffling


def statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance in float64 (features are upcast first)."""
    return fid_features_to_statistics(features.double().cpu())


def frechet_distance(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017, eq. 6), via torch-fidelity:
    the trace of the matrix square root is taken as the sum of square roots of the eigenvalues of
    S1 S2 in complex arithmetic, which stays real and finite when the covariances are singular
    (fewer samples than feature dimensions), where sqrtm-based code returns an imaginary part."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def kid(fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    """Kernel inception distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic kernel, mean and
    std over subsets. Subsets shrink to the smaller sample count when fewer than 1,000 are given."""
    size = min(KID_SUBSET_SIZE, len(fake), len(real))
    out = kid_features_to_metric(fake.double(), real.double(), kid_subsets=KID_SUBSETS, kid_subset_size=size,
                                 verbose=False, rng_seed=RNG_SEED)
    return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subset_size": size}


def inception_score(logits: torch.Tensor) -> dict[str, float]:
    out = isc_features_to_metric(logits.double(), splits=IS_SPLITS, shuffle=True, rng_seed=RNG_SEED)
    return {"is": out[KEY_METRIC_ISC_MEAN], "is_std": out[KEY_METRIC_ISC_STD]}


def precision_recall(fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
    out = prc_features_to_metric(fake.float(), real.float(), prc_neighborhood=PR_NEIGHBOURHOOD,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return {"precision": float(out[KEY_METRIC_PRECISION]), "recall": float(out[KEY_METRIC_RECALL]),
            "f_score": float(out[KEY_METRIC_F_SCORE])}
