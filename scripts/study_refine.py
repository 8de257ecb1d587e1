"""Which schedule refinement generalises best? (samplers/schedule_opt.refine_schedule)

On the exact-denoiser lab (SD/SDXL discrete sigma range, 4x16x16 latents) each variant starts from
the optimiser's DP+selection schedule (Karras among the candidates) and is scored on TEST noises
that neither the fit nor the early stopping saw:
  fit noises  seed 1 (train) and seed 2 (held-out, early stopping), test noises seed 3.
Variants: search "grid" (8 trial values per sigma) or "golden" (the same grid, then golden-section
steps), objective "geomean" or "mean" (the benchmark's statistic), and the number of fitting noises.
Prints a markdown table of mean test RMSE (and the model calls the refinement used).

    python scripts/study_refine.py
    python scripts/study_refine.py --datasets shapes --steps 6 --samplers dpmpp_2m --write
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from samplers import schedule_opt as so  # noqa: E402
from samplers.catalog import SOLVERS  # noqa: E402
from samplers.exact import ExactDenoiser, MixtureSpec  # noqa: E402
from samplers.reference import reference_states  # noqa: E402
from samplers.schedules import karras_sigmas, sd_discrete_sigmas  # noqa: E402
from samplers.unipc import sample_unipc_fs  # noqa: E402

SECTION_START = "<!-- refine-study:start -->"
SECTION_END = "<!-- refine-study:end -->"
DATASETS = {"shapes": ("shapes", 16, 0.05, 0), "gmm": ("gmm", 16, 0.3, 0), "gmm256": ("gmm", 256, 0.5, 0)}
SHAPE = (4, 16, 16)
# (label, search, trial values per sigma, objective, train noises, held-out noises, starts)
VARIANTS = (
    ("grid/geomean 32+16", "grid", 8, "geomean", 32, 16, 1),
    ("grid12/mean 32+16", "grid", 12, "mean", 32, 16, 1),
    ("golden/mean 32+16", "golden", 8, "mean", 32, 16, 1),
    ("golden/mean 32+16 x3", "golden", 8, "mean", 32, 16, 3),
    ("grid/geomean 256+128", "grid", 8, "geomean", 256, 128, 1),
    ("golden/mean 256+128", "golden", 8, "mean", 256, 128, 1),
    ("golden/mean 256+128 x3", "golden", 8, "mean", 256, 128, 3),
)


def sampler_fn(name):
    """The pack's dropdown solvers as plain functions of (denoiser, x, sigmas)."""
    if name == "unipc_fs":
        return lambda den, x, sig: sample_unipc_fs(den, x, sig, order="auto", disable=True)
    spec = SOLVERS[name]
    opts = {"allow_short_schedule": True} if spec.multistep else {}
    return lambda den, x, sig: spec(den, x, sig, disable=True, **opts)


def _selected(res):
    """The DP+selection schedule before refinement."""
    names = [k for k in res.train_errors]
    best = min(names, key=lambda k: res.train_errors[k])
    if best in res.dp:
        return res.dp[best].schedule(res.steps)
    return _KARRAS[res.steps]


_KARRAS = {}


def noises(seed, count, smax):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((count,) + SHAPE, generator=g, dtype=torch.float64) * math.sqrt(1 + smax ** 2)


