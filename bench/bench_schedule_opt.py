"""Benchmark of schedules optimised for the model (samplers/schedule_opt/, nodes/schedule_opt.py).

Lab mode (default; CPU is fine): the exact-denoiser lab (samplers/exact.py, called directly, with
ComfyUI's SD/SDXL discrete sigma range 0.0292-14.61) at 4x16x16 latents. For N = 5, 6, 8, 10 and
for DPM++ 2M and the pack's best multistep sampler — the paper UniPC (`unipc_fs`: predictor +
corrector, order 1 up to 6 calls, else 2), the best pack multistep sampler with Karras on the lab
accuracy benchmark (geometric mean of its error at NFE 5, 6, 8 over both data sets in
docs/lab_accuracy.csv: unipc_fs 0.029, dpmpp_2m 0.036, deis_tab3 0.053) — and for DEIS tAB3 (the
sampler an earlier version of this benchmark used; kept for comparison, not part of the target) it
compares, at equal model calls (N steps = N calls for all of them), the error of
  Karras (rho 7), AYS (SDXL 10-step table of Sabour et al. 2024, log-linearly interpolated exactly as
  ComfyUI's AlignYourStepsScheduler does — taken from ComfyUI at run time), GITS (coeff 1.20 tables
  of Chen et al. 2024 as shipped in ComfyUI's GITSScheduler), the F-scheduler (1024px presets of
  Li & Bai 2025, pack implementation; ends at sigma_stop), the optimised schedule (teacher + DP +
  selection with the actual sampler, Karras among the candidates, like the node) and the optimised
  schedule refined against the sampler with held-out early stopping (the optimiser's multi-start
  refinement: the 3 best distinct candidates are refined, the lowest held-out error is kept; settings
  chosen on validation noises by bench/study_refine.py, the same for every row)
against a float64, convergence-certified PF-ODE reference (samplers/reference.py) to sigma_min
followed by the final denoise (the lab's "model sample" target). Fitting uses 512 + 256 held-out
noises (by default); errors are per-sample RMSE over 256 other noises.
Fitting noises: seed 1 (train) and seed 2 (held-out); test noises: seed 3 (never used to fit).

    python -m bench.bench_schedule_opt --threads 1     # lab table, writes its docs/benchmarks-history.md section
    python -m bench.bench_schedule_opt --no-write --steps 6 8 --datasets gmm256
    python -m bench.bench_schedule_opt --sdxl          # GPU timing: SDXL UNet (random fp16 weights), 1024^2, N=8, M=8
    python -m bench.bench_schedule_opt --sdxl --tiny   # the same code path on a tiny SDXL-shaped UNet (CPU)

Needs ComfyUI importable ($COMFYUI_PATH, e.g. through scripts/host.sh) for the AYS/GITS tables and
for --sdxl, which runs the real node (FewStepOptimizeSchedule) through ComfyUI's guider.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from samplers import schedule_opt as so
from samplers.catalog import solver
from samplers.exact import ExactDenoiser, MixtureSpec
from samplers.reference import reference_states
from samplers.schedules import FSCHEDULER_PRESETS, fscheduler_sigmas, karras_sigmas, sd_discrete_sigmas
from tests.support import random_unet
from tests.support.comfy_inprocess import load_inprocess
from tests.support.comfy_server import REPO, put_comfy_on_path

SECTION_START = "<!-- schedule-opt:start -->"
SECTION_END = "<!-- schedule-opt:end -->"
DATASETS = {  # name -> (dataset, components, spread, seed)
    "shapes": ("shapes", 16, 0.05, 0),   # the lab's default model: few, well separated modes
    "gmm256": ("gmm", 256, 0.5, 0),      # many overlapping modes: closer to a smooth distribution
}
SAMPLERS = ("dpmpp_2m", "unipc_fs", "deis_tab3")
TARGET_SAMPLERS = ("dpmpp_2m", "unipc_fs")  # the target: DPM++ 2M and the best pack sampler
SHAPE = (4, 16, 16)


def _comfy_path():
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (or run through scripts/host.sh)")
    return str(put_comfy_on_path(root))


def comfy_tables():
    """AYS-SDXL and GITS(1.20) schedules from ComfyUI's own nodes (both V3 io.ComfyNode)."""
    _comfy_path()
    from comfy_extras.nodes_align_your_steps import AlignYourStepsScheduler
    from comfy_extras.nodes_gits import GITSScheduler

    def ays(n):
        return torch.as_tensor(AlignYourStepsScheduler.execute("SDXL", n, 1.0).result[0], dtype=torch.float64)

    def gits(n):
        return torch.as_tensor(GITSScheduler.execute(1.20, n, 1.0).result[0], dtype=torch.float64)
    return ays, gits


