"""Out-of-sample validation of the schedule optimiser (issue #18): settings chosen on the lab's two
data sets only (bench/repro_final_jump.py, bench/bench_schedule_opt.py), then run UNCHANGED on
mixture families the settings never saw, scored on noises the optimiser never saw.

    python -m bench.study_schedule_opt_families --json out.json --markdown out.md
    python -m bench.study_schedule_opt_families --families 2 --steps 5 --scoring 16   # smoke run

Families (bench/families.py): exact-denoiser Gaussian mixtures with data seeds 101.. (the lab uses
seed 0), component spread 0.02-0.5, 4-1024 components, 'gmm' (random means) and 'shapes' (images),
latents SD1.5-like and SDXL-like scaled down (channels and aspect kept); SD/SDXL discrete sigma range
0.0292-14.61.
Per family, fitting seed (two) and sampler (DPM++ 2M, the paper UniPC `unipc_fs`) and N in --steps:
  * defaults: the node's defaults — 16 noises, no held-out noise, grid 120, one teacher sub-step,
    the DP candidates of every DEFAULT_VARIANT plus Karras, Karras kept unless beaten significantly
    on the 8 of the 16 noises the DP and the ranking did not see (pipeline.guard_split);
  * refined: --fit fitting + --holdout held-out noises, the same selection, then the node's refinement
    (golden search, 8 trial values, mean objective, --sweeps sweeps, --starts starts), early-stopped
    and tested against Karras on the held-out noises;
  * Karras (rho 7).
Scoring: --scoring noises of another seed, the sampler's output against the converged float64 PF-ODE
reference (to sigma_min, then the final denoise); per schedule the median per-sample RMSE and the
share of samples far from the reference (RMSE > --far: another mode). Ratio = median(schedule) /
median(Karras) per family; over families: median and worst ratio, 95 % bootstrap intervals
(scoring noises resampled within each family, 400 draws).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from samplers import schedule_opt as so  # noqa: E402
from samplers.catalog import solver  # noqa: E402
from samplers.exact import ExactDenoiser, MixtureSpec  # noqa: E402
from samplers.reference import per_sample_rmse, reference_states  # noqa: E402
from samplers.schedules import karras_sigmas, sd_discrete_sigmas  # noqa: E402

from bench.families import FAMILIES, SDXL, data_seed  # noqa: E402

SAMPLERS = {"dpmpp_2m": so.DPMPP_2M, "unipc_fs": so.traits_of(solver("unipc_fs"))}
NOISE_SEEDS = {"fit": (1001, 1002), "holdout": (2001, 2002), "scoring": 3001}
COLUMNS = ("Karras", "defaults", "refined")
DEFAULT_MC = 16  # the node's mc_samples default (half of them test against Karras: holdout 0)


@dataclass
class Family:
    index: int
    dataset: str
    components: int
    spread: float
    shape: tuple
    seed_base: int = 100

    @property
    def name(self) -> str:
        size = "SDXL" if self.shape == SDXL else "SD1.5"
        fresh = "" if self.seed_base == 100 else f" seed {data_seed(self.index + 1, self.seed_base)}"
        return f"{self.dataset} K={self.components} s={self.spread:g} {size}{fresh}"

    @property
    def denoiser(self) -> ExactDenoiser:
        return ExactDenoiser(MixtureSpec(self.dataset, self.components, self.spread, data_seed(self.index + 1, self.seed_base)))


def noises(seed, count, shape, smax):
    g = torch.Generator().manual_seed(seed)
    # ComfyUI's start for a full denoise of an EPS model: sqrt(1 + sigma_max^2) * noise.
    return torch.randn((count,) + tuple(shape), generator=g, dtype=torch.float64) * math.sqrt(1 + smax ** 2)


def fit(den, x, lo, hi, n, traits, run, holdout, refine, args, teacher, dp):
    kw = dict(run_sampler=run, holdout=holdout, grid_size=120, substeps=1, teacher=teacher, dp=dp, max_steps=max(args.steps),
              baselines={"karras": karras_sigmas(n, lo, hi, dtype=torch.float64)})
    if refine:
        kw.update(refine_sweeps=args.sweeps, refine_candidates=8, refine_search="golden", refine_objective="mean",
                  refine_starts=args.starts)
    return so.optimise_schedule(den, x, hi, lo, n, traits, **kw)


def run_family(fam, args, lo, hi, saved=lambda rows: None):
    den = fam.denoiser
    x_score = noises(NOISE_SEEDS["scoring"], args.scoring, fam.shape, hi)
    ref = reference_states(den, x_score, hi, [lo])
    x_ref = den(ref.at(lo), torch.full((args.scoring,), lo, dtype=torch.float64))
    out = []
    for seed_i, (fit_seed, hold_seed) in enumerate(zip(NOISE_SEEDS["fit"], NOISE_SEEDS["holdout"])):
        x_def = noises(fit_seed, DEFAULT_MC, fam.shape, hi)
        x_ref_fit = torch.cat([noises(fit_seed, args.fit, fam.shape, hi), noises(hold_seed, args.holdout, fam.shape, hi)])
        grid = so.log_grid(hi, lo, 120)
        t_def, t_ref = so.teacher_pass(den, x_def, grid), so.teacher_pass(den, x_ref_fit, grid)
        for sname, traits in SAMPLERS.items():
            spec = solver(sname)

            def run(x, sig, spec=spec):
                return spec(den, x.clone(), sig.to(torch.float64), disable=True)

            dps = {}
            for n in args.steps:
                res_d = fit(den, x_def, lo, hi, n, traits, run, 0, False, args, t_def, dps.get("d"))
                res_r = fit(den, x_ref_fit, lo, hi, n, traits, run, args.holdout, True, args, t_ref, dps.get("r"))
                dps.update(d=res_d.dp, r=res_r.dp)
                scheds = {"Karras": karras_sigmas(n, lo, hi, dtype=torch.float64), "defaults": res_d.sigmas,
                          "refined": res_r.sigmas}
                errs = {c: per_sample_rmse(run(x_score, s), x_ref) for c, s in scheds.items()}
                out.append(dict(family=fam.name, seed=seed_i, sampler=sname, n=n,
                                errs={c: e.tolist() for c, e in errs.items()},
                                chosen=res_d.chosen, refined_from=res_r.refined_from,
                                refined_kept=res_r.guard.get("refined", {}).get("kept", True),
                                sigmas={c: [round(v, 5) for v in s.tolist()] for c, s in scheds.items()}))
                saved(out)  # after every cell: a run cut short keeps what it finished
                e = {c: float(v.median()) for c, v in errs.items()}
                print(f"[study] {fam.name} seed{seed_i} {sname} N={n}: Karras {e['Karras']:.4g} defaults "
                      f"{e['defaults'] / e['Karras']:.3f}x ({res_d.chosen}) refined {e['refined'] / e['Karras']:.3f}x",
                      file=sys.stderr, flush=True)
    return out


def ratios(rows, col, far=None, draws=0, gen=None):
    """Per-family ratio median(col)/median(Karras) (or far-share difference), optionally resampled."""
    vals = []
    for r in rows:
        k, c = torch.tensor(r["errs"]["Karras"]), torch.tensor(r["errs"][col])
        if gen is not None:
            idx = torch.randint(0, k.numel(), (k.numel(),), generator=gen)
            k, c = k[idx], c[idx]
        vals.append(float(c.median() / k.median().clamp_min(1e-300)))
    return vals


def summarise(rows, col, draws=400):
    point = ratios(rows, col)
    gen = torch.Generator().manual_seed(7)
    meds, worsts = [], []
    for _ in range(draws):
        v = torch.tensor(ratios(rows, col, gen=gen))
        meds.append(float(v.median()))
        worsts.append(float(v.max()))
    q = lambda xs: (float(torch.tensor(xs).quantile(0.025)), float(torch.tensor(xs).quantile(0.975)))  # noqa: E731
    pt = torch.tensor(point)
    return dict(median=float(pt.median()), median_ci=q(meds), worst=float(pt.max()), worst_ci=q(worsts),
                worst_family=rows[int(pt.argmax())]["family"], per_family=point)


def far_share(rows, col, far):
    return sum(sum(e > far for e in r["errs"][col]) for r in rows) / sum(len(r["errs"][col]) for r in rows)


def markdown(rows, args, seconds):
    out = [f"Families: {len({r['family'] for r in rows})}; scoring noises {args.scoring} per family (seed "
           f"{NOISE_SEEDS['scoring']}); defaults fit on {DEFAULT_MC} noises (half test against Karras) (seeds {NOISE_SEEDS['fit']}); refined: {args.fit} + "
           f"{args.holdout} held-out noises (seeds {NOISE_SEEDS['fit']} / {NOISE_SEEDS['holdout']}), {args.sweeps} sweep(s), "
           f"{args.starts} start(s). Ratio = median RMSE / Karras's median RMSE per family; [95 % bootstrap]. "
           f"Far = share of samples with RMSE > {args.far} (another mode). Longest part: {seconds / 60:.1f} min.", "",
           "| sampler | N | fit seed | defaults: median ratio | defaults: worst ratio (family) | refined: median ratio "
           "| refined: worst ratio (family) | far: Karras / defaults / refined |",
           "|---|---|---|---|---|---|---|---|"]
    for sname in SAMPLERS:
        for n in args.steps:
            for seed in (0, 1):
                cell = [r for r in rows if r["sampler"] == sname and r["n"] == n and r["seed"] == seed]
                if not cell:
                    continue
                d, f = summarise(cell, "defaults"), summarise(cell, "refined")
                fmt = lambda s: f"{s['median']:.3f} [{s['median_ci'][0]:.3f}, {s['median_ci'][1]:.3f}]"  # noqa: E731
                fw = lambda s: f"{s['worst']:.3f} [{s['worst_ci'][0]:.3f}, {s['worst_ci'][1]:.3f}] ({s['worst_family']})"  # noqa: E731
                shares = " / ".join(f"{far_share(cell, c, args.far):.1%}" for c in COLUMNS)
                out.append(f"| {sname} | {n} | {seed + 1} | {fmt(d)} | {fw(d)} | {fmt(f)} | {fw(f)} | {shares} |")
    out += ["", targets(rows, args), "", flips(rows, args), "", per_family_table(rows, args)]
    return "\n".join(out)


def _ranking(med: dict) -> dict:
    """Pairwise order {(a, b): -1 / 0 / +1}; equal medians (the same schedule: Karras kept) tie."""
    def cmp(a, b):
        if math.isclose(med[a], med[b], rel_tol=1e-9):
            return 0
        return -1 if med[a] < med[b] else 1
    return {"med": med, "order": {(a, b): cmp(a, b) for a in COLUMNS for b in COLUMNS if a < b}}


def _compatible(r1, r2) -> bool:
    """A flip = some pair strictly ordered one way for one seed and the other way for the other."""
    return all(r1["order"][k] * r2["order"][k] >= 0 for k in r1["order"])


def _show(r) -> str:
    return ", ".join(f"{c} {v:.3g}" for c, v in sorted(r["med"].items(), key=lambda kv: kv[1]))


def flips(rows, args):
    """Does the ranking Karras / defaults / refined (median over families) agree between fitting seeds?"""
    lines, bad = [], 0
    for sname in SAMPLERS:
        for n in args.steps:
            ranks = []
            for seed in (0, 1):
                cell = [r for r in rows if r["sampler"] == sname and r["n"] == n and r["seed"] == seed]
                if not cell:
                    continue
                med = {c: float(torch.tensor([torch.tensor(r["errs"][c]).median() for r in cell]).median()) for c in COLUMNS}
                ranks.append(_ranking(med))
            if len(ranks) == 2 and not _compatible(*ranks):
                bad += 1
                lines.append(f"{sname} N={n}: {_show(ranks[0])} (seed 1) vs {_show(ranks[1])} (seed 2)")
    pairs = [(a, b) for a in rows for b in rows if a["seed"] == 0 and b["seed"] == 1 and a["family"] == b["family"]
             and a["sampler"] == b["sampler"] and a["n"] == b["n"]]
    per_fam = {c: sum(_side(a, c) * _side(b, c) < 0 for a, b in pairs) for c in ("defaults", "refined")}
    return (f"Ranking of Karras / defaults / refined by the median over families: "
            f"{'the same for both fitting seeds in every row' if not bad else str(bad) + ' row(s) differ: ' + '; '.join(lines)}. "
            f"Per family and cell, a schedule strictly better than Karras with one fitting seed and strictly worse "
            f"with the other: defaults {per_fam['defaults']}, refined {per_fam['refined']} of {len(pairs)} cells.")


def _side(row, col) -> int:
    """-1 / 0 / +1: the column's median below / equal to / above Karras's."""
    a, k = float(torch.tensor(row["errs"][col]).median()), float(torch.tensor(row["errs"]["Karras"]).median())
    return 0 if math.isclose(a, k, rel_tol=1e-9) else (-1 if a < k else 1)


def targets(rows, args) -> str:
    """Issue #18's targets, checked on every sampler x N x fitting seed cell."""
    worst_def, med_ref, worst_ref = 0.0, 0.0, 0.0
    for sname in SAMPLERS:
        for n in args.steps:
            for seed in (0, 1):
                cell = [r for r in rows if r["sampler"] == sname and r["n"] == n and r["seed"] == seed]
                if cell:
                    d, f = ratios(cell, "defaults"), torch.tensor(ratios(cell, "refined"))
                    worst_def = max(worst_def, max(d))
                    med_ref, worst_ref = max(med_ref, float(f.median())), max(worst_ref, float(f.max()))
    ok = lambda b: "met" if b else "NOT met"  # noqa: E731
    return (f"Targets over all cells: defaults never worse than 1.02x Karras on any family — worst {worst_def:.3f}, "
            f"{ok(worst_def <= 1.02)}; refined median over families <= 0.7 — largest {med_ref:.3f}, {ok(med_ref <= 0.7)}; "
            f"refined worst <= 1.0 — {worst_ref:.3f}, {ok(worst_ref <= 1.0)}.")