def rmse(a, b):
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).pow(2).mean(1).sqrt()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["shapes", "gmm"], choices=list(DATASETS))
    ap.add_argument("--samplers", nargs="+", default=["dpmpp_2m", "deis_tab3", "unipc_fs"])
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 6, 8])
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--sweeps", type=int, default=6)
    ap.add_argument("--grid", type=int, default=120)
    ap.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md (own section)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    table = sd_discrete_sigmas(dtype=torch.float64)
    lo, hi = float(table[0]), float(table[-1])
    max_train = max(v[4] for v in VARIANTS)
    max_hold = max(v[5] for v in VARIANTS)
    rows, t0 = [], time.time()
    for ds in args.datasets:
        den = ExactDenoiser(MixtureSpec(*DATASETS[ds]))
        x_tr_all, x_ho_all, x_te = noises(1, max_train, hi), noises(2, max_hold, hi), noises(3, args.test, hi)
        ref = reference_states(den, x_te, hi, [lo])
        y_te = den(ref.at(lo), torch.full((args.test,), lo, dtype=torch.float64))
        grid = so.log_grid(hi, lo, args.grid)
        teach_tr = so.teacher_pass(den, x_tr_all, grid, 2)
        teach_ho = so.teacher_pass(den, x_ho_all, grid, 2)
        for name in args.samplers:
            fn = sampler_fn(name)
            run = lambda x, s, fn=fn: fn(den, x.clone(), s)  # noqa: E731
            for n in args.steps:
                karras = _KARRAS[n] = karras_sigmas(n, lo, hi, dtype=torch.float64)
                row = {"ds": ds, "sampler": name, "n": n, "Karras": float(rmse(run(x_te, karras), y_te).mean())}
                for label, search, cands, objective, m_tr, m_ho, n_starts in VARIANTS:
                    x_fit = torch.cat([x_tr_all[:m_tr], x_ho_all[:m_ho]])
                    teacher = so.Teacher(teach_tr.sigmas, torch.cat([teach_tr.states[:, :m_tr], teach_ho.states[:, :m_ho]], 1),
                                         torch.cat([teach_tr.denoised[:, :m_tr], teach_ho.denoised[:, :m_ho]], 1),
                                         teach_tr.calls)
                    res = so.optimise_schedule(den, x_fit, hi, lo, n, name, run_sampler=run, holdout=m_ho,
                                               grid_size=args.grid, substeps=2, baselines={"karras": karras},
                                               teacher=teacher, refine_sweeps=args.sweeps, refine_candidates=cands,
                                               refine_objective=objective, refine_search=search, refine_line_iters=4,
                                               refine_starts=n_starts)
                    if f"DP+select {m_tr}+{m_ho}" not in row:
                        row[f"DP+select {m_tr}+{m_ho}"] = float(rmse(run(x_te, _selected(res)), y_te).mean())
                    row[label] = float(rmse(run(x_te, res.sigmas), y_te).mean())
                    row[label + " calls"] = res.sampler_calls
                rows.append(row)
                print(f"[study] {ds} {name} N={n} Karras {row['Karras']:.4f} " +
                      " ".join(f"{v[0]}={row[v[0]]:.4f}" for v in VARIANTS) + f"  [{time.time() - t0:.0f}s]",
                      file=sys.stderr, flush=True)
    cols = ["Karras", "DP+select 32+16", "DP+select 256+128"] + [v[0] for v in VARIANTS]
    out = [SECTION_START, "## Refinement variants: test error (scripts/study_refine.py)", "",
           f"`python scripts/study_refine.py` — lab at 4x16x16, SD/SDXL sigma range; fit noises seed 1 (train) + seed 2 "
           f"(held-out, early stopping, patience 2, {args.sweeps} sweeps max), test = {args.test} noises of seed 3. "
           "Every refinement starts from the DP+selection winner fitted on the same noises (x3: the 3 best candidates). Mean per-sample RMSE "
           "against the certified PF-ODE sample; bold = lowest in the row. Calls = sampler model calls of selection + "
           "refinement (each batched over the train or held-out noises; the teacher pass, 239 calls, comes on top). "
           "'grid12' has about the calls of 'golden'; 'x3' refines the 3 best distinct DP/Karras candidates and "
           "keeps the lowest held-out error.", "",
           "| data | sampler | N | " + " | ".join(cols) + " |", "|---|---|---|" + "---:|" * len(cols)]
    wins = {c: 0 for c in cols}
    for r in rows:
        low = min(r[c] for c in cols)
        wins[min(cols, key=lambda c: r[c])] += 1
        out.append(f"| {r['ds']} | {r['sampler']} | {r['n']} | " +
                   " | ".join((f"**{r[c]:.4f}**" if r[c] == low else f"{r[c]:.4f}") for c in cols) + " |")
    gm = {c: math.exp(sum(math.log(r[c] / r["Karras"]) for r in rows) / len(rows)) for c in cols}
    out += ["", "Geometric mean of error / Karras over the rows: " +
            ", ".join(f"{c} {gm[c]:.2f}" for c in cols) + ".", "",
            "Mean refinement calls per row: " + ", ".join(
                f"{v[0]} {sum(r[v[0] + ' calls'] for r in rows) / len(rows):.0f}" for v in VARIANTS) + ".",
            SECTION_END]
    md = "\n".join(out)
    print(md)
    if args.write:
        path = REPO / "BENCHMARKS.md"
        text = path.read_text()
        if SECTION_START in text:
            head, rest = text.split(SECTION_START, 1)
            text = head + md + rest.split(SECTION_END, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + md + "\n"
        path.write_text(text)


if __name__ == "__main__":
    main()