def fscheduler(n, table):
    preset = FSCHEDULER_PRESETS.get(f"1024x{n}", FSCHEDULER_PRESETS["1024x8"])
    kw = {k: v for k, v in preset.items() if k != "steps"}
    return fscheduler_sigmas(n, table.to(torch.float64), dtype=torch.float64, **kw)


def noises(seed, count, smax):
    g = torch.Generator().manual_seed(seed)
    # ComfyUI's start for a full denoise of an EPS model: sqrt(1 + sigma_max^2) * noise.
    return torch.randn((count,) + SHAPE, generator=g, dtype=torch.float64) * math.sqrt(1 + smax ** 2)


def rmse(a, b):
    return (a.to(torch.float64) - b.to(torch.float64)).flatten(1).pow(2).mean(1).sqrt()


def run_lab(args):
    table = sd_discrete_sigmas(dtype=torch.float64)
    lo, hi = float(table[0]), float(table[-1])
    ays, gits = comfy_tables()
    rows, schedules, timings = [], {}, []
    for ds in args.datasets:
        spec = MixtureSpec(*DATASETS[ds])
        den = ExactDenoiser(spec)
        x_fit = torch.cat([noises(1, args.train, hi), noises(2, args.holdout, hi)])
        x_test = noises(3, args.test, hi)
        t = time.perf_counter()
        ref = reference_states(den, x_test, hi, [lo])
        x_ref = den(ref.at(lo), torch.full((args.test,), lo, dtype=torch.float64))
        print(f"[bench] {ds}: reference for {args.test} noises in {time.perf_counter() - t:.1f} s "
              f"(certified to RMSE {ref.discrepancy:.2g})", file=sys.stderr)
        t = time.perf_counter()
        teacher = so.teacher_pass(den, x_fit, so.log_grid(hi, lo, args.grid), args.substeps)
        t_teacher = time.perf_counter() - t
        print(f"[bench] {ds}: teacher pass {teacher.calls} calls in {t_teacher:.1f} s", file=sys.stderr)
        dps = {}  # cost rule -> DP results (they depend on the teacher and the rule, not on N)
        for sampler in args.samplers:
            spec_s = solver(sampler)

            def run(x, sig, spec_s=spec_s):
                return spec_s(den, x.clone(), sig.to(torch.float64), disable=True)

            for n in args.steps:
                base = {"Karras": karras_sigmas(n, lo, hi, dtype=torch.float64), "AYS": ays(n), "GITS": gits(n),
                        "F-sched": fscheduler(n, table)}
                t = time.perf_counter()
                res = so.optimise_schedule(den, x_fit, hi, lo, n, so.traits_of(spec_s), run_sampler=run, holdout=args.holdout,
                                           grid_size=args.grid, substeps=args.substeps,
                                           baselines={"karras": base["Karras"]}, teacher=teacher,
                                           refine_sweeps=args.refine_sweeps, refine_candidates=args.refine_candidates,
                                           refine_objective=args.refine_objective, refine_search=args.refine_search,
                                           refine_line_iters=args.refine_line_iters, refine_starts=args.refine_starts,
                                           max_steps=max(args.steps), dp=dps.get(so.traits_of(spec_s).rule))
                dps[so.traits_of(spec_s).rule] = res.dp
                t_opt = time.perf_counter() - t + t_teacher
                cols = dict(base)
                cols["optimised"] = res.selected
                cols["+refine"] = res.sigmas
                errs = {k: rmse(run(x_test, s), x_ref) for k, s in cols.items()}
                k = errs["Karras"]
                def win(col):
                    if torch.equal(cols[col].to(torch.float64), base["Karras"].to(torch.float64)):
                        return "="
                    return f"{float((errs[col] < k).double().mean()):.0%}"
                rows.append(dict(ds=ds, sampler=sampler, n=n, errs={c: (float(e.mean()), float(e.median())) for c, e in errs.items()},
                                 pick=res.chosen, start=res.refined_from, win=win("optimised"), win_r=win("+refine")))
                dp_best = min((v for v in res.dp), key=lambda v: res.train_errors[v])
                schedules[(ds, sampler, n)] = (res.selected, res.sigmas, dp_best, res.dp[dp_best].schedule(n))
                timings.append((ds, sampler, n, t_opt, teacher.calls, res.sampler_calls))
                r = rows[-1]["errs"]
                print(f"[bench] {ds} {sampler} N={n}: Karras {r['Karras'][0]:.4f}  opt {r['optimised'][0]:.4f} "
                      f"({res.chosen})  +refine {r['+refine'][0]:.4f} (from {res.refined_from})   [{t_opt:.1f}s]", file=sys.stderr,
                      flush=True)
    return rows, schedules, timings


