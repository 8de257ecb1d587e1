"""Phase 2 maths (samplers/finetune_loss.py): the schedule-derived loss weights and the noise-level
sampler, checked against their definitions and by distribution tests."""
import math

import pytest
import torch

from samplers import finetune_loss as fl
from samplers.finetune_loss import SigmaSampler, anchor_weights, schedule_weights, weighted_mse

SCHED = (14.6146, 6.0, 2.5, 0.9, 0.25, 0.0)


def _euler_states(sigmas, outputs, x0):
    """Euler on `sigmas` with a denoiser that returns outputs[i] at step i whatever x is."""
    x = x0.clone()
    states = [x]
    for i in range(len(sigmas) - 1):
        s, t = sigmas[i], sigmas[i + 1]
        x = (t / s) * x + (1 - t / s) * outputs[i]
        states.append(x)
    return states


def test_weights_are_the_sensitivities_of_the_last_model_input_and_the_final_jump():
    # With an x-independent denoiser nothing propagates, so a change d at step i moves x_{N-1}
    # by exactly w_i d (convex-combination form); the last call's output is the sample (weight 1).
    sig = torch.tensor(SCHED, dtype=torch.float64)
    n = sig.numel() - 1
    base = [torch.zeros(3, dtype=torch.float64) for _ in range(n)]
    x0 = torch.randn(3, dtype=torch.float64)
    ref = _euler_states(sig, base, x0)[n - 1]
    raw = []
    for i in range(n - 1):
        out = [b.clone() for b in base]
        out[i] += 1.0
        raw.append(float((_euler_states(sig, out, x0)[n - 1] - ref)[0]))
    raw.append(1.0)
    lam = schedule_weights(sig)
    assert torch.allclose(lam, torch.tensor(raw, dtype=torch.float64) / sum(raw), atol=1e-12)
    assert float(lam.sum()) == pytest.approx(1.0) and (lam > 0).all()


def test_weights_without_the_final_jump_are_the_convex_combination_weights():
    sig = torch.tensor([10.0, 3.0, 1.0, 0.3], dtype=torch.float64)
    w = 0.3 * (1 / sig[1:] - 1 / sig[:-1])
    assert torch.allclose(schedule_weights(sig), w / w.sum(), atol=1e-14)
    assert schedule_weights(torch.tensor([5.0, 0.0])).tolist() == [1.0]


@pytest.mark.parametrize("bad", [(1.0,), (1.0, 2.0, 0.0), (3.0, 1.0, 1.0, 0.0), (3.0, float("nan"), 0.0), (3.0, -1.0)])
def test_bad_schedules_are_refused_with_the_parameter_named(bad):
    with pytest.raises(ValueError, match="sigmas"):
        schedule_weights(torch.tensor(bad))


def test_sampler_settings_are_checked():
    with pytest.raises(ValueError, match="spread"):
        SigmaSampler(SCHED, spread=1.5)
    with pytest.raises(ValueError, match="estimator"):
        SigmaSampler(SCHED, estimator="other")
    with pytest.raises(ValueError, match="count"):
        SigmaSampler(SCHED).draw(0)


def test_spread_zero_draws_exactly_the_steps_with_probability_lambda():
    s = SigmaSampler(SCHED, spread=0.0)
    sig, w, idx = s.draw(200_000, torch.Generator().manual_seed(0))
    steps = torch.tensor(SCHED[:-1], dtype=torch.float64)
    assert torch.allclose(sig, steps[idx], rtol=1e-12) and (w == 1).all()
    freq = torch.bincount(idx, minlength=5).double() / idx.numel()
    lam = s.weights
    se = (lam * (1 - lam) / idx.numel()).sqrt()
    assert ((freq - lam).abs() <= 5 * se + 1e-9).all(), (freq, lam)


def test_both_estimators_have_the_same_expected_loss():
    f = lambda sig: torch.log1p(sig) ** 2  # any loss as a function of the noise level
    target = float((schedule_weights(torch.tensor(SCHED)) * f(torch.tensor(SCHED[:-1], dtype=torch.float64))).sum())
    for est in ("importance", "explicit"):
        sig, w, _ = SigmaSampler(SCHED, 0.0, est).draw(400_000, torch.Generator().manual_seed(1))
        vals = w * f(sig)
        assert float(vals.mean()) == pytest.approx(target, abs=5 * float(vals.std()) / math.sqrt(vals.numel()))
        assert float(w.mean()) == pytest.approx(1.0, abs=0.02)


