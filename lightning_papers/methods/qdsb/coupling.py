"""Couplings of two point clouds for simulation-free bridge training, all behind one interface.

``c.fit(x0, x1)`` prepares the coupling, ``i0, i1 = c.sample(batch_size)`` draws index pairs into ``x0`` and
``x1``, ``c.expected_cost()`` is the expected squared distance ``E|x0[i0] - x1[i1]|^2`` of the coupling.

* :class:`QuantizedCoupling` (QDSB, arXiv 2605.11983): anchors per marginal, one k x k OT plan, lifted to
  data points by drawing a uniform member of each cell. Nothing is solved per step; a draw is O(batch),
  independent of N (a searchsorted on the plan's CDF plus sorted-cell offsets and random integers).
* :class:`MinibatchOTCoupling` ([SF]2M-Exact / OT-CFM): every draw solves a B x B plan between random batches.
* :class:`IndependentCoupling` (I-CFM): uniform independent indices.
* :class:`ExactOTCoupling`: the full N0 x N1 exact plan (small N only), the reference QDSB approximates.

The state needed to sample (cells, plan) is in ``state_dict()`` so that, under DDP, rank 0 can fit and
broadcast it and every rank samples from the same global plan. No Lightning here.
"""

from __future__ import annotations

import torch

from lightning_papers.methods.qdsb.anchors import check_points, quantize
from lightning_papers.methods.qdsb.transport import solve_plan, sq_cost


def check_pair(x0: torch.Tensor, x1: torch.Tensor) -> None:
    """Both clouds finite ``(N, d)`` float tensors with the same ``d`` on the same device."""
    check_points(x0, "x0")
    check_points(x1, "x1")
    if x0.shape[1] != x1.shape[1]:
        raise ValueError(f"x0 and x1 must have the same dimension, got d={x0.shape[1]} and d={x1.shape[1]}")
    if x0.device != x1.device:
        raise ValueError(f"x0 and x1 must be on the same device, got {x0.device} and {x1.device}")


def check_ot(ot: str, epsilon: float | None) -> None:
    """The plan solver is ``exact`` or ``sinkhorn``, and Sinkhorn has a positive epsilon."""
    if ot not in ("exact", "sinkhorn"):
        raise ValueError(f"ot must be 'exact' or 'sinkhorn', got {ot!r}")
    if ot == "sinkhorn" and (epsilon is None or epsilon <= 0):
        raise ValueError(f"ot='sinkhorn' needs epsilon > 0 (the [SF]2M choice is 2 * sigma**2), got {epsilon}")


def describe_ot(ot: str, epsilon: float | None) -> str:
    """``"exact OT"`` or ``"sinkhorn OT, epsilon=..."`` for log lines."""
    return f"{ot} OT" + (f", epsilon={epsilon:g}" if ot == "sinkhorn" else "")