def markdown(rows, schedules, timings, args):
    cols = ["Karras", "AYS", "GITS", "F-sched", "optimised", "+refine"]
    starts = f"the {args.refine_starts} best distinct candidates each refined by " if args.refine_starts > 1 else ""
    out = [SECTION_START, "## Optimised schedules vs fixed tables (exact-denoiser lab)", "",
           f"`python -m bench.bench_schedule_opt --threads {args.threads}` — {platform.processor() or platform.machine()}, torch "
           f"{torch.__version__}. Lab data sets at {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} latents, SD/SDXL discrete sigma "
           f"range 0.0292-14.61; optimiser: {args.train} fitting (seed 1) + {args.holdout} held-out (seed 2) noises, "
           f"grid {args.grid}, DPM++ 2M teacher with {args.substeps} sub-steps; candidates = DP paths of "
           f"{', '.join(so.variant_name(*v) for v in so.DEFAULT_VARIANTS)} + Karras, picked by running the "
           f"sampler ('optimised'); '+refine' = {starts}up to {args.refine_sweeps} coordinate sweeps (search "
           f"'{args.refine_search}': {args.refine_candidates} trial values per sigma" +
           (f" then {args.refine_line_iters} golden-section steps" if args.refine_search == "golden" else "") +
           f"; objective: {args.refine_objective} relative error over the fitting noises) early-stopped on the "
           f"held-out noises (patience 2)" + (", keeping the refinement with the lowest held-out error"
                                               if args.refine_starts > 1 else "") +
           f". These settings are the ones chosen on validation noises (seed 4) in the section 'Refinement variants' "
           f"(bench/study_refine.py), the same for every row. Error = per-sample RMSE against the float64 PF-ODE "
           f"reference (to sigma_min, then the final denoise) over {args.test} test noises (seed 3, never used to fit or "
           f"choose settings), mean (median); all "
           f"columns use N model calls. AYS = SDXL table (Sabour et al. 2024) and GITS = coeff 1.20 tables "
           f"(Chen et al. 2024), both from ComfyUI's scheduler nodes; F-sched = pack F-scheduler, 1024px presets "
           f"(Li & Bai 2025). 'picked' = selection winner / start of the kept refinement; 'win' = share of test "
           f"noises where the column beats Karras ('=' : it is Karras).", ""]
    out.append("| data | sampler | N | " + " | ".join(cols) + " | picked | opt/Karras | +refine/Karras | win opt / +refine |")
    out.append("|---|---|---|" + "---|" * len(cols) + "---|---|---|---|")
    for r in rows:
        e = r["errs"]
        cells = [f"{e[c][0]:.4f} ({e[c][1]:.4f})" for c in cols]
        ratio = e["optimised"][0] / e["Karras"][0]
        ratio_r = e["+refine"][0] / e["Karras"][0]
        out.append(f"| {r['ds']} | {r['sampler']} | {r['n']} | " + " | ".join(cells) +
                   f" | {r['pick']} / {r['start']} | {ratio:.2f} | {ratio_r:.2f} | {r['win']} / {r['win_r']} |")
    small = [r for r in rows if r["n"] <= 8 and r["sampler"] in TARGET_SAMPLERS]
    refined = lambda r: f"{r['ds']} / {r['sampler']} / N={r['n']} ({r['errs']['+refine'][0] / r['errs']['Karras'][0]:.2f})"  # noqa: E731
    others = [refined(r) for r in rows if r["n"] <= 8 and r["sampler"] not in TARGET_SAMPLERS]
    hit = lambda col: sum(r["errs"][col][0] <= 0.7 * r["errs"]["Karras"][0] for r in small)  # noqa: E731
    miss = [refined(r) for r in small if r["errs"]["+refine"][0] > 0.7 * r["errs"]["Karras"][0]]
    worse_median = [f"{r['ds']} / {r['sampler']} / N={r['n']} ({r['errs']['+refine'][1]:.4f} vs "
                    f"{r['errs']['Karras'][1]:.4f})" for r in rows if r["errs"]["+refine"][1] > r["errs"]["Karras"][1]]
    out += ["", f"Target (>= 30 % lower mean error than Karras at N <= 8, for {' and '.join(TARGET_SAMPLERS)}): optimised {hit('optimised')} of "
                f"{len(small)} rows, +refine {hit('+refine')} of {len(small)}" +
                (f"; missed: {', '.join(miss)}" if miss else "") + ". " +
                (f"Outside the target (+refine/Karras): {', '.join(others)}. " if others else "") +
                f"Medians: +refine has a higher median error than Karras in {len(worse_median)} of {len(rows)} rows" +
                (f" ({', '.join(worse_median)})" if worse_median else "") + ". The mean is dominated by the samples that "
                f"land on another mode than the reference (a ~10 % event on 'shapes' at N=5, error ~0.6 each), so the "
                f"mean-optimal schedule trades some accuracy of the typical sample for fewer of them. The DP paths alone "
                f"win where the data are smooth (gmm256, DPM++ 2M and UniPC); on the few-mode default lab (shapes) the selection "
                f"mostly keeps Karras and the gains come from the refinement against the sampler."]
    out += ["", f"Optimiser cost on the lab (CPU, exact denoiser, {args.threads} thread(s), shared machine: timings are "
                f"indicative). The teacher pass (one per data set, shared by every row; its time is included in each "
                f"row) is batched over the {args.train + args.holdout} fitting noises, the sampler calls (selection and "
                f"refinement) over the {args.train} fitting or the {args.holdout} held-out noises:", "",
            "| data | sampler | N | seconds | teacher calls | sampler calls |", "|---|---|---|---|---|---|"]
    for ds, sampler, n, t_opt, tcalls, scalls in timings:
        out.append(f"| {ds} | {sampler} | {n} | {t_opt:.1f} | {tcalls} | {scalls} |")
    out += ["", "Schedules (sigmas) for the SD/SDXL range on the default lab model (shapes), DPM++ 2M:", ""]
    fmt = lambda t: ", ".join(f"{v:.4f}" for v in t.tolist())  # noqa: E731
    for (ds, sampler, n), (opt, refd, dp_name, dp_path) in schedules.items():
        if ds == "shapes" and sampler == "dpmpp_2m" and n in (6, 8):
            out.append(f"- N={n} best DP path ({dp_name}): `{fmt(dp_path)}`")
            out.append(f"- N={n} optimised (selected): `{fmt(opt)}`")
            out.append(f"- N={n} +refine: `{fmt(refd)}`")
    out.append(SECTION_END)
    return "\n".join(out)