def test_spread_draws_log_uniform_inside_half_gaps_to_the_neighbours():
    s = SigmaSampler(SCHED, spread=1.0, sigma_min=0.0292, sigma_max=14.6146)
    sig, _, idx = s.draw(100_000, torch.Generator().manual_seed(2))
    lo, hi = s.windows()
    logs = torch.log(torch.tensor(SCHED[:-1], dtype=torch.float64))
    # windows of neighbouring steps touch at the log-midpoint and never overlap
    assert torch.allclose(lo[:-1], hi[1:]) and torch.allclose(lo[1:3], (logs[1:3] + logs[2:4]) / 2)
    assert float(hi[0]) == pytest.approx(math.log(14.6146))  # clamped to the model's range
    pos = (sig.log() - lo[idx]) / (hi[idx] - lo[idx])
    assert float(pos.min()) >= 0 and float(pos.max()) <= 1
    # uniform positions: every decile within 5 standard errors of 10 %
    counts = torch.histc(pos, bins=10, min=0, max=1) / pos.numel()
    assert ((counts - 0.1).abs() <= 5 * math.sqrt(0.09 / pos.numel())).all(), counts


def test_weighted_mse_is_the_weighted_mean_of_per_sample_errors():
    pred, target = torch.zeros(3, 2, 2), torch.ones(3, 2, 2) * torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
    w = torch.tensor([1.0, 0.0, 2.0])
    assert float(weighted_mse(pred, target, w)) == pytest.approx((1 * 1 + 0 * 4 + 2 * 9) / 3)
    with pytest.raises(ValueError, match="shape"):
        weighted_mse(pred, target[:2], w)


def test_anchor_weights_x0_is_one_and_eps_is_inverse_variance_with_mean_one_over_the_levels():
    levels = torch.exp(torch.linspace(math.log(0.03), math.log(14.6), 1000, dtype=torch.float64))
    sig = torch.tensor([0.05, 1.0, 10.0], dtype=torch.float64)
    assert torch.equal(anchor_weights(sig, levels, "x0"), torch.ones(3, dtype=torch.float64))
    eps = anchor_weights(sig, levels, "eps")
    # the eps loss |D - x0|^2 / s^2: weights in the ratio 1/s^2, scaled to mean 1 over the levels
    assert float(eps[0] / eps[1]) == pytest.approx(400.0)
    assert float(eps[1] / eps[2]) == pytest.approx(100.0)
    assert float(anchor_weights(levels, levels, "eps").mean()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="anchor_weighting"):
        anchor_weights(sig, levels, "v")


def test_lr_factor_constant_is_one_and_cosine_warms_up_then_decays_to_zero():
    assert all(fl.lr_factor(i, 40, "constant") == 1.0 for i in range(40))
    cos = [fl.lr_factor(i, 40, "cosine") for i in range(40)]
    assert cos[0] == pytest.approx(0.5 * (1 + math.cos(0)) / 2)  # warm-up: 2 steps at 40
    assert cos[1] == pytest.approx(0.5 * (1 + math.cos(math.pi / 40)))
    assert all(a > b for a, b in zip(cos[1:], cos[2:]))  # then strictly decreasing ...
    assert 0 < cos[-1] < 0.01  # ... to almost 0 at the round's last step
    assert fl.lr_factor(0, 1, "cosine") == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        fl.lr_factor(0, 10, "linear")
    with pytest.raises(ValueError, match="step"):
        fl.lr_factor(10, 10, "cosine")


def test_holdout_split_is_disjoint_complete_seeded_and_refuses_an_empty_side():
    train, held = fl.holdout_split(100, 0.1, 3)
    assert held.numel() == 10 and train.numel() == 90
    assert sorted(train.tolist() + held.tolist()) == list(range(100))
    again = fl.holdout_split(100, 0.1, 3)
    assert torch.equal(again[1], held)
    assert not torch.equal(fl.holdout_split(100, 0.1, 4)[1], held)
    for count, share in ((4, 0.1), (2, 0.9)):
        with pytest.raises(ValueError, match="holdout"):
            fl.holdout_split(count, share, 0)
    with pytest.raises(ValueError, match="holdout"):
        fl.holdout_split(10, 0.0, 0)


def test_uniform_levels_draw_timesteps_uniformly_with_the_anchor_weights():
    levels = torch.linspace(0.03, 14.6, 1000, dtype=torch.float64)
    for weighting in ("x0", "eps"):
        sig, w, t = fl.UniformLevels(levels, weighting).draw(20000, torch.Generator().manual_seed(0))
        assert torch.equal(sig, levels[t]) and torch.equal(w, anchor_weights(levels[t], levels, weighting))
        counts = torch.bincount(t // 100, minlength=10).double()
        assert float((counts / 2000 - 1).abs().max()) < 0.08  # every tenth of the levels about as often
