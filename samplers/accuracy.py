"""Scoring a sampler against the exact probability-flow ODE of an exact denoiser.

Two targets are computed for every run (both from the same initial latent x_T at sigmas[0]):

* "model sample": the sample an exact ODE solver would give *with this model*: the PF-ODE solved
  from sigmas[0] down to `sample_sigma` (the model's sigma_min), then the final step to sigma = 0
  taken as x = D(x; sigma_min). That final denoise is what every ComfyUI scheduler does in the
  limit of many steps (the schedule ends ..., sigma_min, 0 and the last step to 0 returns the
  denoised prediction); a discrete SD/SDXL model cannot be evaluated below its sigma_min anyway.
  For continuous models pass sample_sigma=None to target the true limit sigma -> 0 instead.
  This target is common to all samplers and schedules of one model, so it ranks them.

* "schedule endpoint": the exact ODE state where *this* run ends, reached the way the sampler
  reaches it. The convention is read off the run, not assumed:
    - sigmas end at a non-zero sigma_stop (no final 0): target = x(sigma_stop), noise included;
    - sigmas end at 0 and the output equals the denoised prediction of the last model call (at
      sigma_c): target = D(x(sigma_c); sigma_c)  (Euler/DPM++/Heun... take this final step);
    - sigmas end at 0 otherwise (the sampler integrates down to ~0 itself, as ComfyUI's UniPC
      does): target = the limit x(sigma -> 0).
  This isolates discretisation error, but a schedule that stops early has an easier target, so
  it is reported alongside, never used for ranking.

Per-sample error is the RMSE over all latent elements; mean and median over the batch.
NFE is the number of model evaluations the sampler made (counted by wrapping the model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .reference import Reference, per_sample_rmse, reference_states

TARGETS = ("model sample", "schedule endpoint")


@dataclass
class ModelCall:
    sigma: torch.Tensor     # (B,) float64
    x: torch.Tensor         # input latent, float64 on the CPU
    denoised: torch.Tensor  # model output (the denoised prediction), float64 on the CPU


class CallLog:
    """Wraps a k-diffusion style model(x, sigma, **kw) -> denoised; counts and records calls."""

    def __init__(self, model=None, keep=True):
        self.model = model
        self.keep = keep
        self.calls: list[ModelCall] = []
        self.count = 0

    def record(self, x, sigma, denoised):
        self.count += 1
        if self.keep:
            sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).cpu()
            if sig.numel() == 1:
                sig = sig.expand(x.shape[0])
            self.calls.append(ModelCall(sig[: x.shape[0]].clone(), x.detach().to("cpu", torch.float64),
                                        denoised.detach().to("cpu", torch.float64)))

    def __call__(self, x, sigma, **kwargs):
        denoised = self.model(x, sigma, **kwargs)
        self.record(x, sigma, denoised)
        return denoised

    @property
    def nfe(self) -> int:
        return self.count


@dataclass
class AccuracyResult:
    sample_rmse: torch.Tensor      # (B,) vs the exact model sample
    endpoint_rmse: torch.Tensor    # (B,) vs the exact state at this run's own end
    nfe: int
    sigmas: list
    convention: str                # how the run ended (see module docstring)
    sample_target: str
    trajectory: list = field(default_factory=list)  # [(sigma, mean RMSE of the sampler's state at a model call)]
    call_sigmas: list = field(default_factory=list)
    reference_discrepancy: float = 0.0
    sample: torch.Tensor | None = field(default=None, repr=False)    # the exact model sample
    endpoint: torch.Tensor | None = field(default=None, repr=False)  # the exact state at this run's end

    def target_latent(self, target: str = "model sample") -> torch.Tensor:
        self.rmse(target)  # validates the name
        return self.sample if target == "model sample" else self.endpoint

    def rmse(self, target: str = "model sample") -> torch.Tensor:
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        return self.sample_rmse if target == "model sample" else self.endpoint_rmse

    def mean(self, target="model sample") -> float:
        return float(self.rmse(target).mean())

    def median(self, target="model sample") -> float:
        return float(self.rmse(target).median())

    def report(self) -> str:
        sig = ", ".join(f"{s:.4g}" for s in self.sigmas)
        return "\n".join([
            f"NFE (model calls): {self.nfe}",
            f"RMSE vs exact model sample ({self.sample_target}): mean {self.mean():.4g}, median {self.median():.4g}",
            f"RMSE vs exact ODE at the schedule's end ({self.convention}): mean {self.mean(TARGETS[1]):.4g}, "
            f"median {self.median(TARGETS[1]):.4g}",
            f"batch {len(self.sample_rmse)}; reference certified to RMSE {self.reference_discrepancy:.2g}",
            f"sigmas ({len(self.sigmas) - 1} steps): [{sig}]",
        ])

    def as_dict(self) -> dict:
        return {"nfe": self.nfe, "rmse_mean": self.mean(), "rmse_median": self.median(),
                "endpoint_rmse_mean": self.mean(TARGETS[1]), "endpoint_rmse_median": self.median(TARGETS[1]),
                "convention": self.convention, "sample_target": self.sample_target,
                "sigmas": [float(s) for s in self.sigmas], "call_sigmas": list(self.call_sigmas),
                "reference_discrepancy": self.reference_discrepancy}


def check_sigmas(sigmas) -> list:
    """Validates a SIGMAS schedule for scoring: 1-D, >= 2 entries, finite, >= 0, non-increasing,
    starting above 0. Returns python floats."""
    s = torch.as_tensor(sigmas).detach().reshape(-1).to("cpu", torch.float64)
    if s.numel() < 2:
        raise ValueError(f"sigmas must hold at least 2 values (one step), got {s.numel()}")
    if not torch.isfinite(s).all():
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    if (s < 0).any():
        raise ValueError(f"sigmas must be >= 0, got {s.tolist()}")
    if not s[0] > 0:
        raise ValueError("sigmas[0] must be > 0")
    if (s[1:] > s[:-1]).any():
        raise ValueError(f"sigmas must be non-increasing, got {s.tolist()}")
    return s.tolist()


def end_convention(sigmas: list, output: torch.Tensor, log: CallLog, rel_tol: float = 1e-5):
    """('stop', sigma) | ('denoise', sigma_c) | ('integrate', 0.0): how the run reached its end."""
    if sigmas[-1] > 0:
        return "stop", float(sigmas[-1])
    if log.calls:
        last = log.calls[-1]
        out = output.detach().to("cpu", torch.float64)
        if last.denoised.shape == out.shape:
            gap = float(per_sample_rmse(out, last.denoised).max())
            scale = float(out.flatten(1).pow(2).mean(1).sqrt().max()) + 1e-6
            same_sigma = bool((last.sigma == last.sigma[0]).all()) and float(last.sigma[0]) > 0
            if gap <= rel_tol * scale and same_sigma:
                return "denoise", float(last.sigma[0])
    return "integrate", 0.0


def score_run(denoiser, x_start: torch.Tensor, sigmas, output: torch.Tensor, log: CallLog,
              sample_sigma: float | None, *, rtol: float = 1e-7, max_discrepancy: float = 1e-6) -> AccuracyResult:
    """Scores a finished run. x_start: the latent the sampler started from at sigmas[0];
    output: what it returned; log: its model calls; sample_sigma: the model's sigma_min (final
    denoise there) or None for the sigma -> 0 limit."""
    sig = check_sigmas(sigmas)
    s0 = sig[0]
    kind, s_end = end_convention(sig, output, log)
    if sample_sigma is not None and not (math.isfinite(sample_sigma) and 0 < sample_sigma < s0):
        raise ValueError(f"sample_sigma must be finite and in (0, sigmas[0]={s0}), got {sample_sigma}")
    s_sample = 0.0 if sample_sigma is None else float(sample_sigma)
    # Sampler states at its model calls, for the trajectory diagnostic (calls above s0 are skipped:
    # stochastic samplers may raise sigma; the ODE reference is only built downwards).
    traj = []
    for call in log.calls:
        if bool((call.sigma == call.sigma[0]).all()) and 0 < float(call.sigma[0]) <= s0 and call.x.shape == x_start.shape:
            traj.append(call)
    points = {s_sample, s_end, *(float(c.sigma[0]) for c in traj)}
    ref: Reference = reference_states(denoiser, x_start, s0, points, rtol=rtol, max_discrepancy=max_discrepancy)

    def denoise(x, s):
        return denoiser(x, torch.full((x.shape[0],), s, dtype=torch.float64, device=x.device)).to(torch.float64)

    dev = x_start.device
    out = output.detach().to(dev, torch.float64)
    sample = ref.at(s_sample) if sample_sigma is None else denoise(ref.at(s_sample), s_sample)
    if kind == "denoise":
        endpoint, convention = denoise(ref.at(s_end), s_end), f"final step x = D(x; {s_end:.4g})"
    elif kind == "stop":
        endpoint, convention = ref.at(s_end), f"stops at sigma {s_end:.4g} without a final denoise"
    else:
        endpoint, convention = ref.at(0.0), "integrates to sigma -> 0"
    trajectory = [(float(c.sigma[0]), float(per_sample_rmse(c.x.to(dev), ref.at(float(c.sigma[0]))).mean()))
                  for c in traj]
    target = (f"ODE to sigma_min={s_sample:.4g}, then x = D(x; sigma_min)" if sample_sigma is not None
              else "ODE to sigma -> 0")
    return AccuracyResult(
        sample_rmse=per_sample_rmse(out, sample).cpu(), endpoint_rmse=per_sample_rmse(out, endpoint).cpu(),
        nfe=log.nfe, sigmas=sig, convention=convention, sample_target=target, trajectory=trajectory,
        call_sigmas=[float(c.sigma[0]) for c in log.calls], reference_discrepancy=ref.discrepancy,
        sample=sample.cpu(), endpoint=endpoint.cpu())


def score_solver(denoiser, solver, x_start: torch.Tensor, sigmas, sample_sigma: float | None = None,
                 **options) -> AccuracyResult:
    """Runs a pure k-diffusion style solver(model, x, sigmas, extra_args, callback, disable) on the
    exact denoiser in float64 (no ComfyUI) and scores it."""
    sig = torch.tensor(check_sigmas(sigmas), dtype=torch.float64, device=x_start.device)
    log = CallLog(denoiser)
    x = x_start.to(torch.float64)
    out = solver(log, x.clone(), sig, extra_args={}, callback=None, disable=True, **options)
    return score_run(denoiser, x, sig, out, log, sample_sigma)


def observed_order(nfes, errors) -> float:
    """Least-squares slope p in error ~ C * NFE^-p (log-log)."""
    if len(nfes) != len(errors) or len(nfes) < 2:
        raise ValueError("observed_order needs at least two (nfe, error) pairs")
    if any(e <= 0 for e in errors) or any(n <= 0 for n in nfes):
        raise ValueError("observed_order needs positive NFE and errors")
    lx = torch.tensor([math.log(n) for n in nfes], dtype=torch.float64)
    ly = torch.tensor([math.log(e) for e in errors], dtype=torch.float64)
    lx, ly = lx - lx.mean(), ly - ly.mean()
    return float(-(lx * ly).sum() / (lx * lx).sum())
