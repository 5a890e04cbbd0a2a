"""Calibration: what each layer's input looks like on real images, and what that says about
the output error of a truncated (whitened-SVD) layer — on images the fit did not see.

For a layer y = W x the relative output error of replacing W by W' is
tr(ΔW C ΔWᵀ) / tr(W C Wᵀ) with C = E[x xᵀ] over the layer's input vectors (every spatial
position of a conv's im2col patches and every token is a sample). The whitened SVD (SVD-LLM,
Wang et al. 2024) of W·S, S the Cholesky factor of C, orders directions by what they carry of
the output, so the error of every rank is a tail sum of squared singular values.

Two things keep that prediction honest on new images:
- **shrinkage**: when a layer's input is wider than the calibration samples (a classifier
  after global pooling sees one vector per image), C is singular and the whitened SVD would
  call almost every rank free. The covariance is shrunk towards a scaled identity by the
  Ledoit–Wolf (2004) rule, which adds exactly as much isotropy as the sampling noise calls for;
- **cross-validation**: samples are collected in folds of whole images; for each fold the
  factors are fitted on the other folds and the error is measured on it. The planner uses the
  larger of the fitted and the held-out error, and a layer whose folds disagree beyond what
  their sampling explains is flagged untrusted and kept at a conservative rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .data import take_images
from .devices import resolve_device
from .layers.views import LayerView
from .progress import tqdm

DEFAULT_FOLDS = 4
# A layer is trusted when its worst held-out fold stays within this factor of the mean
# held-out error at the ranks a plan would use (the test asks for predictions within 2×).
TRUST_RATIO = 2.0


@dataclass
class InputStats:
    """Sums over one layer's calibration input vectors, kept per fold of images."""

    dim: int
    folds: int
    gram: list[torch.Tensor] = field(default_factory=list, repr=False)  # Σ x xᵀ, float64
    count: list[int] = field(default_factory=list)  # vectors per fold
    fourth: list[float] = field(default_factory=list)  # Σ ‖x‖⁴ per fold (Ledoit–Wolf)
    images: int = 0

    def __post_init__(self) -> None:
        if not self.gram:
            self.gram = [
                torch.zeros(self.dim, self.dim, dtype=torch.float64) for _ in range(self.folds)
            ]
            self.count = [0] * self.folds
            self.fourth = [0.0] * self.folds

    @property
    def samples(self) -> int:
        return sum(self.count)

    def add(self, vectors: torch.Tensor, fold: int) -> None:
        """Add a batch of input vectors (rows) to `fold`. The product runs in the input's
        precision (float32: fast BLAS; one batch's rounding is far below what the error
        estimates resolve); sums across batches are float64."""
        x = vectors.float()
        self.gram[fold] += (x.T @ x).double().cpu()  # products on the model's device
        self.count[fold] += x.shape[0]
        self.fourth[fold] += float((x.pow(2).sum(dim=1).double() ** 2).sum())

    def _pick(self, folds: list[int] | None) -> list[int]:
        chosen = list(range(self.folds)) if folds is None else folds
        return [f for f in chosen if self.count[f] > 0]

    def covariance(self, folds: list[int] | None = None) -> torch.Tensor:
        """E[x xᵀ] over the given folds (all by default)."""
        chosen = self._pick(folds)
        n = sum(self.count[f] for f in chosen)
        return sum(self.gram[f] for f in chosen) / max(n, 1)

    def shrunk(self, folds: list[int] | None = None) -> tuple[torch.Tensor, float]:
        """Ledoit–Wolf shrinkage of the second moment towards μ·I, μ = tr(C)/d
        (Ledoit & Wolf 2004, Lemma 3.2 with the sample's own fourth moments).

        Returns (shrunk covariance, shrinkage weight in [0, 1])."""
        chosen = self._pick(folds)
        n = sum(self.count[f] for f in chosen)
        cov = self.covariance(chosen)
        d = cov.shape[0]
        mu = float(torch.trace(cov)) / d
        eye = torch.eye(d, dtype=cov.dtype)
        delta2 = float(((cov - mu * eye) ** 2).sum())
        if n == 0 or delta2 <= 0:
            return cov, 0.0
        # (1/n²) Σ‖x xᵀ − C‖²_F = (1/n)·(mean ‖x‖⁴ − ‖C‖²_F)
        fourth = sum(self.fourth[f] for f in chosen) / n
        beta2 = max(0.0, (fourth - float((cov**2).sum())) / n)
        weight = min(beta2, delta2) / delta2
        return (1 - weight) * cov + weight * mu * eye, weight


