"""Bid distributions for repeated first-price auctions, and a counter-based random stream.

Shared by :mod:`lightning_papers.datamodules.auctions` (which serves blocks of rounds) and the shilled-auction
method (whose environment evaluates the exact utility U(b) = (v − b)·F_m(b) and whose learners read the shill
CDF F_s). Every distribution has an exact ``cdf`` and a ``quantile`` used for sampling by inversion, so what is
sampled is exactly what the CDF says (Beta is represented by its CDF tabulated on a fine grid and interpolated
linearly: the sampled law *is* that piecewise-linear CDF, within 1e-6 of the Beta CDF).

Randomness is counter based (:func:`counter_uniform`): the uniform of replica r in round t is a hash of
(seed, stream, r, t). A round's draws therefore do not depend on how rounds are cut into blocks, on how many
replicas run next to it, or on where a run was resumed.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor

_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # 64-bit constants as signed int64 (torch arithmetic wraps)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on int64 tensors (wrapping arithmetic)."""
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def counter_uniform(seed: int, stream: int, replicas: Tensor, rounds: Tensor) -> Tensor:
    """Uniforms in [0, 1), float64, shape ``[len(rounds), len(replicas)]``: a pure function of (seed, stream, r, t).

    Args:
        seed: Seed of the run.
        stream: Which variable (0: competing and shill bids, see :func:`draw_rounds`; 2+: a learner's randomness).
        replicas: int64 replica ids ``[R]``.
        rounds: int64 round indices ``[n]``.
    """
    return _shr(_counter_bits(seed, stream, replicas, rounds), 11).to(torch.float64) * (2.0**-53)


def _counter_bits(seed: int, stream: int, replicas: Tensor, rounds: Tensor) -> Tensor:
    base = _mix(
        torch.tensor([(seed * 1_000_003 + stream) & ((1 << 62) - 1)], dtype=torch.int64, device=replicas.device)
    )
    per_replica = _mix(base + replicas.to(torch.int64) * _GOLDEN)
    return _mix(per_replica[None, :] + (rounds.to(torch.int64)[:, None] + 1) * _MIX2)


