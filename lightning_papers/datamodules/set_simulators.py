"""Simulators of sets that share a nuisance, and the helpers that draw simulated sets from them.

``sample(num_sets, set_size, generator) -> (theta [S, p], x [S, N, d])``. Every observation of a set depends on the
target θ and on a nuisance ν drawn once per set, so the elements are iid *given* (θ, ν) but not given θ alone. That
is the regime of "It Just Takes Two" (PAIRS, arXiv 2605.07972, §2; see ``docs/pairs.md``). A simulator may also give
the exact ``log_posterior(theta_grid, x)`` (up to a constant per set) when it is analytic; the metrics then compare
against it.

Plug in your own simulator by subclassing :class:`SetSimulator` (typed ``__init__``, so a config can name it by
``class_path``) and implementing ``sample`` (and ``log_prior``/``log_posterior`` if you have them).

This file is neutral: the datamodule (:mod:`lightning_papers.datamodules.simulated_sets`) and the PAIRS algorithm
(:mod:`lightning_papers.methods.pairs`) both import it, and it imports neither.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence

import torch

LOG_2PI = math.log(2.0 * math.pi)


def normal_log_prob(x: torch.Tensor, loc: torch.Tensor | float, var: torch.Tensor | float) -> torch.Tensor:
    """log N(x; loc, var), elementwise with broadcasting."""
    var = torch.as_tensor(var, dtype=x.dtype)
    return -0.5 * (LOG_2PI + torch.log(var) + (x - loc) ** 2 / var)


class SetSimulator:
    """Base class: a prior over θ ∈ R^p and a simulator of sets x ∈ R^{N×d} that share a nuisance.

    Attributes:
        theta_dim: p, the number of parameters.
        x_dim: d, the dimension of one observation.
        theta_names: one label per parameter (plots and tables).
    """

    theta_dim: int = 1
    x_dim: int = 1
    theta_names: tuple[str, ...] = ("theta",)

    def sample(
        self, num_sets: int, set_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_sets`` parameters θ from the prior and one set of ``set_size`` observations for each."""
        raise NotImplementedError

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        """log p(θ) for ``theta`` of shape [..., p]; returns [...]."""
        raise NotImplementedError(f"{type(self).__name__} has no log_prior")

    def log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(θ | x_{1:N}) + const per set, for ``theta_grid`` [G, p] and ``x`` [S, N, d] -> [S, G]."""
        raise NotImplementedError(f"{type(self).__name__} has no analytic posterior")

    def naive_log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Closed form of log p(θ)^{1−N} Π_i p(θ | x_i) + const, [S, G], or ``None`` (the generic sum is used then).

        Only a speed-up for the naive factorised baseline (``methods/pairs/baselines.py``).
        """
        return None

    @property
    def has_posterior(self) -> bool:
        """Whether :meth:`log_posterior` is implemented (it is analytic)."""
        return type(self).log_posterior is not SetSimulator.log_posterior

    def grid(self, points_per_dim: int) -> torch.Tensor:
        """A regular grid [G, p] covering the prior's bulk (±5 prior sd per dimension), for KL and plots."""
        lo, hi = self.grid_bounds()
        axes = [torch.linspace(a, b, points_per_dim, dtype=torch.float64) for a, b in zip(lo, hi)]
        mesh = torch.meshgrid(*axes, indexing="ij")
        return torch.stack([m.reshape(-1) for m in mesh], dim=-1)

    def grid_bounds(self) -> tuple[list[float], list[float]]:
        """Lower and upper grid bound per parameter."""
        return [-5.0] * self.theta_dim, [5.0] * self.theta_dim


def check_simulation(
    simulator: SetSimulator, theta: torch.Tensor, x: torch.Tensor, num_sets: int, set_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raise ``ValueError`` unless a simulator's output has shapes [S, p] and [S, N, d] and finite values."""
    name = type(simulator).__name__
    if not isinstance(theta, torch.Tensor) or not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}.sample must return two tensors (theta, x), got {type(theta)}, {type(x)}")
    want_theta = (num_sets, simulator.theta_dim)
    want_x = (num_sets, set_size, simulator.x_dim)
    if tuple(theta.shape) != want_theta:
        raise ValueError(f"{name}.sample returned theta of shape {tuple(theta.shape)}, expected [S, p] = {want_theta}")
    if tuple(x.shape) != want_x:
        raise ValueError(f"{name}.sample returned x of shape {tuple(x.shape)}, expected [S, N, d] = {want_x}")
    if not (torch.isfinite(theta).all() and torch.isfinite(x).all()):
        raise ValueError(f"{name}.sample returned non-finite values")
    return theta.float(), x.float()


