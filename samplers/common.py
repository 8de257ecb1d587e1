"""Helpers shared by the solvers (k-diffusion conventions: x = x0 + sigma * noise, the model returns
the denoised estimate D(x; sigma), the probability-flow ODE is dx/dsigma = (x - D) / sigma)."""
from __future__ import annotations

import torch

from .noise import default_noise_sampler

try:  # console progress like ComfyUI's own samplers; optional so the maths needs only torch
    from tqdm.auto import trange as _trange
except ImportError:  # pragma: no cover
    _trange = None


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


def step_order(order: int, i: int, n: int, lower_order_final: bool) -> int:
    """Order a multistep method can use at step i of n: warm-up from 1, and with lower_order_final
    also down to 1 at the last step (dpm-solver / diffusers convention)."""
    k = min(order, i + 1)
    if lower_order_final:
        k = min(k, n - i)
    return max(k, 1)