@torch.no_grad()
def collect_input_stats(
    model: nn.Module,
    views: dict[str, LayerView],
    loader,
    max_images: int,
    folds: int = DEFAULT_FOLDS,
    progress: bool = False,
    device: str | torch.device | None = None,
) -> dict[str, InputStats]:
    """Run `model` on up to `max_images` calibration images and sum each layer's input
    vectors (through its view: padded, unfolded) into `folds` folds, image i in fold i % folds."""
    stats = {name: InputStats(view.matrix_shape[1], folds) for name, view in views.items()}
    offset = {"images": 0}

    def hook(name: str, view: LayerView):
        def collect(_module, args):
            x = args[0].detach()
            per_image = view.samples(x).reshape(x.shape[0], -1, stats[name].dim).float()
            start = offset["images"]
            for fold in range(folds):
                # images start+i with (start + i) % folds == fold
                chosen = per_image[(fold - start) % folds :: folds]
                if len(chosen):
                    stats[name].add(chosen.reshape(-1, stats[name].dim), fold)

        return collect

    handles = [
        view.module.register_forward_pre_hook(hook(name, view)) for name, view in views.items()
    ]
    was_training = model.training
    model.eval()
    target = resolve_device(device, model)
    model.to(target)
    try:
        for images in tqdm(
            take_images(loader, max_images), desc="calibrate", unit="batch", disable=not progress
        ):
            model(images.to(target))
            offset["images"] += len(images)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for s in stats.values():
        s.images = offset["images"]
    return stats