def write_section(path: Path, md: str):
    text = path.read_text() if path.exists() else "# FewStep benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1]
        text = head + md + tail
    else:
        text = text.rstrip("\n") + "\n\n" + md + "\n"
    path.write_text(text)


# ---------------------------------------------------------------------------------------------
# SDXL timing through the real node

def run_sdxl(args):
    _comfy_path()
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-bench-sdxl-")), cpu=args.tiny)
    dtype = torch.float32 if args.tiny else torch.float16
    model = random_unet.build(random_unet.TINY_SDXL_UNET if args.tiny else random_unet.SDXL_UNET, dtype=dtype,
                              family="sdxl")
    ctx = 64 if args.tiny else 2048
    g = torch.Generator().manual_seed(1)
    size = 64 if args.tiny else 1024

    def cond():
        return [[torch.randn(1, 77, ctx, generator=g), {"pooled_output": torch.randn(1, 1280, generator=g),
                                                        "width": size, "height": size}]]
    pos, neg = cond(), cond()
    node = nodes.NODE_CLASS_MAPPINGS["FewStepOptimizeSchedule"]
    steps, mc = 8, (2 if args.tiny else 8)
    grid = 24 if args.tiny else args.grid
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    sig, _, report = node.execute(model, pos, neg, 7.0, size, size, steps, "dpmpp_2m", mc, 0, grid=grid,
                                  use_cache=False).result
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    if cuda:
        peak = f"{torch.cuda.max_memory_allocated() / 2 ** 30:.2f} (CUDA allocated)"
    else:
        import resource
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.2f} (process RSS)"

    dev = torch.cuda.get_device_name() if cuda else "CPU"
    print(report)
    print()
    print(f"| model | device | latent | N | M | grid | wall s | peak GiB |")
    print(f"|---|---|---|---|---|---|---|---|")
    print(f"| {'tiny SDXL-shaped UNet' if args.tiny else 'SDXL UNet (random fp16 weights)'} | {dev} | "
          f"{size // 8}x{size // 8} | {steps} | {mc} | {grid} | {wall:.1f} | {peak} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sdxl", action="store_true", help="GPU timing of the node on the SDXL UNet architecture")
    ap.add_argument("--tiny", action="store_true", help="with --sdxl: a tiny SDXL-shaped UNet on the CPU")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--steps", nargs="+", type=int, default=[5, 6, 8, 10])
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    ap.add_argument("--train", type=int, default=512, help="fitting noises (seed 1)")
    ap.add_argument("--holdout", type=int, default=256, help="held-out noises for early stopping (seed 2)")
    ap.add_argument("--test", type=int, default=256)
    ap.add_argument("--grid", type=int, default=120)
    ap.add_argument("--substeps", type=int, default=2)
    ap.add_argument("--refine-sweeps", type=int, default=6)
    ap.add_argument("--refine-candidates", type=int, default=8)
    ap.add_argument("--refine-search", default="golden", choices=list(so.SEARCHES))
    ap.add_argument("--refine-objective", default="mean", choices=list(so.OBJECTIVES))
    ap.add_argument("--refine-line-iters", type=int, default=4)
    ap.add_argument("--refine-starts", type=int, default=3,
                    help="refine the k best distinct candidates, keep the lowest held-out error")
    ap.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch docs/benchmarks-history.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.sdxl:
        run_sdxl(args)
        return
    rows, schedules, timings = run_lab(args)
    md = markdown(rows, schedules, timings, args)
    print(md)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks-history.md", md)
        print("[bench] wrote docs/benchmarks-history.md", file=sys.stderr)


if __name__ == "__main__":
    main()
