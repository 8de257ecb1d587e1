"""Issue #18's finding, reproduced: the DP's own paths (no Karras candidate), and where their cost
differs from the truth.

    python -m bench.repro_final_jump                                  # sharp gmm, SDXL-like 4x32x32
    python -m bench.repro_final_jump --variants jump,1,none jump,1,local
    python -m bench.repro_final_jump --dataset shapes --spread 0.05 --data-seed 0 --shape 4 16 16 --diagnose

Prints every cost variant's DP path at N = 5, 6, 8 for DPM++ 2M and its error on scoring noises
against the converged PF-ODE reference (median per-sample RMSE), beside Karras. --diagnose prices
each jump of the Karras path and of the best DP path three ways: the cost (teacher-forced residual
times the propagation factor, relative to the final sample's norm), the true effect on the final
sample (the jump's landing state solved to the end with the reference ODE solver, against the
teacher's own state solved the same way, relative to the same norm) and the residual relative to the
state's own norm. The latent is scaled down from SDXL's 4x128x128 to keep CPU time small.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from samplers import schedule_opt as so  # noqa: E402
from samplers.catalog import solver  # noqa: E402
from samplers.exact import ExactDenoiser, MixtureSpec  # noqa: E402
from samplers.reference import per_sample_rmse, reference_states, solve_pf_ode  # noqa: E402
from samplers.schedules import karras_sigmas, sd_discrete_sigmas  # noqa: E402


def noises(seed, count, shape, smax):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((count,) + shape, generator=g, dtype=torch.float64) * math.sqrt(1 + smax ** 2)


def variant(text):
    kind, power, prop = text.split(",")
    return kind, float(power), prop


def rel(a, ref):
    return float(((a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).mean())


def diagnose(den, x, lo, hi, n, prop):
    """Per-jump cost vs true propagated effect for Karras and the best DP path (jump1, `prop`)."""
    kar = karras_sigmas(n, lo, hi, dtype=torch.float64)
    grid = so.log_grid(hi, lo, 120, include=kar[:-1].tolist())
    teacher = so.teacher_pass(den, x, grid, 2)
    costs = so.jump_costs(teacher, so.DPMPP_2M, "jump", 1.0, prop)
    rule = so.JUMP_RULES["dpmpp_2m"]
    ones = torch.ones(x.shape[0], dtype=torch.float64)

    def to_end(xk, sk):
        out, _ = solve_pf_ode(den, xk, sk, [lo], rtol=1e-6)
        return den(out[min(out, key=lambda s: abs(s - lo))], lo * ones)

    karras_path = [int(torch.argmin((grid - v).abs())) for v in kar[:-1].tolist()]
    for name, path in (("Karras", karras_path), ("DP", so.optimal_paths(costs, n).paths[n])):
        print(f"{name} path " + ", ".join(f"{float(grid[i]):.3f}" for i in path) + f"  (propagation {prop})")
        for i, (j, k) in enumerate(zip(path, path[1:])):
            p = path[i - 1] if i else None
            xk = so.apply_rule(rule, teacher.states[j], teacher.denoised[j], None if p is None else teacher.denoised[p],
                               None if p is None else grid[p], grid[j], grid[k])
            cost = float(costs.triple[p, j, k] if p is not None else costs.pair[j, k])
            true = rel(to_end(xk, float(grid[k])), to_end(teacher.states[k], float(grid[k])))
            print(f"  {float(grid[j]):7.3f} -> {float(grid[k]):6.3f}: cost {cost:.4f}  true {true:.4f}  "
                  f"residual / |x_k| {rel(xk, teacher.states[k]):.4f}")
        print(f"  {float(grid[path[-1]]):7.3f} -> 0     : cost {float(costs.terminal[path[-1]]):.4f} (exact)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="gmm")
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--spread", type=float, default=0.02)
    ap.add_argument("--data-seed", type=int, default=11)
    ap.add_argument("--shape", type=int, nargs=3, default=[4, 32, 32])
    ap.add_argument("--fit", type=int, default=128)
    ap.add_argument("--holdout", type=int, default=32)
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 6, 8])
    ap.add_argument("--variants", type=variant, nargs="+",
                    help="cost variants kind,power,propagation (none|gaussian|local); default: the optimiser's")
    ap.add_argument("--diagnose", action="store_true", help="per-jump cost against the true effect (N = first --steps)")
    ap.add_argument("--propagation", default="local", help="with --diagnose")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    table = sd_discrete_sigmas(dtype=torch.float64)
    lo, hi = float(table[0]), float(table[-1])
    shape = tuple(args.shape)
    den = ExactDenoiser(MixtureSpec(args.dataset, args.components, args.spread, args.data_seed))
    if args.diagnose:
        diagnose(den, noises(105, 48, shape, hi), lo, hi, args.steps[0], args.propagation)
        return
    x_fit = torch.cat([noises(101, args.fit, shape, hi), noises(102, args.holdout, shape, hi)])
    x_test = noises(103, args.test, shape, hi)
    ref = reference_states(den, x_test, hi, [lo])
    x_ref = den(ref.at(lo), torch.full((args.test,), lo, dtype=torch.float64))
    spec = solver("dpmpp_2m")

    def run(x, sig):
        return spec(den, x.clone(), sig.to(torch.float64), disable=True)

    teacher = so.teacher_pass(den, x_fit, so.log_grid(hi, lo, 120), 2)
    dp = None
    for n in args.steps:
        res = so.optimise_schedule(den, x_fit, hi, lo, n, so.DPMPP_2M, run_sampler=run, holdout=args.holdout,
                                   teacher=teacher, variants=args.variants or so.DEFAULT_VARIANTS,
                                   max_steps=max(args.steps), dp=dp)
        dp = res.dp
        k = float(per_sample_rmse(run(x_test, karras_sigmas(n, lo, hi, dtype=torch.float64)), x_ref).median())
        print(f"N={n}  Karras median RMSE {k:.4f}   selected: {res.chosen}", flush=True)
        for name, r in res.dp.items():
            sig = r.schedule(n)
            e = float(per_sample_rmse(run(x_test, sig), x_ref).median())
            print(f"  {name:>9}: {e:.4f} ({e / k:.2f}x Karras)  sigmas " + ", ".join(f"{v:.2f}" for v in sig.tolist()))


if __name__ == "__main__":
    main()
