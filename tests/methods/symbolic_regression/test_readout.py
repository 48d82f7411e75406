"""Readout: planted networks read out to their expressions, trig expansion, AICc model choice, comparison."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp
import torch

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.evaluation import compare, parse_equations
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
from lightning_papers.methods.symbolic_regression.readout import (
    aicc,
    read_out,
    snap_number,
    split_terms,
    symbolic_forward,
    threshold_sweep,
    tidy,
)

X, Y = sp.symbols("x y")


def planted_network() -> SymbolicNetwork:
    """One layer (identity, sin, product) planted so that dx/dt = 2 y - 3 sin(x), dy/dt = 0.5 x y - y."""
    cfg = SymbolicConfig(n_layers=1, n_identity=1, n_sin=1, n_cos=0, n_products=1)
    net = SymbolicNetwork(2, cfg)
    lin, out = net.layers[0].linear, net.output
    with torch.no_grad():
        for p in (lin.weight, lin.bias, out.weight, out.bias):
            p.zero_()
        # linear rows: [identity, sin, product a, product b]; units: [z0, sin z1, z2 z3]
        lin.weight[0, 1] = 1.0  # identity <- y
        lin.weight[1, 0] = 1.0  # sin(x)
        lin.weight[2, 0] = 1.0  # product x * y
        lin.weight[3, 1] = 1.0
        out.weight[0] = torch.tensor([2.0, -3.0, 0.0])
        out.weight[1] = torch.tensor([-1.0, 0.0, 0.5])
    return net


def test_planted_network_reads_out_to_the_planted_expression() -> None:
    net = planted_network()
    exprs = symbolic_forward(net, [X, Y])
    assert split_terms(tidy(exprs[0], [X, Y], 0.03)) == pytest.approx({Y: 2.0, sp.sin(X): -3.0})
    assert split_terms(tidy(exprs[1], [X, Y], 0.03)) == {Y: pytest.approx(-1.0), X * Y: pytest.approx(0.5)}
    # the sympy expression and the torch forward agree on random points
    pts = torch.randn(50, 2, dtype=torch.float64)
    f = sp.lambdify([X, Y], exprs, "numpy")
    np.testing.assert_allclose(np.stack(f(*pts.numpy().T), 1), net.double()(pts).detach().numpy(), rtol=1e-10)


def test_planted_network_with_scales_reads_out_through_the_whole_pipeline() -> None:
    net = planted_network()
    g = np.random.default_rng(0)
    x = g.uniform(-2, 2, size=(400, 2))
    dxdt = net.double()(torch.from_numpy(x)).detach().numpy()
    net.set_scales(torch.from_numpy(x), torch.from_numpy(dxdt))  # the readout must undo any scaling
    with torch.no_grad():  # rescale the planted weights so that the function is unchanged
        net.layers[0].linear.weight.mul_(net.in_scale)
        net.output.weight.div_(net.out_scale[:, None])
        net.output.bias.div_(net.out_scale)
    eq = read_out(net, ["x", "y"], x, dxdt, SymbolicConfig())
    exact, err = compare(eq, parse_equations(["x", "y"], ["2*y - 3*sin(x)", "0.5*x*y - y"]))
    assert exact and err < 1e-8


def test_sin_of_affine_argument_expands_to_sin_cos_combination() -> None:
    e = tidy(sp.Float(1.5) * sp.sin(sp.Float(0.995) * X + sp.Float(0.4)), [X], snap_tol=0.03)
    terms = split_terms(e)
    assert set(terms) == {sp.sin(X), sp.cos(X)}  # frequency 0.995 snapped to 1
    assert terms[sp.sin(X)] == pytest.approx(1.5 * math.cos(0.4))
    assert terms[sp.cos(X)] == pytest.approx(1.5 * math.sin(0.4))
    # a frequency far from a simple fraction is kept
    assert split_terms(tidy(sp.sin(sp.Float(0.8123) * X), [X], 0.03)) == {sp.sin(sp.Float(0.8123) * X): 1.0}


def test_snap_number() -> None:
    assert snap_number(0.999, 0.03) == 1 and snap_number(0.5012, 0.03) == sp.Rational(1, 2)
    assert snap_number(0.01, 0.03) == 0 and isinstance(snap_number(0.8123, 0.03), sp.Float)


def test_rational_terms_take_partial_fraction_form() -> None:
    s = sp.Symbol("s")
    e = tidy((sp.Float(0.6) - sp.Float(0.4) * s) / (sp.Float(0.8) * s + sp.Float(0.801)), [s], 0.03)
    # (0.6 - 0.4 s) / (0.8 (s + 1)) = -0.5 + 1.25 / (s + 1)
    terms = split_terms(e)
    assert set(terms) == {sp.Integer(1), 1 / (s + 1)}
    assert terms[sp.Integer(1)] == pytest.approx(-0.5) and terms[1 / (s + 1)] == pytest.approx(1.25)


def test_aicc_picks_the_true_model_on_least_squares_data() -> None:
    g = np.random.default_rng(1)
    theta = g.normal(size=(500, 8))
    y = 2.0 * theta[:, 0] - 0.5 * theta[:, 3] + 0.01 * g.normal(size=500)
    coef0 = np.linalg.lstsq(theta, y, rcond=None)[0]
    coef, score, cands = threshold_sweep(theta, y, coef0, np.logspace(-4, 0, 30))
    assert set(np.flatnonzero(coef)) == {0, 3}
    np.testing.assert_allclose(coef[[0, 3]], [2.0, -0.5], atol=3e-3)
    assert score == min(c["aicc"] for c in cands)

    # AICc itself: the true support beats a superset and a subset on the same data
    def rss(cols: list[int]) -> float:
        c = np.linalg.lstsq(theta[:, cols], y, rcond=None)[0]
        return float(((theta[:, cols] @ c - y) ** 2).sum())

    assert aicc(rss([0, 3]), 500, 2) < aicc(rss([0, 3, 5]), 500, 3)
    assert aicc(rss([0, 3]), 500, 2) < aicc(rss([0]), 500, 1)


def test_compare_reports_structure_and_coefficient_error() -> None:
    truth = parse_equations(["x", "y"], ["y", "-x - 0.2*y"])
    near = parse_equations(["x", "y"], ["1.01*y", "-x - 0.19*y"])
    extra = parse_equations(["x", "y"], ["y", "-x - 0.2*y + 0.001*x**3"])
    assert compare(near, truth) == (True, pytest.approx(0.05))
    assert compare(extra, truth)[0] is False
    eq = near
    assert len(eq.latex()) == 2 and "states" in eq.to_json()
    np.testing.assert_allclose(eq.rhs()(0.0, np.array([1.0, 2.0])), [2.02, -1.38])