def _svd_via_gram(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of `a` from the eigendecomposition of its smaller Gram matrix (float64).

    Several times faster than an SVD on CPU and exact enough for truncation: directions with
    σ ≈ 0 (which no useful rank keeps) get zero vectors instead of noise.
    """
    wide = a.shape[0] <= a.shape[1]
    gram = a @ a.T if wide else a.T @ a
    eigenvalues, vectors = torch.linalg.eigh(gram)
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1)
    sigma = eigenvalues.sqrt()
    inv = torch.where(sigma > sigma[0] * 1e-10, 1 / sigma, torch.zeros_like(sigma))
    if wide:
        return vectors, sigma, (vectors.T @ a) * inv[:, None]
    return (a @ vectors) * inv[None, :], sigma, vectors.T


# Relative damping (× the mean eigenvalue) tried in turn until the covariance factors.
DAMPING = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor S of the damped second moment. The per-batch products are float32,
    so a covariance with dead input channels and a wide spectrum can come out slightly
    indefinite (EfficientNet-Lite1 on a Xeon: the leading minor of order 133): the damping
    grows tenfold until it factors, and past the last step the eigenvalues are clamped."""
    d = cov.shape[0]
    cov = (cov + cov.T) / 2
    mean = float(torch.trace(cov)) / d
    eye = torch.eye(d, dtype=cov.dtype)
    for rel in DAMPING:
        chol, info = torch.linalg.cholesky_ex(cov + (rel * mean + 1e-12) * eye)
        if int(info) == 0:
            return chol
    values, vectors = torch.linalg.eigh(cov)
    values = values.clamp_min(DAMPING[-1] * mean + 1e-12)
    return torch.linalg.cholesky((vectors * values) @ vectors.T)


def _whiten(matrix: torch.Tensor, cov: torch.Tensor):
    """(U, σ, G) with W·S = U diag(σ) Vᵀ and G = Vᵀ S⁻¹, so that W = U diag(σ) G."""
    chol = _cholesky(cov)
    u, sigma, vh = _svd_via_gram(matrix @ chol)
    right_all = torch.linalg.solve_triangular(chol, vh, upper=False, left=False)  # G·S = Vᵀ
    return u, sigma, right_all


def _tail_errors(energy: torch.Tensor, total: float) -> torch.Tensor:
    """errors[r] = Σ_{i≥r} energy_i / total for r = 0 … p (errors[p] = 0)."""
    tail = energy.flip(0).cumsum(0).flip(0)
    return torch.cat([tail, tail.new_zeros(1)]) / max(total, 1e-30)


@dataclass
class WhitenedFactors:
    """The whitened SVD of one layer and the relative output error of every rank r = 0 … p.

    `fitted[r]`: the error under the (shrunk) calibration covariance the factors were fitted
    on; `heldout[r]`: the cross-validated error (fit on the other folds, measured on each);
    `predicted` is the larger, what plans are made with. `trusted` is False when the folds
    disagree by more than TRUST_RATIO or the layer had fewer input vectors than inputs.
    """

    u: torch.Tensor = field(repr=False)
    sigma: torch.Tensor = field(repr=False)
    right_all: torch.Tensor = field(repr=False)
    fitted: torch.Tensor = field(repr=False)
    heldout: torch.Tensor | None = field(default=None, repr=False)
    fold_worst: torch.Tensor | None = field(default=None, repr=False)
    samples: int = 0
    dim: int = 0
    shrinkage: float = 0.0

    @property
    def predicted(self) -> torch.Tensor:
        return self.fitted if self.heldout is None else torch.maximum(self.fitted, self.heldout)

    def trusted_at(self, rank: int) -> bool:
        """Whether the error predicted for `rank` can be relied on (see the class doc)."""
        if self.samples < self.dim:
            return False
        if self.heldout is None or self.fold_worst is None:
            return True
        mean = float(self.heldout[rank])
        return float(self.fold_worst[rank]) <= TRUST_RATIO * max(mean, 1e-12) or mean < 1e-6

    def factors(self, rank: int, dtype: torch.dtype = torch.float32):
        """(left m×r, right r×n) with W ≈ left @ right, the singular values split √σ·√σ."""
        root = self.sigma[:rank].sqrt()
        return (self.u[:, :rank] * root).to(dtype), (root[:, None] * self.right_all[:rank]).to(
            dtype
        )


def whitened_factors(
    weight: torch.Tensor, stats: InputStats, cross_validate: bool = True, shrink: bool = True
) -> WhitenedFactors:
    """Fit the whitened SVD of `weight` (its matrix view) on the (shrunk) calibration
    covariance, and cross-validate its error over the folds."""
    matrix = weight.detach().reshape(weight.shape[0], -1).double()
    cov, shrinkage = stats.shrunk() if shrink else (stats.covariance(), 0.0)
    u, sigma, right_all = _whiten(matrix, cov)
    energy = sigma**2
    result = WhitenedFactors(
        u,
        sigma,
        right_all,
        _tail_errors(energy, float(energy.sum())),
        samples=stats.samples,
        dim=stats.dim,
        shrinkage=shrinkage,
    )
    usable = [f for f in range(stats.folds) if stats.count[f] > 0]
    if not cross_validate or len(usable) < 2:
        return result
    numerator = torch.zeros_like(result.fitted)
    denominator = 0.0
    per_fold = []
    for fold in usable:
        others = [f for f in usable if f != fold]
        fit_cov = stats.shrunk(others)[0] if shrink else stats.covariance(others)
        fu, fsigma, fright = _whiten(matrix, fit_cov)
        held = stats.covariance([fold])
        # ΔW = Σ_{i>r} σ_i u_i g_iᵀ with orthonormal u_i: tr(ΔW C ΔWᵀ) = Σ_{i>r} σ_i² g_iᵀ C g_i
        quad = ((fright @ held) * fright).sum(dim=1)
        total = float(((matrix @ held) * matrix).sum())
        tail = _tail_errors(fsigma**2 * quad, 1.0)
        numerator += tail * stats.count[fold]
        denominator += total * stats.count[fold]
        per_fold.append(tail / max(total, 1e-30))
    result.heldout = numerator / max(denominator, 1e-30)
    result.fold_worst = torch.stack(per_fold).max(dim=0).values
    return result


def output_error(weight: torch.Tensor, approx: torch.Tensor, cov: torch.Tensor) -> float:
    """Relative output error tr(ΔW C ΔWᵀ) / tr(W C Wᵀ) of `approx` in place of `weight`."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    delta = w - approx.detach().reshape(w.shape).double()
    return float(((delta @ cov) * delta).sum() / ((w @ cov) * w).sum().clamp_min(1e-30))


def rank_for_error(errors: torch.Tensor, eps: float, edge_rank: int, multiple: int = 1) -> int:
    """The smallest rank whose relative output error is ≤ eps, never below the MP edge rank
    (the spikes are signal), rounded up to a multiple of `multiple`."""
    r = int(torch.nonzero(errors <= eps)[0])  # errors[-1] = 0, so one always exists
    r = max(r, edge_rank, 1)
    return min(math.ceil(r / multiple) * multiple, len(errors) - 1)
