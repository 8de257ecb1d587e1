"""The paper's UniPC (noise prediction, B(h) = h) and the analytic first step: pure maths, no ComfyUI."""
import math

import pytest
import torch

from samplers.exact import ExactDenoiser, MixtureSpec
from samplers.unipc import (afs_grid, auto_order, phi, sample_unipc_fs, unipc_coefficients)

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

S, MU = 0.5, 0.3  # one Gaussian N(MU, S^2 I): its probability-flow ODE has a closed form


def gaussian_denoiser(x, sigma, **_):
    sig = sigma.view(-1, *[1] * (x.ndim - 1))
    return (S * S * x + sig * sig * MU) / (S * S + sig * sig)


def gaussian_flow(x0, sigma0, sigma1):
    """x(sigma1) on the ODE dx/dsigma = (x - D)/sigma: x - MU scales with sqrt(S^2 + sigma^2)."""
    return MU + (x0 - MU) * math.sqrt((S * S + sigma1 ** 2) / (S * S + sigma0 ** 2))


class Counting:
    def __init__(self, fn):
        self.fn, self.sigmas = fn, []

    def __call__(self, x, sigma, **kw):
        self.sigmas.append(float(sigma[0]))
        return self.fn(x, sigma, **kw)


def log_grid(n, hi=10.0, lo=0.05):
    return torch.exp(torch.linspace(math.log(hi), math.log(lo), n + 1, dtype=torch.float64))


def x_start():
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 10


@pytest.mark.parametrize("options, expected", [
    (dict(order=1, corrector=False), 1),
    (dict(order=1, corrector=True), 2),
    (dict(order=2, corrector=False, lower_order_final=False), 2),
    (dict(order=2, corrector=True, lower_order_final=False), 3),
])
def test_order_of_convergence_on_analytic_gaussian(options, expected):
    """Halving every step in lambda divides the error by 2^order (UniP-p: p, UniC adds one)."""
    x0 = x_start()
    want = gaussian_flow(x0, 10.0, 0.05)
    errs = [(sample_unipc_fs(gaussian_denoiser, x0.clone(), log_grid(n), **options) - want).abs().max().item()
            for n in (16, 32, 64, 128)]
    rates = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert abs(rates[-1] - expected) < 0.15 and abs(rates[-2] - expected) < 0.25, (errs, rates)


def test_order_one_predictor_is_ddim_euler():
    """In k-diffusion scaling the noise-form order-1 UniP step is x + (sigma_t - sigma_s) eps_s."""
    den = ExactDenoiser(MixtureSpec("gmm", 5, 0.3, 2))
    model = lambda x, s, **_: den(x, s)  # noqa: E731
    sig = torch.tensor([14.6146, 5.2124, 2.4311, 1.3238, 0.7560, 0.3937, 0.0600], dtype=torch.float64)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 14.6146
    got = sample_unipc_fs(model, x.clone(), sig, order=1, corrector=False)
    ref = x.clone()
    for s, t in zip(sig[:-1], sig[1:]):
        ref = ref + (t - s) * (ref - model(ref, s.expand(2))) / s
    assert torch.allclose(got, ref, rtol=0, atol=1e-10), (got - ref).abs().max()


def test_phi_and_coefficients():
    for h in (0.3, 0.99, 1.0, 2.5):  # the closed forms are accurate away from 0
        assert abs(phi(1, h) - math.expm1(h) / h) < 1e-12
        assert abs(phi(2, h) - (math.expm1(h) - h) / h ** 2) < 1e-12
        assert abs(phi(3, h) - (math.expm1(h) - h - h * h / 2) / h ** 3) < 1e-10
    h = 1e-4  # near 0 the series limits: phi_k(h) = 1/k! + h/(k+1)! + ...
    assert abs(phi(2, h) - (0.5 + h / 6 + h * h / 24)) < 1e-13
    assert abs(phi(3, h) - (1 / 6 + h / 24 + h * h / 120)) < 1e-13
    assert unipc_coefficients([1.0], 0.7) == [0.5]  # UniPC's one-term choice, the h -> 0 limit of phi_2
    a = unipc_coefficients([-0.8, 1.0], 0.7)  # two terms: sum a r^(k-1) = k! phi_{k+1}(h)
    assert abs(a[0] + a[1] - phi(2, 0.7)) < 1e-12
    assert abs(-0.8 * a[0] + a[1] - 2 * phi(3, 0.7)) < 1e-12


def test_corrector_reduces_the_error_at_paper_step_counts():
    """On a lab mixture, against a fine reference, UniC lowers the error at 5, 6 and 8 steps."""
    den = ExactDenoiser(MixtureSpec("gmm", 4, 0.4, 3))
    model = lambda x, s, **_: den(x, s)  # noqa: E731
    x = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 14.6
    ref = sample_unipc_fs(model, x.clone(), log_grid(400, 14.6, 0.13), order=2, lower_order_final=False)
    for n in (5, 6, 8):
        sig = log_grid(n, 14.6, 0.13)
        err = {c: (sample_unipc_fs(model, x.clone(), sig, order=auto_order(n), corrector=c) - ref).norm().item()
               for c in (False, True)}
        assert err[True] < 0.7 * err[False], (n, err)


