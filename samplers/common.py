"""Helpers shared by the solvers (k-diffusion conventions: x = x0 + sigma * noise, the model returns
the denoised estimate D(x; sigma), the probability-flow ODE is dx/dsigma = (x - D) / sigma)."""
from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

from .noise import default_noise_sampler

try:  # console progress like ComfyUI's own samplers; optional so the maths needs only torch
    from tqdm.auto import trange as _trange
except ImportError:  # pragma: no cover
    _trange = None


# Off by default: a solver runs under torch.no_grad() whatever its caller's grad mode, as ComfyUI's own
# k-diffusion samplers do; otherwise a caller with gradients on (a script, another pack's node, a
# training loop) keeps every model call's activations alive for the whole run.
_KEEP_CALLER_GRAD_MODE = contextvars.ContextVar("fewstep_keep_caller_grad_mode", default=False)


@contextlib.contextmanager
def sampling_with_gradients(enabled: bool = True):
    """The switch for callers that need gradients through a sampler on purpose (a trainer):

        with sampling_with_gradients():
            samples = comfy.sample.sample(...)   # or any FewStep solver called directly

    Inside, FewStep solvers keep the caller's grad mode (gradients flow where torch.enable_grad() is
    on); outside, they never build an autograd graph. Scoped to the current thread / async task."""
    token = _KEEP_CALLER_GRAD_MODE.set(bool(enabled))
    try:
        yield
    finally:
        _KEEP_CALLER_GRAD_MODE.reset(token)


def gradients_requested() -> bool:
    """True inside sampling_with_gradients()."""
    return _KEEP_CALLER_GRAD_MODE.get()


def solver_entry(fn):
    """Marks a public solver (k-diffusion signature): it runs under torch.no_grad() unless its caller
    is inside sampling_with_gradients(). Every sample_* entry point of this package carries it
    (tests/test_reliability_grad.py checks that none is missing)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if _KEEP_CALLER_GRAD_MODE.get():
            return fn(*args, **kwargs)
        with torch.no_grad():
            return fn(*args, **kwargs)

    run.fewstep_solver = True
    return run


def steps(n: int, disable=None):
    if _trange is None or disable:
        return range(n)
    return _trange(n, disable=disable)


def to_d(x, sigma, denoised):
    """ODE slope (x - D) / sigma."""
    return (x - denoised) / sigma


class Stepper:
    """Evaluates the model and reports callbacks in ComfyUI's format for one sampling run."""

    def __init__(self, model, x, sigmas, extra_args, callback):
        self.model = model
        self.extra_args = {} if extra_args is None else extra_args
        self.callback = callback
        self.s_in = x.new_ones([x.shape[0]])
        self.sigmas = sigmas
        # float64 copies for step-size coefficients; the model always gets the tensor values
        self.s = [float(v) for v in sigmas.detach().to("cpu", torch.float64)]

    def denoise(self, x, sigma):
        # A python-float sigma scales s_in on the device: no host-to-device copy (a sync on CUDA).
        return self.model(x, (sigma if torch.is_tensor(sigma) else float(sigma)) * self.s_in, **self.extra_args)

    def report(self, i, x, denoised, sigma_hat=None):
        if self.callback is not None:
            sigma = self.sigmas[i]
            self.callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                           "denoised": denoised})

    def noise_sampler(self, x, noise_sampler):
        if noise_sampler is not None:
            return noise_sampler
        return default_noise_sampler(x, seed=self.extra_args.get("seed"))


def guided_point(x, denoised, cfg_pp):
    """CFG++ (Chung et al. 2024, arXiv 2406.08070) for a solver in k-diffusion form.

    CFG++ takes the guided estimate D_cfg as the clean point and renoises along the *unconditional*
    noise eps_u = (x - D_u) / sigma: its DDIM step is x_next = D_cfg + sigma_next * eps_u. Writing
    x~ = x + (D_cfg - D_u) (= D_cfg + sigma * eps_u), that is the plain DDIM step from x~ with the
    estimate D_cfg, so every solver gets its CFG++ form by stepping from x~, with D_cfg as the
    current estimate and the *unconditional* estimates (or noises) of earlier points as its history
    (the form of the paper's DPM-Solver++(2M) CFG++ and of ComfyUI's dpmpp_2m_cfg_pp).

    cfg_pp: None (plain solver) or a callable returning the unconditional estimate D_u of the
    latest model call (None from it: no unconditional pass was made, D_u = D_cfg).
    Returns (x~, D_u); with D_u == D_cfg this is (x, D_cfg) bit for bit (x + 0 == x)."""
    if cfg_pp is None:
        return x, denoised
    uncond = cfg_pp()
    if uncond is None:
        return x, denoised
    return x + (denoised - uncond), uncond


def step_order(order: int, i: int, n: int, lower_order_final: bool) -> int:
    """Order a multistep method can use at step i of n: warm-up from 1, and with lower_order_final
    also down to 1 at the last step (dpm-solver / diffusers convention)."""
    k = min(order, i + 1)
    if lower_order_final:
        k = min(k, n - i)
    return max(k, 1)
