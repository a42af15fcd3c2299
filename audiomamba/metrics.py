"""Metric math: classifier-based scores of generated audio, computed from class probabilities and features.

(Running models over data — the classifier pass, NLL, accuracy, generation — is ``audiomamba.evaluation``.)

The generation scores follow SaShiMi (Goel et al., 2022) and Mamba (Gu & Dao, 2023, §4.4) on SC09: a classifier
trained on the real data scores the generated clips. With p(y|x) the classifier's class probabilities (C classes)
and f(x) its penultimate features (the input of its last linear layer):

- Inception Score:           IS  = exp( E_x KL(p(y|x) || p(y)) ),  p(y) = E_x p(y|x)      (higher is better, <= C)
- modified Inception Score:  mIS = exp( E_{x,x'} KL(p(y|x) || p(y|x')) )  over independent pairs (higher)
- AM score:                  AM  = KL(p_real(y) || p(y)) + E_x H(p(y|x)), p_real(y) the classifier's mean
                             prediction on real data (lower is better, 0 when confident and balanced like it)
- Fréchet distance:          FID = |mu_r - mu_g|² + Tr(S_r + S_g - 2 (S_r S_g)^½) on the features (lower)

Expectations over generated clips are sample means; mIS averages over all n² ordered pairs (x, x') (the
expectation the state-spaces code estimates by drawing pairs with replacement). Covariances are unbiased (n - 1).
All arithmetic is float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS = 1e-12  # probabilities are clamped to >= EPS before logarithms (a one-hot row keeps its exact entropy 0)

# ------------------------------------------------------------------------------------------------ scores


def _as_probs(probs) -> torch.Tensor:
    p = torch.as_tensor(np.asarray(probs) if not torch.is_tensor(probs) else probs).double()
    if p.dim() != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"probs: expected (n, C) with n >= 1 and C >= 2, got {tuple(p.shape)}")
    if (p < 0).any() or not torch.allclose(p.sum(1), torch.ones_like(p[:, 0]), atol=1e-6):
        raise ValueError("probs: rows must be probability vectors (non-negative, summing to 1)")
    return p


def _plogq(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Σ_c p_c log q_c per row pair with the convention 0·log 0 = 0: p (n, C), q (m, C) → (n, m)."""
    return p @ q.clamp_min(EPS).log().T


def entropy(probs) -> torch.Tensor:
    """H(p) = -Σ_c p_c log p_c in nats per row: (n, C) → (n,)."""
    p = _as_probs(probs)
    return -(p * p.clamp_min(EPS).log()).sum(1)


def inception_score(probs) -> float:
    """IS = exp(mean_i KL(p_i || p̄)), p̄ = mean_i p_i. probs: (n, C) class probabilities of generated clips.

    1 for identical predictions (e.g. all uniform); C for confident predictions spread evenly over C classes."""
    p = _as_probs(probs)
    mean = p.mean(0, keepdim=True)  # (1, C)
    kl = -entropy(p) - _plogq(p, mean)[:, 0]  # (n,)
    return float(torch.exp(kl.mean()))


def modified_inception_score(probs) -> float:
    """mIS = exp(mean_{i,j} KL(p_i || p_j)) over all n² ordered pairs. probs: (n, C).

    Rewards confident predictions that differ between clips (within-class diversity does not count)."""
    p = _as_probs(probs)
    kl = (-entropy(p))[:, None] - _plogq(p, p)  # (n, n): KL(p_i || p_j)
    return float(torch.exp(kl.mean()))


def am_score(probs, reference_probs) -> float:
    """AM = KL(p̄_ref || p̄) + mean_i H(p_i). probs: (n, C) generated; reference_probs: (m, C) real data."""
    p, r = _as_probs(probs), _as_probs(reference_probs)
    if p.shape[1] != r.shape[1]:
        raise ValueError(f"am_score: probs have {p.shape[1]} classes, reference_probs {r.shape[1]}")
    p_bar, r_bar = p.mean(0, keepdim=True), r.mean(0, keepdim=True)
    kl = float(-entropy(r_bar)[0] - _plogq(r_bar, p_bar)[0, 0])
    return kl + float(entropy(p).mean())


def _mean_cov(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)  # (F,), (F, F)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix (negative rounding eigenvalues clipped to 0)."""
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(features_a, features_b) -> float:
    """FID = |mu_a - mu_b|² + Tr(S_a + S_b - 2 (S_a S_b)^½) between two sets of features.

    Args:
        features_a: (n, F); features_b: (m, F); n, m >= 2.

    Tr((S_a S_b)^½) is computed as Σ sqrt(eig(S_a^½ S_b S_a^½)) (same eigenvalues, symmetric PSD), exact and
    free of the complex rounding of a general matrix square root. 0 for identical sets; |shift|² for a set and
    its translate.
    """
    a = torch.as_tensor(np.asarray(features_a) if not torch.is_tensor(features_a) else features_a).double()
    b = torch.as_tensor(np.asarray(features_b) if not torch.is_tensor(features_b) else features_b).double()
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (n, F) and (m, F), got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("frechet_distance: need at least 2 feature vectors per set")
    mu_a, s_a = _mean_cov(a)
    mu_b, s_b = _mean_cov(b)
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    tr_covmean = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    fid = (mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * tr_covmean
    return float(fid.clamp_min(0))


# ------------------------------------------------------------------------------------ scores of a clip set


@dataclass
class ClassifierOutputs:
    """A classifier's view of a set of clips: probs (n, C) float64 and penultimate features (n, F) float64."""

    probs: torch.Tensor
    features: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.probs.argmax(1)


def generation_scores(generated: ClassifierOutputs, reference: ClassifierOutputs) -> dict[str, float]:
    """IS, mIS, AM and FID of generated clips against reference (real) clips, both seen by one classifier.

    Returns {"is", "mis", "am", "fid", "n_generated", "n_reference", "class_histogram"}, where the histogram
    counts the generated clips per predicted class."""
    counts = torch.bincount(generated.predictions, minlength=generated.probs.shape[1])
    return {
        "is": inception_score(generated.probs),
        "mis": modified_inception_score(generated.probs),
        "am": am_score(generated.probs, reference.probs),
        "fid": frechet_distance(reference.features, generated.features),
        "n_generated": int(generated.probs.shape[0]),
        "n_reference": int(reference.probs.shape[0]),
        "class_histogram": counts.tolist(),
    }