def counter_uniform_pair(seed: int, stream: int, replicas: Tensor, rounds: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent uniforms per (round, replica) from one 64-bit hash (32 bits each, resolution 2^-32)."""
    z = _counter_bits(seed, stream, replicas, rounds)
    hi = _shr(z, 32).to(torch.float64)
    lo = (z & 0xFFFFFFFF).to(torch.float64)
    return (hi + 0.5) * (2.0**-32), (lo + 0.5) * (2.0**-32)


class BidDistribution:
    """A law on the real line with an exact ``cdf`` and a ``quantile`` (generalised inverse) for sampling."""

    def cdf(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def quantile(self, u: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, u: Tensor) -> Tensor:
        """Draws by inversion of the uniforms ``u``."""
        return self.quantile(u)

    def mean(self) -> float:
        """E[X], by integrating 1 − F on a fine grid of [0, upper] (all laws here are on [0, ∞))."""
        hi = float(self.quantile(torch.tensor([1.0 - 1e-12], dtype=torch.float64))[0])
        x = torch.linspace(0.0, max(hi, 1e-12), 200_001, dtype=torch.float64)
        return float(torch.trapezoid(1.0 - self.cdf(x), x))


class PointMass(BidDistribution):
    """X = ``at`` always (``at = 0`` is "no shill": R = max(m, 0) = m)."""

    def __init__(self, at: float = 0.0) -> None:
        if not math.isfinite(at) or at < 0:
            raise ValueError(f"a point mass needs a finite location >= 0, got {at}")
        self.at = float(at)

    def cdf(self, x: Tensor) -> Tensor:
        return (x >= self.at).to(torch.float64)

    def quantile(self, u: Tensor) -> Tensor:
        return torch.full_like(u, self.at, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"PointMass({self.at})"


class Uniform(BidDistribution):
    """X ~ U[low, high]."""

    def __init__(self, low: float = 0.0, high: float = 1.0) -> None:
        if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high):
            raise ValueError(f"a uniform law needs 0 <= low < high, got low={low}, high={high}")
        self.low, self.high = float(low), float(high)

    def cdf(self, x: Tensor) -> Tensor:
        return ((x.to(torch.float64) - self.low) / (self.high - self.low)).clamp(0.0, 1.0)

    def quantile(self, u: Tensor) -> Tensor:
        return self.low + (self.high - self.low) * u.to(torch.float64)

    def __repr__(self) -> str:
        return f"Uniform({self.low}, {self.high})"


def _guide(points: Tensor, cells: int) -> tuple[Tensor, int]:
    """For equal cells of [points[0], points[-1]]: the last index i with points[i] <= cell start, and 1 + the
    largest number of knots inside one cell (the steps a walk from the cell start may need)."""
    lo, hi = float(points[0]), float(points[-1])
    starts = lo + (hi - lo) * torch.arange(cells, dtype=torch.float64) / cells
    guide = (torch.searchsorted(points, starts, right=True) - 1).clamp(0, points.numel() - 2)
    ends = torch.cat([guide[1:], torch.tensor([points.numel() - 2])])
    return guide, int((ends - guide).max()) + 1


def _locate(points: Tensor, guide: Tensor, walk: int, x: Tensor) -> Tensor:
    """Index i of the segment [points[i], points[i+1]] holding x (clamped to the table)."""
    last = points.numel() - 2
    lo, hi = points[0], points[-1]
    cell = ((x - lo) / (hi - lo) * guide.numel()).long().clamp(0, guide.numel() - 1)
    i = guide[cell]
    for _ in range(min(walk - 1, 4)):
        i = torch.where(points[i + 1] <= x, (i + 1).clamp_max(last), i)
    if walk - 1 > 4:  # the few values in crowded cells: binary search
        far = (points[i + 1] <= x) & (i < last)
        if bool(far.any()):
            i[far] = (torch.searchsorted(points, x[far].contiguous(), right=True) - 1).clamp(0, last)
    return i


def _even_step(points: Tensor) -> float | None:
    step = torch.diff(points)
    mean = float(points[-1] - points[0]) / (points.numel() - 1)
    return mean if bool(torch.all((step - mean).abs() <= 1e-9 * mean)) else None


class TabulatedCDF(BidDistribution):
    """A continuous piecewise-linear CDF through ``(knots[i], values[i])``; values rise from 0 to 1.

    ``quantile`` is its exact inverse, so sampling by inversion draws exactly this law. Equally spaced knots
    (or values) locate their segment by arithmetic; otherwise a guide table on equal cells and a short walk.
    """

    def __init__(self, knots: Tensor, values: Tensor, name: str = "tabulated") -> None:
        knots, values = knots.to(torch.float64).cpu(), values.to(torch.float64).cpu()
        if knots.ndim != 1 or knots.shape != values.shape or knots.numel() < 2:
            raise ValueError("knots and values must be 1-D tensors of the same length >= 2")
        if torch.any(torch.diff(knots) <= 0) or torch.any(torch.diff(values) < 0):
            raise ValueError("knots must increase strictly and CDF values must not decrease")
        if abs(float(values[0])) > 1e-12 or abs(float(values[-1]) - 1.0) > 1e-12:
            raise ValueError(f"CDF values must run from 0 to 1, got {float(values[0])} .. {float(values[-1])}")
        self.knots, self.values, self.name = knots, values, name
        self.x_step, self.u_step = _even_step(knots), _even_step(values)
        self.x_guide, self.x_walk = _guide(knots, 4 * knots.numel())
        self.u_guide, self.u_walk = _guide(values, 4 * knots.numel())
        dk, dv = torch.diff(knots), torch.diff(values)
        # per segment (knot, value, dF/dx, dx/dF): one gather gives everything an interpolation needs
        self.segments = torch.stack(
            [knots[:-1], values[:-1], dv / dk, torch.where(dv > 0, dk / dv.clamp_min(1e-300), torch.zeros_like(dk))], 1
        )
        self._on: dict[torch.device, tuple[Tensor, ...]] = {}

    def _tables(self, device: torch.device) -> tuple[Tensor, ...]:
        if device not in self._on:
            tables = (self.knots, self.values, self.x_guide, self.u_guide, self.segments)
            self._on[device] = tuple(t.to(device) for t in tables)
        return self._on[device]

    @staticmethod
    def _segment(points: Tensor, step: float | None, guide: Tensor, walk: int, x: Tensor) -> Tensor:
        if step is not None:
            return ((x - float(points[0])) * (1.0 / step)).long().clamp(0, points.numel() - 2)
        return _locate(points, guide, walk, x)

    def cdf(self, x: Tensor) -> Tensor:
        k, _, xg, _, seg = self._tables(x.device)
        x = x.to(torch.float64)
        s = seg[self._segment(k, self.x_step, xg, self.x_walk, x)]
        return (s[..., 1] + (x.clamp(k[0], k[-1]) - s[..., 0]) * s[..., 2]).clamp(0.0, 1.0)

    def quantile(self, u: Tensor) -> Tensor:
        _, v, _, ug, seg = self._tables(u.device)
        u = u.to(torch.float64)
        s = seg[self._segment(v, self.u_step, ug, self.u_walk, u)]
        return s[..., 0] + (u - s[..., 1]) * s[..., 3]

    def __repr__(self) -> str:
        return self.name


def beta(a: float, b: float, knots: int = 16384) -> TabulatedCDF:
    """Beta(a, b) on [0, 1] as the piecewise-linear CDF through its exact quantiles at ``knots`` + 1 equally
    spaced probabilities (``scipy.special.betaincinv``): sampling is O(1) and the law is within 1/knots of the
    Beta CDF (within 1e-6 in the bulk; the gap is largest in the thin tails)."""
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"Beta parameters must be finite and > 0, got a={a}, b={b}")
    from scipy.special import betaincinv

    values = torch.linspace(0.0, 1.0, knots + 1, dtype=torch.float64)
    x = torch.from_numpy(betaincinv(a, b, values.numpy()))
    x[0], x[-1] = 0.0, 1.0
    keep = torch.cat([torch.tensor([True]), torch.diff(x) > 1e-15])
    return TabulatedCDF(x[keep], values[keep], name=f"Beta({a:g}, {b:g})")


class Empirical(BidDistribution):
    """The empirical law of a sample (e.g. historic competing bids): F(x) = #{samples <= x} / n."""

    def __init__(self, samples: Tensor, name: str = "empirical") -> None:
        samples = torch.as_tensor(samples, dtype=torch.float64).flatten().cpu()
        check_bids(samples, name)
        self.sorted, self.name = torch.sort(samples).values, name

    def cdf(self, x: Tensor) -> Tensor:
        s = self.sorted.to(x.device)
        return torch.searchsorted(s, x.to(torch.float64), right=True).to(torch.float64) / s.numel()

    def quantile(self, u: Tensor) -> Tensor:
        s = self.sorted.to(u.device)
        return s[(u.to(torch.float64) * s.numel()).long().clamp(0, s.numel() - 1)]

    def __repr__(self) -> str:
        return f"{self.name}(n={self.sorted.numel()})"


class Mixture(BidDistribution):
    """Σ_i w_i·F_i; sampled by picking component i with the uniform's position and rescaling it."""

    def __init__(self, weights: list[float], components: list[BidDistribution]) -> None:
        if len(weights) != len(components) or not weights or any(w < 0 for w in weights):
            raise ValueError(f"a mixture needs one weight >= 0 per component, got {weights}")
        if abs(sum(weights) - 1.0) > 1e-9:
            raise ValueError(f"mixture weights must sum to 1, got {weights} (sum {sum(weights)})")
        self.weights, self.components = [float(w) for w in weights], components

    def cdf(self, x: Tensor) -> Tensor:
        return sum(w * c.cdf(x) for w, c in zip(self.weights, self.components))

    def quantile(self, u: Tensor) -> Tensor:
        u = u.to(torch.float64)
        out = torch.zeros_like(u)
        lo = 0.0
        for w, c in zip(self.weights, self.components):
            if w <= 0:
                continue
            inside = (u >= lo) & (u < lo + w) if lo + w < 1.0 else u >= lo
            out = torch.where(inside, c.quantile(((u - lo) / w).clamp(0.0, 1.0 - 1e-16)), out)
            lo += w
        return out

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}·{c!r}" for w, c in zip(self.weights, self.components))