def per_family_table(rows, args):
    out = ["Per family (fitting seed 1, refined / defaults ratio to Karras, median RMSE of Karras):", "",
           "| family | " + " | ".join(f"{s} N={n}" for s in SAMPLERS for n in args.steps) + " |",
           "|---|" + "---|" * (len(SAMPLERS) * len(args.steps))]
    for fam in dict.fromkeys(r["family"] for r in rows):
        cells = []
        for s in SAMPLERS:
            for n in args.steps:
                r = next((r for r in rows if r["family"] == fam and r["sampler"] == s and r["n"] == n and r["seed"] == 0), None)
                if r is None:
                    cells.append("")
                    continue
                med = {c: float(torch.tensor(r["errs"][c]).median()) for c in COLUMNS}
                cells.append(f"{med['refined'] / med['Karras']:.2f} / {med['defaults'] / med['Karras']:.2f} ({med['Karras']:.3g})")
        out.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", type=int, nargs="+", default=list(range(1, len(FAMILIES) + 1)),
                    help="family numbers 1..12 to run (e.g. split over processes, then --merge)")
    ap.add_argument("--merge", type=Path, nargs="+", help="only write the tables from these --json files")
    ap.add_argument("--steps", type=int, nargs="+", default=[5, 6, 8])
    ap.add_argument("--scoring", type=int, default=64)
    ap.add_argument("--fit", type=int, default=16, help="fitting noises of the refined run")
    ap.add_argument("--holdout", type=int, default=16, help="held-out noises of the refined run")
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--far", type=float, default=0.1)
    ap.add_argument("--seed-base", type=int, default=100,
                    help="data seed of family i = base + i (100: the validation families; another base: fresh "
                         "mixtures of the same kinds)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    table = sd_discrete_sigmas(dtype=torch.float64)
    lo, hi = float(table[0]), float(table[-1])
    t0, rows = time.time(), []
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        rows = [r for part in parts for r in part["rows"]]
        seconds = max(part.get("seconds", 0.0) for part in parts)
    else:
        def save(part):
            if args.json:
                args.json.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()},
                                                     rows=rows + part, seconds=time.time() - t0)))
        for i in args.families:
            rows += run_family(Family(i - 1, *FAMILIES[i - 1], args.seed_base), args, lo, hi, save)
            seconds = time.time() - t0
            save([])
    md = markdown(rows, args, seconds)
    print(md)
    if args.markdown:
        args.markdown.write_text(md + "\n")


if __name__ == "__main__":
    main()
