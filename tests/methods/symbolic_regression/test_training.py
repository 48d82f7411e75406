"""Network, loss and schedule: gradients reach every parameter, the penalty and the mask behave as stated."""

from __future__ import annotations

import pytest
import torch

from lightning_papers.methods.symbolic_regression.config import SymbolicConfig
from lightning_papers.methods.symbolic_regression.network import SymbolicNetwork
from lightning_papers.methods.symbolic_regression.training import (
    apply_mask,
    build_optimizer,
    rk4_step,
    smoothed_l_half,
    training_loss,
)

BANKS = {
    "default_two_layers": SymbolicConfig(),
    "one_layer": SymbolicConfig(n_layers=1),
    "division_and_exp": SymbolicConfig(n_div=2, n_exp=1),
}


def batch(d: int = 2, n: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    return {"x": x, "dxdt": torch.randn(n, d, generator=g), "x0": x, "x1": x + 0.01, "h": torch.full((n,), 0.01)}


@pytest.mark.parametrize("name", sorted(BANKS))
@pytest.mark.parametrize("loss", ["derivative", "rk4"])
def test_every_trainable_parameter_gets_a_gradient(name: str, loss: str) -> None:
    cfg = BANKS[name]
    cfg.loss = loss
    net = SymbolicNetwork(2, cfg)
    total, parts = training_loss(net, batch(), cfg, step=cfg.mask_step - 1)  # sparse phase: penalty on
    total.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname
    assert torch.isfinite(parts["fit"]) and parts["penalty"] > 0


def test_smoothed_l_half_is_sqrt_abs_outside_a_and_smooth_inside() -> None:
    a = 0.01
    w = torch.tensor([0.5, -0.02, 0.01])
    assert float(smoothed_l_half(w, a)) == pytest.approx(sum(abs(v) ** 0.5 for v in (0.5, 0.02, 0.01)))
    assert float(smoothed_l_half(torch.zeros(1), a)) == pytest.approx((3 * a / 8) ** 0.5)
    v = torch.linspace(-2 * a, 2 * a, 401, requires_grad=True)
    (g,) = torch.autograd.grad(smoothed_l_half(v, a), v)
    assert torch.isfinite(g).all() and float(g.diff().abs().max()) < 1.0  # no kink at 0 or at |w| = a


def test_schedule_phases_and_penalty_switch() -> None:
    cfg = SymbolicConfig(steps=100, warmup_fraction=0.2, sparse_fraction=0.6)
    assert [cfg.phase(s) for s in (0, 19, 20, 79, 80, 99)] == ["warmup"] * 2 + ["sparse"] * 2 + ["finetune"] * 2
    assert cfg.mask_step == 80
    net, b = SymbolicNetwork(2, cfg), batch()
    warm, parts = training_loss(net, b, cfg, 0)
    sparse, _ = training_loss(net, b, cfg, 50)
    assert float((sparse - warm).detach()) == pytest.approx(cfg.l_half * float(parts["penalty"]), rel=1e-5)


def test_mask_zeroes_small_weights_and_keeps_them_zero() -> None:
    cfg = SymbolicConfig(n_layers=1, mask_threshold=0.3, n_div=1)
    net = SymbolicNetwork(2, cfg)
    den_rows = ~net.layers[0].linear.penalised
    before = net.layers[0].linear.weight.detach().clone()
    kept = apply_mask(net, cfg.mask_threshold)
    assert kept == int(sum(lin.weight_mask.sum() + lin.bias_mask.sum() for lin in net.linears()))
    w = net.layers[0].linear.effective()[0]
    small = before.abs() < 0.3
    assert (w[small & ~den_rows[:, None]] == 0).all()  # penalised rows: small weights gone
    assert torch.equal(w[den_rows], before[den_rows])  # division denominators are exempt
    opt, sched = build_optimizer(net, cfg)
    for _ in range(5):
        loss, _ = training_loss(net, batch(), cfg, cfg.mask_step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert (net.layers[0].linear.effective()[0][small & ~den_rows[:, None]] == 0).all()


def test_rk4_step_is_exact_to_fifth_order_on_linear_decay() -> None:
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    h = torch.tensor([0.1, 0.1], dtype=torch.float64)
    out = rk4_step(lambda v: -v, x, h)
    torch.testing.assert_close(
        out, x * torch.exp(torch.tensor(-0.1, dtype=torch.float64)), atol=3e-7, rtol=0
    )  # local error h^5/120 |x|


def test_bad_config_fails_early() -> None:
    with pytest.raises(ValueError, match="savgol_window must be odd"):
        SymbolicConfig(savgol_window=20)
    with pytest.raises(ValueError, match="unit counts"):
        SymbolicConfig(n_identity=0, n_sin=0, n_cos=0, n_products=0)
    with pytest.raises(ValueError, match="lr_min <= lr"):
        SymbolicConfig(lr=1e-3, lr_min=1e-2)
