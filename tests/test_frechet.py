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


def test_the_spread_checks_known_distance_is_the_moments_of_what_it_draws():
    # bench/check_frechet_spread.py: its "exact" FD must be that of the samples it draws (weighted,
    # rescaled mixture), and its paired samples must share the component and the Gaussian draw
    from bench.check_frechet_spread import perturbed
    from bench.frechet import mixture_moments
    from samplers.exact import MixtureSpec, mixture_means
    target, draw, exact, exact_paired = perturbed("gmm8-s0.1", 1.06, 0.2, 0.98)
    x, y = draw(100_000, torch.Generator().manual_seed(0))
    assert frechet(x, target) == pytest.approx(exact, rel=0.2)
    assert exact > 0.1 and exact_paired < exact  # the tilt and the spread both move it
    # y = mu_k + 0.98 s z and x = mu_k + s z: (y - 0.98 x) / 0.02 is the component's mean, the same k
    mu = mixture_means(MixtureSpec("gmm", 8, 0.1, 1), (4, 8, 8)).flatten(1).double()
    means = (y[:2000] - 0.98 * x[:2000]) / 0.02
    assert float(torch.cdist(means, mu).min(1).values.max()) < 1e-6
    # the moments of an explicit weighted mixture, against a large sample of it
    mu = torch.tensor([[0.0, 0.0], [4.0, 1.0], [-2.0, 3.0]], dtype=torch.float64)
    w = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    pts = mu[torch.multinomial(w, 400_000, replacement=True, generator=g)] + 0.5 * torch.randn(400_000, 2, generator=g,
                                                                                               dtype=torch.float64)
    mean, cov = mixture_moments(mu, w, 0.5)
    assert torch.allclose(pts.mean(0), mean, atol=0.02) and torch.allclose(torch.cov(pts.T), cov, atol=0.05)


def test_fold_ratios_pair_the_rows_and_bracket_a_known_paired_ratio():
    from bench.check_frechet_spread import perturbed
    from bench.frechet import fold_ratios
    target, draw, exact, exact_paired = perturbed("gmm16-s0.5", 1.06, 0.2, 0.98)
    x, y = draw(32768, torch.Generator().manual_seed(3))
    assert fold_ratios(x, x, target) == [1.0] * 4  # the same rows: every block's ratio is exactly 1
    ratios = fold_ratios(x, y, target)
    assert len(ratios) == 4 and min(ratios) < exact_paired / exact < max(ratios)
    assert abs(sum(ratios) / 4 - exact_paired / exact) < 0.1
    # unpaired (y's rows shuffled) the blocks no longer compare the same noises, and spread wider
    shuffled = fold_ratios(x, y[torch.randperm(32768, generator=torch.Generator().manual_seed(0))], target)
    assert max(shuffled) - min(shuffled) > max(ratios) - min(ratios)
    with pytest.raises(ValueError, match="x: expected"):
        fold_ratios(x, y[:-1], target)
    with pytest.raises(ValueError, match="folds"):
        fold_ratios(x[:20], y[:20], target)