def simulate(
    simulator: SetSimulator, num_sets: int, set_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``simulator.sample`` with validated arguments and output (float32 tensors)."""
    if num_sets < 1 or set_size < 1:
        raise ValueError(f"num_sets and set_size must be >= 1, got {num_sets} and {set_size}")
    theta, x = simulator.sample(num_sets, set_size, generator)
    return check_simulation(simulator, theta, x, num_sets, set_size)


def derived_seed(*keys: int) -> int:
    """A generator seed determined by ``keys`` (for example seed, rank, step), distinct for distinct keys up to hash
    collisions. torch's CPU generator keeps only 32 bits of a seed, so the keys are hashed, not packed into one
    integer."""
    digest = hashlib.blake2b("/".join(str(int(k)) for k in keys).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def check_sizes(sizes: Sequence[int], name: str) -> list[int]:
    """The set sizes as ints, or ``ValueError`` naming ``name`` unless they are a non-empty list of sizes >= 1."""
    sizes = [int(n) for n in sizes]
    if not sizes or min(sizes) < 1:
        raise ValueError(f"{name} must be a non-empty list of set sizes >= 1, got {sizes}")
    return sizes


def simulate_in_chunks(
    simulator: SetSimulator, num_sets: int, set_sizes: Sequence[int], seed: int, chunk_elements: int = 2**17
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``num_sets`` simulated sets split evenly over ``set_sizes``, yielded as ``(theta, x)`` chunks of at most
    ``chunk_elements`` elements (at least one set), in a fixed order from one generator seeded with ``seed``.

    This is the raw material of the PAIRS stage-2 bank: the chunks are embedded one at a time, so memory stays at one
    chunk whatever N is.
    """
    sizes = check_sizes(set_sizes, "set_sizes")
    if num_sets < len(sizes):
        raise ValueError(f"num_sets ({num_sets}) must be at least the number of set sizes ({len(sizes)})")
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    gen = torch.Generator().manual_seed(seed)
    for i, n in enumerate(sizes):
        todo = num_sets // len(sizes) + (1 if i < num_sets % len(sizes) else 0)
        block = max(1, chunk_elements // n)
        while todo > 0:
            s = min(block, todo)
            yield simulate(simulator, s, n, gen)
            todo -= s


def gaussian_shared_location_log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(θ | x) + const for θ = log σ² ~ N(0, 1), ν ~ N(0, 1), x_i ~ N(ν, e^θ) (ν integrated out).

    With x̄ the mean and S = Σ(x_i − x̄)² (docs/pairs.md, "What the paper claims")::

        log p(θ|x) = log N(θ; 0, 1) − (N−1)/2 · log(2π e^θ) − S / (2 e^θ) + log N(x̄; 0, 1 + e^θ/N) + const

    Args:
        theta: [G] grid of log variances.
        x: [S, N] sets of scalar observations.

    Returns:
        [S, G] unnormalised log posterior (float64).
    """
    x = x.double()
    theta = theta.double()
    n = x.shape[-1]
    xbar = x.mean(-1, keepdim=True)  # [S, 1]
    ss = ((x - xbar) ** 2).sum(-1, keepdim=True)  # [S, 1]
    var = theta.exp()[None, :]  # [1, G]
    out = normal_log_prob(theta[None, :], 0.0, 1.0) - 0.5 * (n - 1) * (LOG_2PI + theta[None, :]) - ss / (2 * var)
    return out + normal_log_prob(xbar, 0.0, 1.0 + var / n)


def gaussian_shared_location_naive_log_posterior(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The naive factorised posterior of the Gaussian model, log p(θ) + Σ_i log N(x_i; 0, 1 + e^θ) + const.

    Each single-observation posterior is p(θ | x_i) ∝ p(θ) N(x_i; 0, 1 + e^θ) (its own ν integrated out), so
    the product only needs N and Σ x_i². Args as :func:`gaussian_shared_location_log_posterior`; returns [S, G].
    """
    x = x.double()
    theta = theta.double()
    n = x.shape[-1]
    v = 1.0 + theta.exp()[None, :]
    sq = (x**2).sum(-1, keepdim=True)
    return normal_log_prob(theta[None, :], 0.0, 1.0) - 0.5 * n * torch.log(v) - sq / (2 * v)


class GaussianSharedLocation(SetSimulator):
    """θ = log σ² ~ N(0, 1); a location ν ~ N(0, 1) shared by the set; x_i ~ N(ν, e^θ).

    The exact posterior is :func:`gaussian_shared_location_log_posterior`; the sufficient statistics are the set
    means of x and x², so an encoder trained on single observations (which only needs x²) is confounded by ν.
    """

    theta_dim = 1
    x_dim = 1
    theta_names = ("log variance",)

    def sample(
        self, num_sets: int, set_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.randn(num_sets, 1, generator=generator)
        nu = torch.randn(num_sets, 1, 1, generator=generator)
        eps = torch.randn(num_sets, set_size, 1, generator=generator)
        return theta, nu + (0.5 * theta).exp()[:, :, None] * eps

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        return normal_log_prob(theta.double(), 0.0, 1.0).sum(-1)

    def log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return gaussian_shared_location_log_posterior(theta_grid[:, 0], x[..., 0])

    def naive_log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return gaussian_shared_location_naive_log_posterior(theta_grid[:, 0], x[..., 0])

    def grid_bounds(self) -> tuple[list[float], list[float]]:
        return [-4.5], [4.5]


class MultivariateGaussianSharedLocation(SetSimulator):
    """The Gaussian model in d dimensions: θ_j = log σ_j² ~ N(0, 1), ν ~ N(0, I_d) shared, x_ij ~ N(ν_j, e^θ_j).

    The exact posterior is the sum over dimensions of the scalar one. It exercises multivariate θ (flow heads).

    Args:
        dim: d = p, the number of dimensions.
    """

    def __init__(self, dim: int = 2) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.theta_dim = self.x_dim = dim
        self.theta_names = tuple(f"log variance {j}" for j in range(dim))

    def sample(
        self, num_sets: int, set_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.randn(num_sets, self.theta_dim, generator=generator)
        nu = torch.randn(num_sets, 1, self.x_dim, generator=generator)
        eps = torch.randn(num_sets, set_size, self.x_dim, generator=generator)
        return theta, nu + (0.5 * theta).exp()[:, None, :] * eps

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        return normal_log_prob(theta.double(), 0.0, 1.0).sum(-1)

    def log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        parts = [gaussian_shared_location_log_posterior(theta_grid[:, j], x[..., j]) for j in range(self.theta_dim)]
        return torch.stack(parts).sum(0)

    def naive_log_posterior(self, theta_grid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        naive = gaussian_shared_location_naive_log_posterior
        parts = [naive(theta_grid[:, j], x[..., j]) for j in range(self.theta_dim)]
        return torch.stack(parts).sum(0)

    def grid_bounds(self) -> tuple[list[float], list[float]]:
        return [-4.5] * self.theta_dim, [4.5] * self.theta_dim


class BumpOnBackground(SetSimulator):
    """A particle-physics toy without a closed-form posterior: a signal bump on a falling background.

    θ = (θ₁, θ₂) with θ₁ ~ N(−1, 1) the logit of the signal fraction f and θ₂ ~ N(0, 1) setting the bump
    location m = 2 + θ₂/2. Each event's energy is y_i ~ f·N(m, width²) + (1 − f)·Exp(1), observed as
    x_i = e^ν · y_i with an energy scale log e^ν = ν ~ N(0, scale_sd²) shared by the whole set (a calibration
    uncertainty), which confounds the bump location with ν.

    Args:
        width: Standard deviation of the signal bump.
        scale_sd: Standard deviation of the shared log energy scale ν.
    """

    theta_dim = 2
    x_dim = 1
    theta_names = ("logit signal fraction", "bump location")

    def __init__(self, width: float = 0.2, scale_sd: float = 0.1) -> None:
        if width <= 0 or scale_sd < 0:
            raise ValueError(f"width must be > 0 and scale_sd >= 0, got {width} and {scale_sd}")
        self.width = width
        self.scale_sd = scale_sd

    def sample(
        self, num_sets: int, set_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        theta = torch.randn(num_sets, 2, generator=generator) + torch.tensor([-1.0, 0.0])
        nu = self.scale_sd * torch.randn(num_sets, 1, 1, generator=generator)
        frac = torch.sigmoid(theta[:, 0])[:, None, None]
        loc = (2.0 + 0.5 * theta[:, 1])[:, None, None]
        is_signal = torch.rand(num_sets, set_size, 1, generator=generator) < frac
        signal = loc + self.width * torch.randn(num_sets, set_size, 1, generator=generator)
        background = -torch.log1p(-torch.rand(num_sets, set_size, 1, generator=generator))
        return theta, nu.exp() * torch.where(is_signal, signal, background)

    def log_prior(self, theta: torch.Tensor) -> torch.Tensor:
        theta = theta.double()
        return normal_log_prob(theta[..., 0], -1.0, 1.0) + normal_log_prob(theta[..., 1], 0.0, 1.0)

    def grid_bounds(self) -> tuple[list[float], list[float]]:
        return [-6.0, -5.0], [4.0, 5.0]