class Coupling:
    """Base class: subclasses implement ``fit``, ``sample`` and ``expected_cost``."""

    method_name: str = "coupling"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.fitted = False

    def _make_generator(self, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed)
        return gen

    def reseed(self, seed: int) -> None:
        """Re-seed the sampling RNG (e.g. ``seed + rank`` so that DDP ranks draw different pairs)."""
        self.seed = seed
        if self.generator is not None:
            self.generator.manual_seed(seed)

    def _require_fit(self) -> None:
        if not self.fitted:
            raise RuntimeError(f"{type(self).__name__}.fit(x0, x1) must be called before sampling")

    def fit(self, x0: torch.Tensor, x1: torch.Tensor) -> Coupling:
        """Check the clouds, keep them, prepare the coupling (``_fit``) and a fresh seeded RNG."""
        check_pair(x0, x1)
        self._fit(x0, x1)
        self.x0, self.x1 = x0, x1
        self.generator = self._make_generator(x0.device)
        self.fitted = True
        return self

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` index pairs ``(i0, i1)`` into ``x0`` and ``x1``, on their device."""
        self._require_fit()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return self._sample(batch_size)

    def _fit(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        """Subclass work of :meth:`fit` (inputs already checked)."""

    def _sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def expected_cost(self) -> float:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that fully determine the coupling (CPU copies), for checkpoints and DDP broadcast."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor], x0: torch.Tensor, x1: torch.Tensor) -> None:
        """Adopt a fitted state (e.g. broadcast from rank 0) for the clouds ``x0``, ``x1`` held on this rank."""
        self.fit(x0, x1)

    def describe(self) -> str:
        """One line naming the coupling and its OT method, for logs."""
        return self.method_name


class IndependentCoupling(Coupling):
    """Independent pairs, ``i0`` and ``i1`` uniform (I-CFM; QDSB with one anchor per side)."""

    method_name = "independent"

    def _sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.x0.device
        i0 = torch.randint(self.x0.shape[0], (batch_size,), generator=self.generator, device=dev)
        i1 = torch.randint(self.x1.shape[0], (batch_size,), generator=self.generator, device=dev)
        return i0, i1

    def expected_cost(self) -> float:
        """Exact: ``E|x|^2 + E|y|^2 - 2 E[x].E[y]`` over the two empirical measures."""
        self._require_fit()
        x0, x1 = self.x0.double(), self.x1.double()
        return float((x0**2).sum(1).mean() + (x1**2).sum(1).mean() - 2 * x0.mean(0) @ x1.mean(0))


class _PlanSampler:
    """Draws flat indices from a (possibly sparse) plan in O(batch log nnz) via its CDF."""

    def __init__(self, plan: torch.Tensor) -> None:
        flat = plan.reshape(-1).double()
        self.support = torch.nonzero(flat > 0).squeeze(1)
        w = flat[self.support]
        self.cdf = torch.cumsum(w / w.sum(), 0)
        self.cdf[-1] = 1.0
        self.n_cols = plan.shape[1]

    def draw(self, n: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(n, generator=generator, device=self.cdf.device, dtype=torch.float64)
        pos = torch.searchsorted(self.cdf, u, right=True).clamp_max(self.cdf.shape[0] - 1)
        flat = self.support[pos]
        return flat // self.n_cols, flat % self.n_cols


class _CellSampler:
    """Uniform member of a cell: points sorted by cell, ``offset[c] + floor(u * count[c])`` (O(1) per draw)."""

    def __init__(self, cells: torch.Tensor, n_cells: int) -> None:
        self.order = torch.argsort(cells, stable=True)
        self.counts = torch.bincount(cells, minlength=n_cells)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def draw(self, cell: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(cell.shape[0], generator=generator, device=cell.device, dtype=torch.float64)
        cnt = self.counts[cell]
        within = torch.minimum((u * cnt).long(), cnt - 1)
        return self.order[self.offsets[cell] + within]


class QuantizedCoupling(Coupling):
    """QDSB coupling: k anchors per marginal, one anchor OT plan, lifted by uniform sampling inside cells.

    Args:
        n_anchors: Anchors per marginal (k). Paper defaults: 256 for toy and single-cell data, 512 for images.
            Pick k so the covering radius is about sigma or smaller (on the toys the gain levels off from
            k ~ 64, see docs/qdsb.md).
        anchors: ``"farthest_first"`` (greedy k-center, the paper's choice) or ``"kmeans"`` (Lloyd from it).
        ot: ``"exact"`` (``ot.emd``, what the reference runs use) or ``"sinkhorn"`` (entropic, as the paper
            text says; log-domain torch, runs on the data's device).
        epsilon: Entropic regulariser for ``ot="sinkhorn"`` ([SF]2M: 2 sigma^2); ignored for exact.
        n_restarts: Farthest-first random starts; the smallest covering radius wins (reference: 10 for images).
        seed: Seed of the anchor starts and of the pair draws.
    """

    method_name = "qdsb"

    def __init__(
        self,
        n_anchors: int = 256,
        anchors: str = "farthest_first",
        ot: str = "exact",
        epsilon: float | None = None,
        n_restarts: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if n_anchors < 1:
            raise ValueError(f"n_anchors must be >= 1, got {n_anchors}")
        if anchors not in ("farthest_first", "kmeans"):
            raise ValueError(f"anchors must be 'farthest_first' or 'kmeans', got {anchors!r}")
        check_ot(ot, epsilon)
        self.n_anchors, self.anchors, self.ot, self.epsilon, self.n_restarts = (
            n_anchors,
            anchors,
            ot,
            epsilon,
            n_restarts,
        )

    def describe(self) -> str:
        return f"qdsb(k={self.n_anchors}, anchors={self.anchors}, anchor plan by {describe_ot(self.ot, self.epsilon)})"

    def fit(self, x0: torch.Tensor, x1: torch.Tensor) -> QuantizedCoupling:
        check_pair(x0, x1)
        gen = torch.Generator(device=x0.device)
        gen.manual_seed(self.seed)
        q0 = quantize(x0, self.n_anchors, self.anchors, self.n_restarts, gen)
        q1 = quantize(x1, self.n_anchors, self.anchors, self.n_restarts, gen)
        cost = sq_cost(q0.anchors.double(), q1.anchors.double())
        plan = solve_plan(q0.weights.to(cost.device), q1.weights.to(cost.device), cost, self.ot, self.epsilon)
        self.radius0, self.radius1 = q0.radius, q1.radius
        self.anchors0, self.anchors1 = q0.anchors, q1.anchors
        self._set_state(x0, x1, q0.cells, q1.cells, plan)
        return self

    def _set_state(
        self, x0: torch.Tensor, x1: torch.Tensor, cells0: torch.Tensor, cells1: torch.Tensor, plan: torch.Tensor
    ) -> None:
        dev = x0.device
        self.x0, self.x1 = x0, x1
        self.cells0, self.cells1, self.plan = cells0.to(dev), cells1.to(dev), plan.to(dev, torch.float64)
        self._plan_sampler = _PlanSampler(self.plan)
        self._cells0 = _CellSampler(self.cells0, self.plan.shape[0])
        self._cells1 = _CellSampler(self.cells1, self.plan.shape[1])
        self.generator = self._make_generator(dev)
        self.fitted = True

    def _sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        a0, a1 = self._plan_sampler.draw(batch_size, self.generator)
        return self._cells0.draw(a0, self.generator), self._cells1.draw(a1, self.generator)

    def expected_cost(self) -> float:
        """Exact: ``sum_ab P_ab (q_a + r_b - 2 mu_a . nu_b)`` with per-cell means mu, nu and mean norms q, r."""
        self._require_fit()
        stats = []
        for x, cells, k in ((self.x0, self.cells0, self.plan.shape[0]), (self.x1, self.cells1, self.plan.shape[1])):
            xd = x.double()
            cnt = torch.bincount(cells, minlength=k).double()
            mean = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, cells, xd)
            sq = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, cells, (xd**2).sum(1))
            stats.append((mean / cnt[:, None], sq / cnt))
        (mu, q), (nu, r) = stats
        pair_cost = q[:, None] + r[None, :] - 2.0 * mu @ nu.T
        p = self.plan / self.plan.sum()
        return float((p * pair_cost).sum())

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._require_fit()
        return {"cells0": self.cells0.cpu(), "cells1": self.cells1.cpu(), "plan": self.plan.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor], x0: torch.Tensor, x1: torch.Tensor) -> None:
        check_pair(x0, x1)
        if state["cells0"].shape[0] != x0.shape[0] or state["cells1"].shape[0] != x1.shape[0]:
            raise ValueError(
                f"state was fitted on {state['cells0'].shape[0]} x {state['cells1'].shape[0]} points, "
                f"got clouds of {x0.shape[0]} x {x1.shape[0]}"
            )
        self._set_state(x0, x1, state["cells0"], state["cells1"], state["plan"])


class ExactOTCoupling(Coupling):
    """The full exact OT plan between the two empirical measures (``ot.emd``, O(N^3); N0 * N1 <= max_pairs)."""

    method_name = "exact_ot"

    def __init__(self, max_pairs: int = 16_777_216, seed: int = 0) -> None:
        super().__init__(seed)
        self.max_pairs = max_pairs

    def _fit(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        if x0.shape[0] * x1.shape[0] > self.max_pairs:
            raise ValueError(
                f"ExactOTCoupling needs an N0 x N1 = {x0.shape[0]} x {x1.shape[0]} plan, above max_pairs="
                f"{self.max_pairs}; use QuantizedCoupling for large N"
            )
        cost = sq_cost(x0.double(), x1.double())
        a = torch.full((x0.shape[0],), 1.0 / x0.shape[0], dtype=torch.float64, device=x0.device)
        b = torch.full((x1.shape[0],), 1.0 / x1.shape[0], dtype=torch.float64, device=x0.device)
        self.plan = solve_plan(a, b, cost, "exact")
        self._cost = float((self.plan * cost).sum() / self.plan.sum())
        self._sampler = _PlanSampler(self.plan)

    def _sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._sampler.draw(batch_size, self.generator)

    def expected_cost(self) -> float:
        self._require_fit()
        return self._cost


class MinibatchOTCoupling(Coupling):
    """Minibatch OT: each draw solves a B x B plan between uniform random batches and resamples pairs from it.

    This is [SF]2M-Exact / OT-CFM (TorchCFM ``OTPlanSampler``): the plan only sees the batch, so its cost is
    higher than the global plan's and every step pays for an OT solve.

    Args:
        batch_size: B, the size of each minibatch OT problem.
        ot: ``"exact"`` (``ot.emd`` on the CPU) or ``"sinkhorn"`` (log-domain torch, on the data's device).
        epsilon: Entropic regulariser for Sinkhorn ([SF]2M: 2 sigma^2).
        n_estimate: Minibatches averaged by :meth:`expected_cost` (a Monte-Carlo estimate).
        seed: Seed of the batch and pair draws.
    """

    method_name = "minibatch_ot"

    def __init__(
        self,
        batch_size: int = 256,
        ot: str = "exact",
        epsilon: float | None = None,
        n_estimate: int = 32,
        seed: int = 0,
    ) -> None:
        super().__init__(seed)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_ot(ot, epsilon)
        self.batch_size, self.ot, self.epsilon, self.n_estimate = batch_size, ot, epsilon, n_estimate

    def describe(self) -> str:
        return f"minibatch_ot(B={self.batch_size}, plan by {describe_ot(self.ot, self.epsilon)})"

    def _one_batch(self, n_pairs: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        dev, b = self.x0.device, self.batch_size
        j0 = torch.randint(self.x0.shape[0], (b,), generator=self.generator, device=dev)
        j1 = torch.randint(self.x1.shape[0], (b,), generator=self.generator, device=dev)
        cost = sq_cost(self.x0[j0].double(), self.x1[j1].double())
        w = torch.full((b,), 1.0 / b, dtype=torch.float64, device=dev)
        plan = solve_plan(w, w, cost, self.ot, self.epsilon)
        r, c = _PlanSampler(plan).draw(n_pairs, self.generator)
        return j0[r], j1[c], float((plan * cost).sum() / plan.sum())

    def _sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch_size`` pairs from ``ceil(batch_size / B)`` minibatch plans (one plan when they are equal)."""
        out0, out1, left = [], [], batch_size
        while left > 0:
            n = min(left, self.batch_size)
            i0, i1, _ = self._one_batch(n)
            out0.append(i0)
            out1.append(i1)
            left -= n
        return torch.cat(out0), torch.cat(out1)

    def expected_cost(self) -> float:
        """Monte-Carlo estimate over ``n_estimate`` minibatch plans (each plan's cost is computed exactly)."""
        self._require_fit()
        return sum(self._one_batch(1)[2] for _ in range(self.n_estimate)) / self.n_estimate


def build_coupling(
    name: str,
    n_anchors: int = 256,
    anchors: str = "farthest_first",
    ot: str = "exact",
    epsilon: float | None = None,
    ot_batch_size: int = 256,
    n_restarts: int = 4,
    seed: int = 0,
) -> Coupling:
    """Coupling by name: ``qdsb``, ``minibatch_ot``, ``independent`` or ``exact_ot``."""
    if name == "qdsb":
        return QuantizedCoupling(n_anchors, anchors, ot, epsilon, n_restarts, seed)
    if name == "minibatch_ot":
        return MinibatchOTCoupling(ot_batch_size, ot, epsilon, seed=seed)
    if name == "independent":
        return IndependentCoupling(seed)
    if name == "exact_ot":
        return ExactOTCoupling(seed=seed)
    raise ValueError(f"coupling must be one of qdsb, minibatch_ot, independent, exact_ot; got {name!r}")