@pytest.mark.parametrize("n, afs", [(5, False), (6, False), (8, False), (6, True), (8, True)])
def test_model_calls_equal_steps_with_and_without_afs(n, afs):
    model = Counting(gaussian_denoiser)
    sig = log_grid(n, 14.6146, 0.06)
    sample_unipc_fs(model, x_start(), sig, order=auto_order(n), afs=afs)
    assert len(model.sigmas) == n
    if afs:  # no call at sigma_0; the first call is at the inserted point, then sigma_1 .. sigma_{N-1}
        mid = math.sqrt(float(sig[0]) * float(sig[1]))
        assert model.sigmas[0] == pytest.approx(mid) and model.sigmas[1:] == pytest.approx(sig[1:-1].tolist())
    else:
        assert model.sigmas == pytest.approx(sig[:-1].tolist())


def test_trailing_zero_ends_on_the_data_prediction():
    model = Counting(gaussian_denoiser)
    sig = torch.cat([log_grid(6, 14.6, 0.03), torch.zeros(1, dtype=torch.float64)])
    x = sample_unipc_fs(model, x_start(), sig, order=2)
    assert len(model.sigmas) == 7
    assert torch.isfinite(x).all()


def test_afs_first_move_uses_the_latent_as_noise():
    """The AFS move is the Euler/DDIM move with eps_hat = x / sqrt(1 + sigma0^2), no model call."""
    seen = []
    sig = torch.tensor([14.6146, 5.2124, 0.06], dtype=torch.float64)
    mid = 9.0
    x = x_start()

    def model(xin, s, **_):
        seen.append(xin.clone())
        return torch.zeros_like(xin)

    sample_unipc_fs(model, x.clone(), sig, order=1, corrector=False, afs=True, afs_sigma=mid)
    eps_hat = x / math.sqrt(1 + 14.6146 ** 2)
    assert torch.allclose(seen[0], x - (14.6146 - mid) * eps_hat, atol=1e-12)
    # implied data prediction x (1 - sigma0/sqrt(1 + sigma0^2)) is about 0.0023 x at SD's sigma_max
    assert 1 - 14.6146 / math.sqrt(1 + 14.6146 ** 2) == pytest.approx(0.002334, abs=2e-6)
    # the diffusers-style variant scales eps_hat
    seen.clear()
    sample_unipc_fs(model, x.clone(), sig, order=1, corrector=False, afs=True, afs_sigma=mid, afs_eps_scale=0.975)
    assert torch.allclose(seen[0], x - (14.6146 - mid) * 0.975 * eps_hat, atol=1e-12)


def test_callbacks_index_the_callers_sigmas():
    got = []
    sig = log_grid(6, 14.6, 0.06)
    sample_unipc_fs(gaussian_denoiser, x_start(), sig, afs=True, callback=lambda d: got.append((d["i"], d["sigma"])))
    assert [i for i, _ in got] == list(range(6))
    assert [s for _, s in got] == pytest.approx(sig[:-1].tolist())


def test_batch_members_are_independent():
    den = ExactDenoiser(MixtureSpec("gmm", 4, 0.4, 3))
    model = lambda x, s, **_: den(x, s)  # noqa: E731
    x = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(5)) * 14.6
    sig = log_grid(8, 14.6, 0.06).float()
    whole = sample_unipc_fs(model, x.clone(), sig, order=2, afs=True)
    one = sample_unipc_fs(model, x[1:2].clone(), sig, order=2, afs=True)
    assert torch.allclose(whole[1:2], one, atol=1e-5)


@pytest.mark.parametrize("sigmas, options, word", [
    ([1.0], {}, "sigmas"),
    ([5.0, 5.0, 1.0], {}, "decreasing"),
    ([5.0, float("nan"), 1.0], {}, "finite"),
    ([5.0, 1.0, -1.0], {}, ">= 0"),
    ([5.0, 1.0], {"order": 4}, "order"),
    ([5.0, 1.0], {"order": 0}, "order"),
    ([5.0, 0.0], {"afs": True}, "afs"),
    ([5.0, 1.0], {"afs": True, "afs_sigma": 6.0}, "afs_sigma"),
    ([5.0, 1.0], {"afs_eps_scale": 0.0}, "afs_eps_scale"),
])
def test_bad_input_is_refused_before_any_model_call(sigmas, options, word):
    model = Counting(gaussian_denoiser)
    with pytest.raises(ValueError, match=word):
        sample_unipc_fs(model, torch.zeros(1, 2), torch.tensor(sigmas), **options)
    assert model.sigmas == []


def test_afs_grid_inserts_one_point():
    g = afs_grid([14.6146, 5.2124, 0.06], 8.0)
    assert g == [14.6146, 8.0, 5.2124, 0.06]
    assert auto_order(5) == auto_order(6) == 1 and auto_order(8) == 2