def low_shill(rho: float, high_low: float = 0.8, high_high: float = 1.0) -> Mixture:
    """The "low-shill" law: s = 0 with probability ρ (the real bid shows), else s ~ U[high_low, high_high]."""
    if not 0 < rho <= 1:
        raise ValueError(f"low-shill probability rho must be in (0, 1], got {rho}")
    return Mixture([rho, 1.0 - rho], [PointMass(0.0), Uniform(high_low, high_high)])


def check_bids(values: Tensor, name: str) -> None:
    """Bids must be finite and >= 0; the message names the first bad value and its position."""
    if values.numel() == 0:
        raise ValueError(f"{name}: no bids")
    bad = ~torch.isfinite(values) | (values < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"{name}: bids must be finite and >= 0, got {float(values[i])} at row {i}")


def read_bids_csv(path: str | Path, column: str) -> Tensor:
    """One column of a CSV file with a header row, as float64 bids (validated: finite, >= 0)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"bids CSV not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path} must have a column {column!r}, got {reader.fieldnames}")
        raw = [row[column] for row in reader]
    values = []
    for i, text in enumerate(raw):
        try:
            values.append(float(text))
        except ValueError:
            raise ValueError(f"{path}:{column}: row {i} is not a number: {text!r}") from None
    check_bids(torch.tensor(values, dtype=torch.float64), f"{path}:{column}")
    return torch.tensor(values, dtype=torch.float64)


def build_distribution(
    name: str,
    *,
    low: float = 0.0,
    high: float = 1.0,
    a: float = 2.0,
    b: float = 4.0,
    rho: float = 0.1,
    csv_path: str | None = None,
    column: str = "bid",
) -> BidDistribution:
    """A law by name: ``none`` (point mass at 0), ``uniform`` (U[low, high]), ``beta`` (Beta(a, b)),
    ``low_shill`` (ρ·δ_0 + (1 − ρ)·U[0.8, 1]) or ``csv`` (empirical law of ``column`` in ``csv_path``)."""
    if name == "none":
        return PointMass(0.0)
    if name == "uniform":
        return Uniform(low, high)
    if name == "beta":
        return beta(a, b)
    if name == "low_shill":
        return low_shill(rho)
    if name == "csv":
        if csv_path is None:
            raise ValueError("an empirical ('csv') law needs a CSV path")
        return Empirical(read_bids_csv(csv_path, column), name=f"empirical[{Path(csv_path).name}]")
    raise ValueError(f"unknown bid distribution {name!r}; expected none, uniform, beta, low_shill or csv")


def draw_rounds(
    competing: BidDistribution, shill: BidDistribution, seed: int, start: int, n: int, replicas: Tensor
) -> tuple[Tensor, Tensor]:
    """Competing bids m and shill bids s of rounds ``start .. start+n−1`` for ``replicas`` (ids), ``[n, R]``."""
    rounds = torch.arange(start, start + n, dtype=torch.int64, device=replicas.device)
    u_m, u_s = counter_uniform_pair(seed, 0, replicas, rounds)
    return competing.sample(u_m), shill.sample(u_s)


def draw_values(values: BidDistribution, seed: int, start: int, n: int, replicas: Tensor) -> Tensor:
    """The bidder's values v_t ~ F_v of rounds ``start .. start+n−1`` for ``replicas`` (ids), ``[n, R]``.

    A stream of its own (stream 1), so drawing values leaves the competing and shill bids of every round unchanged.
    """
    rounds = torch.arange(start, start + n, dtype=torch.int64, device=replicas.device)
    return values.sample(counter_uniform(seed, 1, replicas, rounds))


def exact_mean(law: BidDistribution) -> float:
    """E[X]: closed form for a point mass and a uniform law, else :meth:`BidDistribution.mean` (numerical)."""
    if isinstance(law, PointMass):
        return float(law.at)
    if isinstance(law, Uniform):
        return (float(law.low) + float(law.high)) / 2.0
    if isinstance(law, Empirical):
        return float(law.sorted.mean())
    return law.mean()


def support_of(law: BidDistribution) -> tuple[float, float]:
    """(lowest, highest) point of the law's support (its quantiles at 0 and 1)."""
    q = law.quantile(torch.tensor([0.0, 1.0], dtype=torch.float64))
    return float(q[0]), float(q[1])
