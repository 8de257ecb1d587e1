"""The ground-truth studies' distance (bench/frechet.py): the Fréchet distance of samples to a
Gaussian known by its moments, and its value extrapolated to infinitely many samples, checked on
samples whose true distance is known."""
import pytest
import torch

from bench.frechet import GaussianTarget, frechet, frechet_infinite

pytestmark = pytest.mark.host_independent

D, K = 64, 8


def _mixture(spread, seed=100):
    """(component means, the mixture's Gaussian target) in D dimensions."""
    mu = torch.randn(K, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.5
    dev = mu - mu.mean(0)
    return mu, GaussianTarget.of(mu.mean(0), spread ** 2 * torch.eye(D, dtype=torch.float64) + dev.T @ dev / K)


def _draw(mu, spread, n, seed):
    g = torch.Generator().manual_seed(seed)
    return mu[torch.randint(0, K, (n,), generator=g)] + spread * torch.randn(n, D, generator=g, dtype=torch.float64)


def test_exact_samples_score_a_floor_that_the_extrapolation_removes():
    mu, target = _mixture(0.3)
    measured, extrapolated = [], []
    for seed in range(5):
        x = _draw(mu, 0.3, 4096, seed)
        measured.append(frechet(x, target))
        extrapolated.append(frechet_infinite(x, target, seed=seed))
    floor = sorted(measured)[2]
    assert floor > 0.01  # the finite-sample offset is there to remove
    assert abs(sorted(extrapolated)[2]) < 0.15 * floor
    assert all(abs(v) < 0.4 * floor for v in extrapolated)


def test_a_known_shift_of_the_mean_is_recovered():
    mu, target = _mixture(0.1)
    shift = 0.05
    true = D * shift ** 2  # the mixture's own moments are the target: the shift is the whole distance
    x = _draw(mu, 0.1, 8192, 3) + shift
    fd, fd_inf = frechet(x, target), frechet_infinite(x, target)
    assert fd > true
    assert abs(fd_inf - true) < 0.25 * (fd - true) + 0.02 * true
    assert abs(fd_inf - true) < abs(fd - true)


def test_a_scaled_covariance_is_scored_by_the_closed_form():
    # N(m, a^2 S) against N(m, S): FD = (1 - a)^2 tr(S), whatever S is
    mu, target = _mixture(0.3)
    x = _draw(mu, 0.3, 16384, 7)
    a = 1.5
    centre = mu.mean(0)
    scaled = centre + a * (x - centre)
    true = (1 - a) ** 2 * target.cov_trace
    assert abs(frechet_infinite(scaled, target) - true) < 0.03 * true


def test_same_samples_same_seed_same_value():
    mu, target = _mixture(0.3)
    x = _draw(mu, 0.3, 2048, 1)
    assert frechet_infinite(x, target, seed=5) == frechet_infinite(x, target, seed=5)


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="cov"):
        GaussianTarget.of(torch.zeros(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64))
    mu, target = _mixture(0.3)
    with pytest.raises(ValueError, match="fractions"):
        frechet_infinite(_draw(mu, 0.3, 100, 0), target, fractions=(1.0,))
