"""The reference ODE solver and the scoring maths, without ComfyUI."""
import math

import pytest
import torch

from samplers.accuracy import (CallLog, check_sigmas, end_convention, observed_order, score_run,
                               score_solver)
from samplers.exact import ExactDenoiser, MixtureSpec, mixture_means
from samplers.reference import (ReferenceNotConverged, per_sample_rmse, reference_states, solve_fixed_rk4,
                                solve_pf_ode)

SIGMA_MAX, SIGMA_MIN = 14.6146, 0.0292


# host_independent: imports no ComfyUI, one leg of scripts/test.sh runs it
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.host_independent]


def x_start(shape=(4, 4, 4, 4), sigma=SIGMA_MAX, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * sigma


def log_uniform(n, lo=SIGMA_MIN, hi=SIGMA_MAX, zero=True):
    s = torch.exp(torch.linspace(math.log(hi), math.log(lo), n, dtype=torch.float64))
    return torch.cat([s, s.new_zeros(1)]) if zero else s


# Pure k-diffusion solvers written out here, so the order test does not depend on the pack's solvers.
def euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    for i in range(len(sigmas) - 1):
        d = (x - model(x, sigmas[i] * x.new_ones(x.shape[0]))) / sigmas[i]
        x = x + (sigmas[i + 1] - sigmas[i]) * d
    return x


def heun(model, x, sigmas, extra_args=None, callback=None, disable=None):
    for i in range(len(sigmas) - 1):
        s, sn = sigmas[i], sigmas[i + 1]
        d = (x - model(x, s * x.new_ones(x.shape[0]))) / s
        if sn == 0:
            x = x + (sn - s) * d
            continue
        x2 = x + (sn - s) * d
        d2 = (x2 - model(x2, sn * x.new_ones(x.shape[0]))) / sn
        x = x + (sn - s) * (d + d2) / 2
    return x


def test_reference_equals_analytic_gaussian():
    """One component N(mu, s^2 I): x(sigma) - mu = (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2)."""
    s = 0.3
    spec = MixtureSpec(dataset="gmm", components=1, spread=s, seed=4)
    den = ExactDenoiser(spec)
    mu = mixture_means(spec, (4, 4, 4))
    x0 = x_start()
    points = [5.0, 1.0, 0.3, SIGMA_MIN, 0.0]
    ref = reference_states(den, x0, SIGMA_MAX, points)
    for sigma in points:
        want = mu + (x0 - mu) * math.sqrt(s * s + sigma * sigma) / math.sqrt(s * s + SIGMA_MAX ** 2)
        assert float(per_sample_rmse(ref.at(sigma), want).max()) < 1e-8, sigma
    assert ref.discrepancy < 1e-6


def test_reference_converges_and_agrees_with_independent_rk4():
    den = ExactDenoiser(MixtureSpec(dataset="shapes", components=8, spread=0.05, seed=1))
    x0 = x_start(shape=(4, 4, 8, 8))
    ref = reference_states(den, x0, SIGMA_MAX, [SIGMA_MIN])
    assert 0 < ref.discrepancy < 1e-6  # two tolerances agree (and were actually compared)
    rk4 = solve_fixed_rk4(den, x0, SIGMA_MAX, SIGMA_MIN, 1500)
    assert float(per_sample_rmse(rk4, ref.at(SIGMA_MIN)).max()) < 1e-7


def test_reference_refuses_to_certify_when_tolerances_disagree():
    den = ExactDenoiser(MixtureSpec(dataset="shapes", components=8, spread=0.05, seed=1))
    with pytest.raises(ReferenceNotConverged, match="not converged"):
        reference_states(den, x_start(), SIGMA_MAX, [SIGMA_MIN], rtol=1e-2, max_discrepancy=1e-12)


def test_reference_step_budget_is_enforced():
    den = ExactDenoiser(MixtureSpec(dataset="gmm", components=4, spread=0.3, seed=0))
    with pytest.raises(ReferenceNotConverged, match="exceeded"):
        solve_pf_ode(den, x_start(), SIGMA_MAX, [SIGMA_MIN], rtol=1e-10, max_steps=5)


@pytest.mark.parametrize("start,points,match", [
    (float("nan"), [0.1], "sigma_start"),
    (-1.0, [0.1], "sigma_start"),
    (10.0, [float("inf")], "finite"),
    (10.0, [-0.1], ">= 0"),
    (10.0, [20.0], "exceed"),
])
def test_reference_bad_sigmas(start, points, match):
    den = ExactDenoiser(MixtureSpec(dataset="gmm", components=2, spread=0.3))
    with pytest.raises(ValueError, match=match):
        solve_pf_ode(den, x_start(), start, points)


@pytest.mark.parametrize("sigmas,match", [
    ([1.0], "at least 2"),
    ([1.0, float("nan"), 0.0], "finite"),
    ([1.0, float("inf")], "finite"),
    ([1.0, -0.5], ">= 0"),
    ([0.0, 0.0], "sigmas\\[0\\]"),
    ([1.0, 2.0, 0.0], "non-increasing"),
])
def test_check_sigmas_refuses_bad_schedules(sigmas, match):
    with pytest.raises(ValueError, match=match):
        check_sigmas(torch.tensor(sigmas))


@pytest.mark.parametrize("solver,order", [(euler, 1.0), (heun, 2.0)])
def test_observed_order_matches_theory_on_a_smooth_lab(solver, order):
    """Wide components (spread 1) make a smooth ODE; errors vs the exact ODE fall as NFE^-order."""
    den = ExactDenoiser(MixtureSpec(dataset="gmm", components=2, spread=1.0, seed=0))
    x0 = x_start(shape=(4, 2, 4, 4))
    nfes, errs = [], []
    for n in (20, 40, 80):
        res = score_solver(den, solver, x0, log_uniform(n), SIGMA_MIN)
        nfes.append(res.nfe)
        errs.append(res.mean())
    assert abs(observed_order(nfes, errs) - order) < 0.15, (nfes, errs)


def test_scoring_targets_and_end_conventions():
    den = ExactDenoiser(MixtureSpec(dataset="gmm", components=3, spread=0.2, seed=2))
    x0 = x_start()
    res = score_solver(den, euler, x0, log_uniform(400), SIGMA_MIN)
    assert res.nfe == 400
    assert res.convention.startswith("final step x = D(x; 0.0292")
    assert torch.equal(res.sample_rmse, res.endpoint_rmse)  # this schedule ends where the model sample does
    assert res.mean() < 2e-3
    # Stopping early at a non-zero sigma (no final zero): the endpoint target is the noisy ODE state there.
    stop = log_uniform(40, lo=0.5, zero=False)
    res = score_solver(den, heun, x0, stop, SIGMA_MIN)
    assert res.convention.startswith("stops at sigma 0.5")
    assert res.mean("schedule endpoint") < 1e-3 < res.mean("model sample")
    # A run whose output is not the last denoised prediction integrates to sigma -> 0.
    log = CallLog(den)
    out = euler(log, x0.clone(), log_uniform(30)) + 0.01
    assert end_convention(log_uniform(30).tolist(), out, log)[0] == "integrate"
    r = score_run(den, x0, log_uniform(30), out, log, SIGMA_MIN)
    assert r.convention == "integrates to sigma -> 0"


def test_model_sample_target_is_the_final_denoise_of_the_exact_ode():
    """The 'model sample' is D(x(sigma_min); sigma_min), not the sigma -> 0 limit; both are exposed."""
    s = 0.05
    spec = MixtureSpec(dataset="gmm", components=1, spread=s, seed=0)
    den = ExactDenoiser(spec)
    mu = mixture_means(spec, (4, 4, 4))
    x0 = x_start()
    res = score_solver(den, euler, x0, log_uniform(200), SIGMA_MIN)
    x_min = mu + (x0 - mu) * math.sqrt(s * s + SIGMA_MIN ** 2) / math.sqrt(s * s + SIGMA_MAX ** 2)
    want = mu + s * s / (s * s + SIGMA_MIN ** 2) * (x_min - mu)
    assert float(per_sample_rmse(res.sample, want).max()) < 1e-9
    limit = score_solver(den, euler, x0, log_uniform(200), None)
    want0 = mu + (x0 - mu) * s / math.sqrt(s * s + SIGMA_MAX ** 2)
    assert float(per_sample_rmse(limit.sample, want0).max()) < 1e-9


def test_nfe_counts_model_calls():
    den = ExactDenoiser(MixtureSpec(dataset="gmm", components=2, spread=0.5))
    assert score_solver(den, heun, x_start(), log_uniform(6)).nfe == 2 * 6 - 1  # last step to 0 is Euler


def test_observed_order_fit():
    assert abs(observed_order([5, 10, 20], [1 / 25, 1 / 100, 1 / 400]) - 2) < 1e-12
    with pytest.raises(ValueError):
        observed_order([5], [0.1])
    with pytest.raises(ValueError):
        observed_order([5, 10], [0.1, 0.0])
