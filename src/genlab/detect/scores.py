"""How well scores separate fakes (label 1) from reals (label 0): ROC AUC, the true-positive rate
at a fixed false-positive rate, and balanced accuracy at the 0.5 probability threshold. Plain
torch, checked against scikit-learn's ``roc_auc_score`` and ``roc_curve`` in the tests."""

from __future__ import annotations

import torch


def roc_auc(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> float:
    """P(score of a random fake > score of a random real) + 0.5 P(tie): the area under the ROC
    curve, by the Mann-Whitney U statistic with mid-ranks for ties (Hanley & McNeil 1982)."""
    scores = torch.cat([real_scores, fake_scores]).double()
    n_real, n_fake = len(real_scores), len(fake_scores)
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # mid-rank of each tied group: mean of the ranks it spans
    rank_sum = torch.zeros(len(values), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (rank_sum / counts)[inverse]
    u = ranks[n_real:].sum() - n_fake * (n_fake + 1) / 2
    return float(u / (n_real * n_fake))


def roc_points(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """False- and true-positive rates at every distinct threshold ("score >= t is fake"), from the
    highest threshold down, starting at (0, 0): the curve scikit-learn's roc_curve traces (before
    it drops collinear points)."""
    scores = torch.cat([real_scores, fake_scores]).double()
    labels = torch.cat([torch.zeros(len(real_scores)), torch.ones(len(fake_scores))]).double()
    order = scores.argsort(descending=True)
    scores, labels = scores[order], labels[order]
    last_of_group = torch.ones(len(scores), dtype=torch.bool)
    last_of_group[:-1] = scores[1:] != scores[:-1]
    tps = labels.cumsum(0)[last_of_group]
    fps = (1 - labels).cumsum(0)[last_of_group]
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fps / len(real_scores)]), torch.cat([zero, tps / len(fake_scores)])


def tpr_at_fpr(real_scores: torch.Tensor, fake_scores: torch.Tensor, fpr: float = 0.01) -> float:
    """The share of fakes caught at a threshold that flags at most ``fpr`` of the reals: the best
    true-positive rate among the ROC points whose false-positive rate is <= fpr (no interpolation:
    a threshold that exists)."""
    fprs, tprs = roc_points(real_scores, fake_scores)
    return float(tprs[fprs <= fpr + 1e-12].max())


def balanced_accuracy(real_scores: torch.Tensor, fake_scores: torch.Tensor, threshold: float = 0.5) -> float:
    """Mean of the accuracy on reals and on fakes at ``threshold`` (probabilities), so unequal counts
    do not tilt it."""
    return float(((real_scores < threshold).double().mean() + (fake_scores >= threshold).double().mean()) / 2)


BOOTSTRAP_RESAMPLES = 1000


def auc_interval(real_scores: torch.Tensor, fake_scores: torch.Tensor, seed: int = 0,
                 resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the ROC AUC: reals and fakes resampled with replacement,
    each class on its own (stratified), ``resamples`` times from ``seed``. What "at chance" means
    for a control detector: 0.5 inside this interval."""
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        r = real_scores[torch.randint(len(real_scores), (len(real_scores),), generator=generator)]
        f = fake_scores[torch.randint(len(fake_scores), (len(fake_scores),), generator=generator)]
        values.append(roc_auc(r, f))
    tail = (1 - confidence) / 2
    ordered = torch.tensor(values, dtype=torch.float64)
    return float(ordered.quantile(tail)), float(ordered.quantile(1 - tail))
