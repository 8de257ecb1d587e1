"""Robust summaries of per-sample errors for the lab benchmarks (issue #18): the median and the share
of samples that end on another mode (error above a threshold: the modes of the lab's mixtures are far
apart, so the near and far groups do not overlap), with bootstrap intervals; paired ratios of two
runs on the same noises. Plain torch; no ComfyUI."""
from __future__ import annotations

import torch

DRAWS = 1000


def _resamples(n: int, draws: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (draws, n), generator=g)


def interval(values: torch.Tensor, level: float = 0.95) -> tuple:
    lo = (1 - level) / 2
    return float(values.quantile(lo)), float(values.quantile(1 - lo))


def median_ci(errs: torch.Tensor, draws: int = DRAWS, seed: int = 0) -> tuple:
    """(median, (low, high)) of per-sample errors, percentile bootstrap."""
    e = errs.to(torch.float64)
    boot = e[_resamples(e.numel(), draws, seed)].median(dim=1).values
    return float(e.median()), interval(boot)


def far_ci(errs: torch.Tensor, far: float, draws: int = DRAWS, seed: int = 0) -> tuple:
    """(share of samples with error > far, (low, high))."""
    hit = (errs.to(torch.float64) > far).double()
    boot = hit[_resamples(hit.numel(), draws, seed)].mean(dim=1)
    return float(hit.mean()), interval(boot)


def paired_median_ratio(a: torch.Tensor, b: torch.Tensor, draws: int = DRAWS, seed: int = 0) -> tuple:
    """median(a) / median(b) for two runs on the SAME noises (resampled together)."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    idx = _resamples(a.numel(), draws, seed)
    boot = a[idx].median(dim=1).values / b[idx].median(dim=1).values.clamp_min(1e-300)
    return float(a.median() / b.median().clamp_min(1e-300)), interval(boot)


def paired_far_difference(a: torch.Tensor, b: torch.Tensor, far: float, draws: int = DRAWS, seed: int = 0) -> tuple:
    """share far(a) - share far(b) on the same noises, with its interval."""
    d = (a > far).double() - (b > far).double()
    boot = d[_resamples(d.numel(), draws, seed)].mean(dim=1)
    return float(d.mean()), interval(boot)


def robust_table(rows, ds, nfes, far, summary, best):
    """Best of each origin by the MEDIAN per-sample error, with bootstrap intervals, the share of
    samples that end on another mode (error > far) and the mean beside them; the restated target
    (issue #18): FewStep's best <= 0.5 x ComfyUI's best on the median, and no more samples on another
    mode than ComfyUI's best, at NFE 5, 6 and 8. `best(rows, ds, nfe, origin)` picks a row; each
    data set's per-NFE outcome is appended to `summary`."""
    out = ["| NFE | ComfyUI best by median | median [95 % CI] | other mode [CI] | mean | FewStep best by median | "
           "median [CI] | other mode [CI] | mean | median ratio [CI] | other-mode difference [CI] | target |",
           "|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for n in nfes:
        c, p = best(rows, ds, n, "ComfyUI"), best(rows, ds, n, "FewStep")
        if c is None or p is None or "errs" not in c or "errs" not in p:
            who = "FewStep" if p is None else "ComfyUI" if c is None else "per-sample"
            out.append(f"| {n} |" + " |" * 10 + f" no {who} entry |")
            continue
        cells = []
        for r in (c, p):
            m, (mlo, mhi) = median_ci(r["errs"])
            f, (flo, fhi) = far_ci(r["errs"], far)
            cells.append(f"{r['sampler']} + {r['schedule']} | {m:.3g} [{mlo:.3g}, {mhi:.3g}] | "
                         f"{f:.1%} [{flo:.1%}, {fhi:.1%}] | {r['rmse_mean']:.3g}")
        ratio, (rlo, rhi) = paired_median_ratio(p["errs"], c["errs"])
        dfar, (dlo, dhi) = paired_far_difference(p["errs"], c["errs"], far)
        met = ratio <= 0.5 and dfar <= 0
        target = ("met" if met else "missed") if n in (5, 6, 8) else ""
        summary.append(dict(ds=ds, nfe=n, ratio=ratio, dfar=dfar, met=met))
        out.append(f"| {n} | {cells[0]} | {cells[1]} | {ratio:.2f} [{rlo:.2f}, {rhi:.2f}] | "
                   f"{dfar:+.1%} [{dlo:+.1%}, {dhi:+.1%}] | {target} |")
    return out + [""]


def summary_table(summary, far):
    """Per NFE over all data sets: the median and worst median ratio, and where the target holds."""
    if not summary:
        return []
    out = [f"### Over all data sets: FewStep's best / ComfyUI's best (median per-sample RMSE); other mode = "
           f"RMSE > {far}", "", "| NFE | data sets | median ratio (median over sets) | worst ratio (set) | "
           "sets with more other-mode samples | target met |", "|---:|---:|---:|---|---:|---:|"]
    for n in sorted({s["nfe"] for s in summary}):
        cell = [s for s in summary if s["nfe"] == n]
        ratios = sorted(s["ratio"] for s in cell)
        worst = max(cell, key=lambda s: s["ratio"])
        mid = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
        out.append(f"| {n} | {len(cell)} | {mid:.2f} | {worst['ratio']:.2f} ({worst['ds']}) | "
                   f"{sum(s['dfar'] > 0 for s in cell)} | {sum(s['met'] for s in cell)} of {len(cell)} |")
    return out + [""]
