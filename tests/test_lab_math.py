"""Exact denoiser maths, without ComfyUI."""
import math
import subprocess
import sys

import pytest
import torch

from samplers.exact import ExactDenoiser, MixtureSpec, mixture_means

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def brute_force_posterior_mean(means, s, x, sigma):
    """Bayes' rule written out component by component, in float64."""
    out = []
    for xb in x.double():
        logs, posts = [], []
        for mu in means:
            var = s * s + sigma * sigma
            logs.append(-((xb - mu) ** 2).sum() / (2 * var))
            posts.append(mu + (s * s / var) * (xb - mu))
        w = torch.softmax(torch.stack(logs), 0)
        out.append(sum(wk * pk for wk, pk in zip(w, posts)))
    return torch.stack(out)


@pytest.mark.parametrize("dataset", ["gmm", "shapes"])
@pytest.mark.parametrize("sigma", [0.03, 0.7, 14.6])
def test_exact_denoiser_equals_brute_force(dataset, sigma):
    spec = MixtureSpec(dataset=dataset, components=5, spread=0.3, seed=3)
    den = ExactDenoiser(spec)
    x = torch.randn(3, 4, 3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * (1 + sigma)
    got = den(x, sigma)
    want = brute_force_posterior_mean(mixture_means(spec, (4, 3, 5)), 0.3, x, sigma)
    assert torch.allclose(got, want, atol=1e-10, rtol=1e-10)


def test_posterior_mean_matches_monte_carlo():
    """E[x0 | x] estimated by sampling the joint and binning on x: checks the formula, not the code."""
    spec = MixtureSpec(dataset="gmm", components=2, spread=0.5, seed=0)
    den = ExactDenoiser(spec)
    mu = mixture_means(spec, (1, 1, 1)).flatten()
    gen = torch.Generator().manual_seed(0)
    n, sigma = 400_000, 0.8
    k = torch.randint(0, 2, (n,), generator=gen)
    x0 = mu[k] + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
    x = x0 + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    centre = float(mu.mean())
    sel = (x - centre).abs() < 0.02
    mc = x0[sel].mean()
    exact = den(torch.full((1, 1, 1, 1), float(x[sel].mean()), dtype=torch.float64), sigma).item()
    assert abs(mc.item() - exact) < 5 * x0[sel].std().item() / math.sqrt(sel.sum().item()) + 1e-3


def test_denoiser_limits():
    spec = MixtureSpec(dataset="shapes", components=4, spread=0.05, seed=1)
    den = ExactDenoiser(spec)
    means = mixture_means(spec, (4, 8, 8))
    # sigma -> 0 at a data point returns it; sigma huge returns the data mean.
    assert torch.allclose(den(means[:1], 1e-6), means[:1], atol=1e-8)
    far = den(torch.zeros(1, 4, 8, 8, dtype=torch.float64), 1e4)
    assert torch.allclose(far[0], means.mean(0), atol=1e-4)
    assert means.min() >= -1 and means.max() <= 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(components=0), "components"),
    (dict(spread=-0.1), "spread"),
    (dict(spread=float("nan")), "spread"),
    (dict(dataset="faces"), "dataset"),
])
def test_bad_spec_gives_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixtureSpec(**kwargs)


def test_non_finite_sigma_is_refused():
    den = ExactDenoiser(MixtureSpec())
    with pytest.raises(ValueError, match="sigma"):
        den(torch.zeros(1, 4, 2, 2), float("inf"))


def test_maths_packages_import_without_comfyui():
    code = ("import sys, samplers, freeu, samplers.exact; "
            "import pkgutil, importlib\n"
            "for pkg in (samplers, freeu):\n"
            "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
            "        importlib.import_module(m.name)\n"
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith('comfy.') or m in ('nodes', 'folder_paths')]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)  # -c: the repo root on sys.path
