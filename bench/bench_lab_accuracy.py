"""Ground-truth sampler benchmark on the exact-denoiser lab: error vs model calls (NFE).

Every deterministic sampler x scheduler — ComfyUI's own and FewStep's (`fewstep_*` dropdown
entries, found at run time; --with-nodes adds the pack's SAMPLER / SIGMAS nodes at their defaults) — runs
through ComfyUI's real sampling path on the lab MODEL at equal model calls (NFE 5, 6, 8, 10, 15,
20 by default: a sampler with two calls per step gets half the steps; combinations that cannot
make exactly N calls are skipped). Each output is compared with the exact probability-flow ODE
sample from the same noise (samplers/accuracy.py: ODE to the model's sigma_min, then the final
denoise; float64, convergence-checked). KSampler's convention is used for sigmas (dpm_2 / uni_pc
style samplers get steps+1 sigmas with the penultimate one dropped).

Schedules fitted on the lab model itself ("the user's own model" of the schedule optimiser,
samplers/schedule_opt.py): for a few pack samplers (multistep and single-step: fit_layout finds the
steps that make exactly N calls) and each NFE in --fit-nfe, the optimiser (teacher
pass + DP + selection with Karras among the candidates + refinement against the sampler) runs on
fitting noises of seed --fit-seed (train) and --fit-seed + 1 (held-out, early stopping), never on the
benchmark's noises (seed --seed); the fitted schedule is then scored like every other entry, as
`<sampler> + fewstep_optimized (fit)`. --no-fit leaves them out.

Stochastic samplers (output changes with the sampler seed at fixed initial noise) are listed but
not ranked: they do not approximate the ODE map, so their distance to it is not an accuracy.

    python -m bench.bench_lab_accuracy                 # prints the tables, writes docs/benchmarks-history.md + docs/
    python -m bench.bench_lab_accuracy --no-write --nfe 5 8 --datasets shapes
Needs ComfyUI: $COMFYUI_PATH, or `comfy` importable. --device cuda runs the lab on the GPU.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.util
import json
import math
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

from tests.support.comfy_inprocess import load_inprocess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NFE = (5, 6, 8, 10, 15, 20)
# name -> (dataset, components, spread, seed) of the lab data sets benchmarked
DATASETS = {
    "shapes": ("shapes", 16, 0.05, 0),
    "gmm": ("gmm", 16, 0.3, 0),
}
# Pack samplers a schedule is fitted for, and the optimiser's settings for those fits. The single-step
# ones make N calls with k steps ending at 0 (2S, Heun: 2k - 1; 3S: 3k - 2) or, where no k does, with k
# steps ending at a sigma > 0 (2S: 2k, 3S: 3k; the latent at the last sigma is the output, as dpm_fast does).
FIT_SAMPLERS = ("fewstep_dpmpp_2m", "fewstep_deis_tab3", "fewstep_unipc_fs", "fewstep_dpmpp_3m",
                "fewstep_dpmpp_2s", "fewstep_dpmpp_3s", "fewstep_edm_heun")
FIT_DEFAULTS = dict(train=256, holdout=128, grid=120, substeps=2, sweeps=6, candidates=8, search="golden",
                    line_iters=4, objective="mean", patience=2, starts=3)
FIT_SCHEDULE = "fewstep_optimized (fit)"
FIT_SCHEDULE_OPEN = "fewstep_optimized (fit, ends at sigma > 0)"  # no final step to 0 (see FIT_SAMPLERS)
FIT_NFE = (5, 6, 8)
SECTION_START = "<!-- lab-accuracy:start -->"
SECTION_END = "<!-- lab-accuracy:end -->"


def load_comfy(device: str):
    if not os.environ.get("COMFYUI_PATH"):
        spec = importlib.util.find_spec("comfy")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout (or run through scripts/host.sh)")
        os.environ["COMFYUI_PATH"] = str(Path(list(spec.submodule_search_locations)[0]).parent)
    return load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-bench-")), cpu=(device == "cpu"))


class Entry:
    """A sampler or schedule candidate: name, origin ('ComfyUI' / 'FewStep') and how to make it."""

    def __init__(self, name, origin, make, discard_penultimate=False):
        self.name, self.origin, self.make, self.discard_penultimate = name, origin, make, discard_penultimate


def _fill_defaults(cls, model, steps):
    """kwargs for a node from its defaults (its V1 INPUT_TYPES view, which v3 nodes also give); MODEL
    gets the lab model, 'steps' the step count. None when a required input has no default."""
    kwargs = {}
    spec = cls.INPUT_TYPES()
    for name, entry in spec.get("required", {}).items():
        kind = entry[0]
        opts = entry[1] if len(entry) > 1 else {}
        if kind == "MODEL":
            kwargs[name] = model
        elif name == "steps":
            if steps is None:
                return None
            kwargs[name] = steps
        elif isinstance(kind, (list, tuple)) and kind:
            kwargs[name] = opts.get("default", kind[0])
        elif kind == "COMBO" and opts.get("options"):  # v3 spelling of a combo
            kwargs[name] = opts.get("default", opts["options"][0])
        elif "default" in opts:
            kwargs[name] = opts["default"]
        else:
            return None
    return kwargs


def discover(pack, runner, with_nodes=False):
    import comfy.samplers
    discard = comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    samplers, schedulers = [], []
    for name in list(comfy.samplers.SAMPLER_NAMES):
        origin = "FewStep" if name.startswith("fewstep_") else "ComfyUI"
        samplers.append(Entry(name, origin, lambda model, n=name: comfy.samplers.sampler_object(n), name in discard))
    for name in list(comfy.samplers.SCHEDULER_NAMES):
        origin = "FewStep" if name.startswith("fewstep_") else "ComfyUI"
        schedulers.append(Entry(name, origin, lambda model, steps, discard_pen, n=name:
                                runner.schedule_sigmas(model, n, steps, discard_pen)))
    for node_id, cls in sorted(pack.NODE_CLASS_MAPPINGS.items()) if with_nodes else ():
        returns = tuple(getattr(cls, "RETURN_TYPES", ()))
        if not hasattr(cls, "INPUT_TYPES") or not hasattr(cls, "FUNCTION"):
            continue
        if "SAMPLER" in returns:
            idx = returns.index("SAMPLER")

            def make_sampler(model, cls=cls, idx=idx):
                kwargs = _fill_defaults(cls, model, None)
                return getattr(cls(), cls.FUNCTION)(**kwargs)[idx]
            try:
                if _fill_defaults(cls, None, None) is not None:
                    samplers.append(Entry(f"{node_id}()", "FewStep", make_sampler))
            except Exception as e:  # a node we cannot build from defaults is reported, not fatal
                print(f"[bench] skipping SAMPLER node {node_id}: {e}", file=sys.stderr)
        if "SIGMAS" in returns:
            idx = returns.index("SIGMAS")

            def make_sigmas(model, steps, discard_pen, cls=cls, idx=idx):
                kwargs = _fill_defaults(cls, model, steps)
                sig = getattr(cls(), cls.FUNCTION)(**kwargs)[idx]
                if discard_pen and len(sig) > 2:
                    import torch
                    steps_plus = _fill_defaults(cls, model, steps + 1)
                    sig = getattr(cls(), cls.FUNCTION)(**steps_plus)[idx]
                    sig = torch.cat([sig[:-2], sig[-1:]])
                return sig
            try:
                if _fill_defaults(cls, None, 4) is not None:
                    schedulers.append(Entry(f"{node_id}()", "FewStep", make_sigmas))
            except Exception as e:
                print(f"[bench] skipping SIGMAS node {node_id}: {e}", file=sys.stderr)
    return samplers, schedulers


def is_stochastic(model, sampler, runner):
    """Same initial noise, two sampler seeds: a deterministic ODE solver returns the same latent."""
    import torch
    sig = runner.schedule_sigmas(model, "karras", 6)
    noise = runner.make_noise(0, 1, 4)
    a = runner.run_sampler(model, sampler, sig, noise, seed=1, keep_calls=False).output
    b = runner.run_sampler(model, sampler, sig, noise, seed=2, keep_calls=False).output
    return not torch.allclose(a, b, rtol=0, atol=1e-6)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFE))
    ap.add_argument("--datasets", nargs="*", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--schedule", default="sd_discrete", choices=["sd_discrete", "edm"], help="lab model noise schedule")
    ap.add_argument("--batch", type=int, default=256,
                    help="samples per run (256: at NFE 5-8 the mean error is mostly the rate of trajectories that "
                         "end on another mode, a few per cent; 64 samples held 0-2 such samples, so one sample "
                         "could halve or double a mean)")
    ap.add_argument("--size", type=int, default=16, help="latent height/width (4 channels)")
    ap.add_argument("--families", type=int, nargs="+", default=[],
                    help="also these validation families of bench/families.py (1-12; their own latent sizes)")
    ap.add_argument("--far", type=float, default=0.1,
                    help="per-sample RMSE above which a sample counts as ending on another mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to run the lab model on the GPU")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the lab's matrices are tiny, and extra threads only "
                         "spin when the cores are shared)")
    ap.add_argument("--with-nodes", action="store_true",
                    help="also the pack's SAMPLER / SIGMAS nodes at their default settings (these mostly repeat "
                         "dropdown entries, so they are off by default)")
    ap.add_argument("--no-fit", action="store_true", help="leave out the schedules fitted on the lab model")
    ap.add_argument("--fit-samplers", nargs="+", default=list(FIT_SAMPLERS),
                    help="pack samplers to fit a schedule for (one fit per sampler and NFE)")
    ap.add_argument("--fit-nfe", type=int, nargs="+", default=None,
                    help="NFE values to fit at (default: 5 6 8, those in --nfe; larger N costs much more fitting)")
    ap.add_argument("--fit-seed", type=int, default=1,
                    help="seed of the fitting noises (held-out noises: fit-seed + 1); must differ from --seed")
    ap.add_argument("--fit-train", type=int, default=FIT_DEFAULTS["train"], help="fitting noises")
    ap.add_argument("--fit-holdout", type=int, default=FIT_DEFAULTS["holdout"], help="held-out noises (early stopping)")
    ap.add_argument("--only", default="", help="regex: keep only samplers/schedules whose name matches (quick looks)")
    ap.add_argument("--render", action="store_true",
                    help="only rebuild the docs/benchmarks-history.md section and plot from docs/lab_accuracy.csv/.json")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch docs/")
    args = ap.parse_args(argv)
    if args.render:
        return render_saved()
    if min(args.nfe) < 1 or args.batch < 1 or args.size < 2:
        ap.error("--nfe values and --batch must be >= 1, --size >= 2")
    if args.seed in (args.fit_seed, args.fit_seed + 1):
        ap.error(f"--fit-seed {args.fit_seed} would fit on the benchmark's test noises (seed {args.seed})")
    args.fit_nfe = sorted(set(FIT_NFE if args.fit_nfe is None else args.fit_nfe) & set(args.nfe))

    t_start = time.time()
    nodes, pack = load_comfy(args.device)
    import torch
    torch.set_num_threads(max(1, args.threads))
    import comfy.samplers
    runner = pack.bridge.lab_runner
    accuracy = sys.modules[pack.__name__ + ".samplers.accuracy"]
    reference = sys.modules[pack.__name__ + ".samplers.reference"]
    lab = pack.bridge.lab_model
    schedule_opt = importlib.import_module(pack.__name__ + ".samplers.schedule_opt")

    samplers, schedulers = discover(pack, runner, args.with_nodes)
    if args.only:
        rx = re.compile(args.only)
        samplers = [s for s in samplers if rx.search(s.name)] or samplers
        schedulers = [s for s in schedulers if rx.search(s.name)] or schedulers
    probe_model = lab.build_lab_model("gmm", 4, 0.3, 0, args.schedule)
    stochastic, deterministic = [], []
    for s in samplers:
        try:
            (stochastic if is_stochastic(probe_model, s.make(probe_model), runner) else deterministic).append(s)
        except Exception as e:
            print(f"[bench] sampler {s.name} failed to run: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"[bench] {len(deterministic)} deterministic samplers ({sum(s.origin == 'FewStep' for s in deterministic)} "
          f"FewStep), {len(stochastic)} stochastic (not ranked), {len(schedulers)} schedules "
          f"({sum(s.origin == 'FewStep' for s in schedulers)} FewStep)", flush=True)

    # Steps that give exactly N model calls, per sampler x schedule (found once, on a tiny latent).
    plan = {}  # (sampler, schedule) -> {nfe: steps}
    for s in deterministic:
        sampler = s.make(probe_model)
        for sch in schedulers:
            cache = {}
            sig_fn = (lambda n, sch=sch, d=s.discard_penultimate: sch.make(probe_model, n, d))
            plan[(s.name, sch.name)] = {
                n: runner.steps_for_nfe(probe_model, sampler, n, sig_fn, cache=cache) for n in args.nfe}
    print(f"[bench] NFE plan ready after {time.time() - t_start:.0f} s", flush=True)

    rows = []  # dicts: dataset, sampler, schedule, origin, nfe, steps, rmse_mean, rmse_median, ...
    fits = []  # one dict per fitted schedule: dataset, sampler, nfe, sigmas, model calls, seconds
    specs = dataset_specs(args)
    args.datasets = list(specs)
    for ds, (dataset, comps, spread, dseed, size) in specs.items():
        args.current_size = size
        model = lab.build_lab_model(dataset, comps, spread, dseed, args.schedule)
        denoiser = runner.lab_denoiser(model)
        sigma_min = float(model.get_model_object("model_sampling").sigma_min)
        noise = runner.make_noise(args.seed, args.batch, size)
        jobs = []
        for s in deterministic:
            for sch in schedulers:
                for n, steps in plan[(s.name, sch.name)].items():
                    if steps is None:
                        continue
                    try:
                        sig = sch.make(model, steps, s.discard_penultimate)
                        accuracy.check_sigmas(sig)
                    except Exception as e:
                        print(f"[bench] {s.name} + {sch.name} @ {n}: {type(e).__name__}: {e}", file=sys.stderr)
                        continue
                    jobs.append((s, sch, n, steps, sig.float()))
        if not args.no_fit:
            by_name = {e.name: e for e in deterministic}
            for name, n, sig, info in fit_schedules(model, runner, schedule_opt, args, [m for m in args.fit_samplers if m in by_name]):
                info["dataset"] = ds
                fits.append(info)
                jobs.append((by_name[name], Entry(info["schedule"], "FewStep", None), n, info["steps"], sig.float()))
        # One certified reference per starting sigma, holding every end point a run can need (the last
        # sigma, or the one before a final 0, or 0); others are solved on demand.
        refs, starts = {}, {}
        for _, _, _, _, sig in jobs:
            key = round(float(sig[0]), 9)
            starts.setdefault(key, (float(sig[0]), runner.start_latent(model, sig, noise), set()))
            tail = sig.double().tolist()
            starts[key][2].update({tail[-1]} if tail[-1] > 0 else {tail[-2], 0.0})
        for key, (s0, x0, points) in starts.items():
            refs[key] = reference.reference_states(denoiser, x0, s0, points | {sigma_min})

        def state(key, sigma):
            ref = refs[key]
            if float(sigma) not in ref.states:
                s0, x0, _ = starts[key]
                ref.states.update(reference.reference_states(denoiser, x0, s0, [float(sigma)]).states)
            return ref.at(float(sigma))

        d = lambda x, s: denoiser(x, torch.full((x.shape[0],), s, dtype=torch.float64))
        samples = {key: d(refs[key].at(sigma_min), sigma_min) for key in refs}
        for s, sch, n, steps, sig in jobs:
            try:
                run = runner.run_sampler(model, s.make(model), sig, noise, args.seed)
            except Exception as e:
                print(f"[bench] {s.name} + {sch.name} @ {n}: {type(e).__name__}: {e}", file=sys.stderr)
                continue
            if run.log.nfe != n:
                continue  # probe and full-size run disagree: not an equal-NFE point
            key = round(float(sig[0]), 9)
            kind, s_end = accuracy.end_convention(sig.double().tolist(), run.output, run.log)
            out = run.output.double()
            finite = bool(torch.isfinite(out).all())
            endpoint = d(state(key, s_end), s_end) if kind == "denoise" else state(key, s_end)
            e = reference.per_sample_rmse(out, samples[key])
            ee = reference.per_sample_rmse(out, endpoint)
            rows.append(dict(dataset=ds, sampler=s.name, schedule=sch.name,
                             origin="FewStep" if "FewStep" in (s.origin, sch.origin) else "ComfyUI",
                             nfe=n, steps=steps,
                             rmse_mean=float(e.mean()) if finite else math.inf,
                             rmse_median=float(e.median()) if finite else math.inf,
                             rmse_se=float(e.std() / math.sqrt(len(e))) if finite and len(e) > 1 else math.nan,
                             endpoint_rmse_mean=float(ee.mean()) if finite else math.inf,
                             end="%s@%.4g" % (kind, s_end), ref_discrepancy=refs[key].discrepancy,
                             errs=e, same_as=""))
        mark_builtin_duplicates([r for r in rows if r["dataset"] == ds])
        print(f"[bench] {ds}: {sum(r['dataset'] == ds for r in rows)} runs scored after {time.time() - t_start:.0f} s", flush=True)

    elapsed = time.time() - t_start
    try:
        from comfyui_version import __version__ as comfy_version
    except ImportError:
        comfy_version = "unknown"
    meta = dict(args=vars(args), elapsed_s=elapsed, stochastic=[s.name for s in stochastic],
                comfy_version=comfy_version, torch=torch.__version__, machine=platform.machine(),
                date=datetime.date.today().isoformat(),
                samplers=[(s.name, s.origin) for s in deterministic], schedules=[(s.name, s.origin) for s in schedulers],
                fit=None if args.no_fit else dict(FIT_DEFAULTS, train=args.fit_train, holdout=args.fit_holdout,
                                                  seed=args.fit_seed, holdout_seed=args.fit_seed + 1, fits=fits))
    publish(rows, meta, write=not args.no_write)
    print(f"[bench] total {time.time() - t_start:.0f} s")
    return rows


def dataset_specs(args) -> dict:
    """name -> (dataset, components, spread, data seed, latent size): the lab sets, then the families."""
    out = {ds: DATASETS[ds] + (args.size,) for ds in args.datasets}
    if args.families:
        from bench.families import FAMILIES, data_seed, family_name
        for i in args.families:
            dataset, k, spread, shape = FAMILIES[i - 1]
            out[f"family {i}: {family_name(i)}"] = (dataset, k, spread, data_seed(i), shape[-1])
    return out


def fit_layout(run, x, karras, n, max_steps=None):
    """How a sampler makes exactly n model calls on a schedule the optimiser can fit (it fits schedules
    that end at 0): (optimiser steps, open) where open means the final 0 is dropped before the sampler
    runs (it then stops at the last positive sigma, as dpm_fast does), or None. Steps ending at 0 are
    preferred; calls are counted on karras(steps) with one sample. run(den, x, sigmas) runs the sampler."""
    for open_end in (False, True):
        for steps in range(1 + open_end, (max_steps or n) + 1 + open_end):
            sig = karras(steps)
            calls = [0]

            def den(xx, s):
                calls[0] += 1
                return xx * 0
            try:
                run(den, x, sig[:-1] if open_end else sig)
            except ValueError:
                continue
            if calls[0] == n:
                return steps, open_end
    return None


def fit_schedules(model, runner, so, args, names):
    """Schedules fitted by the pack's optimiser on the lab model for each sampler in `names` and each
    NFE in args.fit_nfe at which it can make exactly N calls (fit_layout). Fitting noises come from
    seeds args.fit_seed / args.fit_seed + 1, never args.seed. Yields (name, nfe, sigmas, info); info has
    the schedule's row name and its step count; sampler_calls counts the sampler's real model calls."""
    import comfy.samplers
    import torch
    f = FIT_DEFAULTS
    traits_for = importlib.import_module(so.__name__.rsplit(".samplers.", 1)[0] + ".bridge.solver_traits").traits_for
    den = runner.lab_denoiser(model)
    ms = model.get_model_object("model_sampling")
    hi, lo = float(ms.sigma_max), float(ms.sigma_min)
    size = getattr(args, "current_size", args.size)
    noise = torch.cat([runner.make_noise(args.fit_seed, args.fit_train, size),
                       runner.make_noise(args.fit_seed + 1, args.fit_holdout, size)])
    x_fit = runner.start_latent(model, torch.tensor([hi, 0.0]), noise)
    t = time.time()
    teacher = so.teacher_pass(den, x_fit, so.log_grid(hi, lo, f["grid"]), f["substeps"])
    t_teacher = time.time() - t
    karras = lambda k: runner.schedule_sigmas(model, "karras", k).double()
    calls = [0]

    def counted(x, s):
        calls[0] += 1
        return den(x, s)
    for name in names:
        ks = comfy.samplers.sampler_object(name)

        def run_on(model_fn, x, sig, ks=ks):
            # the dropdown's own sampler function, on the exact denoiser in float64
            return ks.sampler_function(model_fn, x.clone(), sig, extra_args={}, callback=None, disable=True,
                                       **ks.extra_options)
        for n in args.fit_nfe:
            layout = fit_layout(run_on, x_fit[:1], karras, n)
            if layout is None:
                continue
            steps, open_end = layout

            def run(x, sig, open_end=open_end):
                return run_on(counted, x, sig[:-1] if open_end and float(sig[-1]) == 0 else sig)
            t = time.time()
            calls[0] = 0
            res = so.optimise_schedule(den, x_fit, hi, lo, steps, traits_for(name), run_sampler=run, holdout=args.fit_holdout,
                                       grid_size=f["grid"], substeps=f["substeps"], baselines={"karras": karras(steps)},
                                       teacher=teacher, refine_sweeps=f["sweeps"], refine_candidates=f["candidates"],
                                       refine_objective=f["objective"], refine_search=f["search"],
                                       refine_line_iters=f["line_iters"], refine_patience=f["patience"],
                                       refine_starts=f["starts"])
            sig = res.sigmas[:-1] if open_end else res.sigmas
            info = dict(sampler=name, nfe=n, steps=sig.numel() - 1, schedule=FIT_SCHEDULE_OPEN if open_end else FIT_SCHEDULE,
                        sigmas=[round(v, 6) for v in sig.tolist()], picked=res.chosen,
                        teacher_calls=teacher.calls, sampler_calls=calls[0],
                        seconds=round(time.time() - t + t_teacher, 2))
            print(f"[bench] fitted {name} @ {n} ({info['steps']} steps{', open end' if open_end else ''}): "
                  f"{res.chosen} + refine, {calls[0]} sampler calls (+{teacher.calls} teacher, shared), "
                  f"{info['seconds']:.1f} s", flush=True)
            yield name, n, sig, info


CSV_COLUMNS = ["dataset", "origin", "sampler", "schedule", "nfe", "steps", "rmse_mean", "rmse_median", "rmse_se",
               "endpoint_rmse_mean", "end", "ref_discrepancy", "same_as"]


def publish(rows, meta, write=True):
    """Prints the markdown; with write, also docs/benchmarks-history.md (own section), the plot, the CSV and its meta."""
    md = markdown(rows, meta)
    print(md)
    if not write:
        return
    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    plot_path = docs / "lab_accuracy.png"
    error_plot(rows, meta["args"]["nfe"], meta["args"]["datasets"]).save(plot_path)
    with open(docs / "lab_accuracy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["dataset"], r["nfe"], r["rmse_mean"])):
            w.writerow({k: (f"{r[k]:.5g}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS})
    (docs / "lab_accuracy.json").write_text(json.dumps(meta, indent=1) + "\n")
    write_section(REPO / "docs" / "benchmarks-history.md", md)
    print(f"[bench] wrote docs/benchmarks-history.md, {plot_path.relative_to(REPO)}, docs/lab_accuracy.csv, docs/lab_accuracy.json")


def render_saved():
    """Rebuilds the tables and the plot from docs/lab_accuracy.csv + .json (no sampling)."""
    meta = json.loads((REPO / "docs" / "lab_accuracy.json").read_text())
    rows = []
    with open(REPO / "docs" / "lab_accuracy.csv") as fh:
        for r in csv.DictReader(fh):
            for k in ("rmse_mean", "rmse_median", "rmse_se", "endpoint_rmse_mean", "ref_discrepancy"):
                r[k] = float(r[k])
            r["nfe"], r["steps"] = int(r["nfe"]), int(r["steps"])
            rows.append(r)
    publish(rows, meta)


def mark_builtin_duplicates(rows):
    """A FewStep row whose every per-sample error equals a ComfyUI row's at the same NFE (the pack part
    changed nothing: e.g. dpm_fast ignores intermediate sigmas, fewstep_dpmpp_2m is dpmpp_2m) is not
    credited to FewStep; same_as names the built-in twin."""
    import bisect
    import torch
    by_nfe = {}
    for r in rows:
        if r["origin"] == "ComfyUI" and math.isfinite(r["rmse_mean"]):
            by_nfe.setdefault(r["nfe"], []).append(r)
    for lst in by_nfe.values():
        lst.sort(key=lambda r: r["rmse_mean"])
    for r in rows:
        if r["origin"] != "FewStep" or not math.isfinite(r["rmse_mean"]):
            continue
        lst = by_nfe.get(r["nfe"], [])
        means = [c["rmse_mean"] for c in lst]
        # float32 rounding differs between two codings of one method (or, for dpm_fast, which reads only
        # the first and last positive sigma, between two schedules with the same end points): ~1e-5 relative
        # on a typical error, up to ~1e-3 on a sample close to a mode boundary (measured at batch 256)
        i = bisect.bisect_left(means, r["rmse_mean"] * (1 - 1e-3) - 1e-5)
        while i < len(lst) and lst[i]["rmse_mean"] <= r["rmse_mean"] * (1 + 1e-3) + 1e-5:
            if torch.allclose(r["errs"], lst[i]["errs"], rtol=1e-3, atol=1e-5):
                r["same_as"] = f"{lst[i]['sampler']} + {lst[i]['schedule']}"
                break
            i += 1


def best(rows, dataset, nfe, origin, key="rmse_median"):
    cands = [r for r in rows if r["dataset"] == dataset and r["nfe"] == nfe and r["origin"] == origin
             and math.isfinite(r["rmse_mean"]) and not r["same_as"]]
    return min(cands, key=lambda r: r[key]) if cands else None


def _robust():
    from bench import robust_stats
    return robust_stats


def _gmean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def top_combos(rows, dataset, origin, nfes, k):
    """Combos present at every NFE, ranked by the geometric mean of their error."""
    combos, twin = {}, {}
    for r in rows:
        if r["dataset"] == dataset and r["origin"] == origin and math.isfinite(r["rmse_mean"]) and r["rmse_mean"] > 0:
            combos.setdefault((r["sampler"], r["schedule"]), {})[r["nfe"]] = r["rmse_mean"]
            twin.setdefault((r["sampler"], r["schedule"]), []).append(bool(r["same_as"]))
    full = {c: v for c, v in combos.items() if all(n in v for n in nfes) and not all(twin[c])}
    out = []
    for combo, errs in sorted(full.items(), key=lambda cv: _gmean(list(cv[1].values()))):
        # one result under two names (cfg_pp twins at cfg 1, node defaults) is listed once
        if not any(all(abs(errs[n] - e[n]) <= 1e-3 * e[n] for n in nfes) for _, e in out):
            out.append((combo, errs))
    return out[:k]


def markdown(rows, meta) -> str:
    args = meta["args"]
    nfes = sorted(set(args["nfe"]))
    lines = [SECTION_START, "## Lab accuracy: error vs model calls (exact-denoiser lab)", ""]
    lines += [
        f"Measured {meta['date']} with `python -m bench.bench_lab_accuracy` "
        f"(ComfyUI {meta['comfy_version']}, torch {meta['torch']}, {meta['machine']} {args['device']}, "
        f"{meta['elapsed_s']:.0f} s). Lab model `{args['schedule']}` (sigma 0.0292-14.61), latent 4x{args['size']}x{args['size']}, "
        f"batch {args['batch']}, noise seed {args['seed']}. Data sets: "
        + ", ".join(f"`{k}` ({v[1]} components, spread {v[2]})" for k, v in DATASETS.items() if k in args["datasets"]) + ".",
        "",
        "Error = per-sample RMSE (mean over the batch) against the exact sample of the model: the probability-flow "
        "ODE from the same initial latent to sigma_min, then the final denoise (float64, adaptive RK45, two "
        "tolerances must agree). Equal model calls (NFE), not equal steps; a sampler/schedule that cannot make "
        "exactly N calls has no entry at N. \"FewStep\" = a pack sampler or a pack schedule is involved; "
        "\"ComfyUI\" = both built in; a FewStep combination that reproduces a built-in result exactly (e.g. "
        "dpm_fast ignores the intermediate sigmas; fewstep_dpmpp_2m is the same method as dpmpp_2m) is not credited "
        "to FewStep. Best = lowest MEDIAN per-sample error; intervals are 95 % percentile bootstrap over the batch "
        "(paired for ratios: both runs start from the same noises); 'other mode' = share of samples whose RMSE "
        "exceeds the --far threshold (they end on another mode of the mixture). Target (issue #18): FewStep's best "
        "<= 0.5 x ComfyUI's best on the median, and no more samples on another mode, at NFE 5, 6, 8.",
        "",
        f"Deterministic samplers ranked: {len(meta['samplers'])} "
        f"({sum(o == 'FewStep' for _, o in meta['samplers'])} FewStep); schedules: {len(meta['schedules'])} "
        f"({sum(o == 'FewStep' for _, o in meta['schedules'])} FewStep). FewStep samplers: "
        + (", ".join(n for n, o in meta["samplers"] if o == "FewStep") or "none") + "; FewStep schedules: "
        + (", ".join(n for n, o in meta["schedules"] if o == "FewStep") or "none") + ". Stochastic, not ranked: "
        + (", ".join(meta["stochastic"]) or "none") + ".",
        "",
    ]
    summary = []
    for ds in args["datasets"]:
        lines += [f"### `{ds}`", ""] + _robust().robust_table(rows, ds, nfes, args.get("far", 0.1), summary, best)
        lines.append("")
        lines += fit_table(rows, meta, ds)
        for origin in ("ComfyUI", "FewStep"):
            top = top_combos(rows, ds, origin, nfes, 5)
            if not top:
                continue
            lines += [f"Top {origin} combinations on `{ds}` (present at every NFE; geometric-mean rank):", "",
                      "| sampler + schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                      "|---|" + "---:|" * len(nfes)]
            for (sampler, sched), errs in top:
                lines.append(f"| {sampler} + {sched} | " + " | ".join(f"{errs[n]:.3g}" for n in nfes) + " |")
            lines.append("")
    lines += _robust().summary_table(summary, args.get("far", 0.1))
    lines += ["Plot: `docs/lab_accuracy.png`; every run: `docs/lab_accuracy.csv` (also the error against each "
              "schedule's own end point, `endpoint_rmse_mean`).", SECTION_END]
    return "\n".join(lines)


def fit_table(rows, meta, ds):
    """Fitted schedules against the same sampler with Karras, and what each fit cost."""
    fit = meta.get("fit")
    fits = [f for f in (fit or {}).get("fits", []) if f["dataset"] == ds]
    if not fits:
        return []
    err = {(r["sampler"], r["schedule"], r["nfe"]): r["rmse_mean"] for r in rows if r["dataset"] == ds}
    med = {(r["sampler"], r["schedule"], r["nfe"]): r["rmse_median"] for r in rows if r["dataset"] == ds}
    out = [f"Schedules fitted on this lab model by the pack's optimiser (`{FIT_SCHEDULE}`): teacher + DP + "
           f"selection (Karras among the candidates) + up to {fit['sweeps']} sweeps of {fit['search']} coordinate "
           f"search on the `{fit['objective']}` relative error from the {fit.get('starts', 1)} best candidates "
           f"(the lowest held-out error is kept), fitted on {fit['train']} noises of seed {fit['seed']}, "
           f"early-stopped on {fit['holdout']} held-out noises of seed {fit['holdout_seed']}; scored on the "
           f"benchmark's own noises (seed {meta['args']['seed']}), which the fit never saw. Fit cost = model calls, "
           f"each batched over the fitting noises (the teacher pass, {fits[0]['teacher_calls']} calls, is shared by "
           f"all fits of a data set and included once per row here). The fit minimises the MEAN error, which on "
           f"few-mode data is mostly the rare samples that end on another mode; the median columns show what it "
           f"does to the typical sample. Single-step samplers are fitted at an NFE only where k steps make exactly "
           f"N calls: ending at 0 where possible, otherwise ending at a sigma > 0 (`{FIT_SCHEDULE_OPEN}`: the "
           f"optimiser's last positive sigma is the end point, no final denoise, as ComfyUI's dpm_fast ends; the "
           f"pack's solvers accept such SIGMAS, the FewStepOptimizeSchedule node does not make them).", "",
           "| sampler | NFE | + karras | + fitted | fitted / karras | median karras | median fitted | fit calls | fit s |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in sorted(fits, key=lambda f: (f["sampler"], f["nfe"])):
        k = err.get((f["sampler"], "karras", f["nfe"]))
        sched = f.get("schedule", FIT_SCHEDULE)
        e = err.get((f["sampler"], sched, f["nfe"]))
        ratio = f"{e / k:.2f}" if k and e is not None and math.isfinite(e) else "-"
        label = f["sampler"] + (" (ends at sigma > 0)" if sched == FIT_SCHEDULE_OPEN else "")
        out.append(f"| {label} | {f['nfe']} | {k:.3g} | " if k is not None else f"| {label} | {f['nfe']} | - | ")
        mk, mf = med.get((f["sampler"], "karras", f["nfe"])), med.get((f["sampler"], sched, f["nfe"]))
        out[-1] += (f"{e:.3g} | " if e is not None else "- | ") + f"{ratio} | " + \
            (f"{mk:.3g} | " if mk is not None else "- | ") + (f"{mf:.3g} | " if mf is not None else "- | ") + \
            f"{f['teacher_calls'] + f['sampler_calls']} | {f['seconds']:.0f} |"
    return out + [""]


def write_section(path: Path, md: str):
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + md + tail
    else:
        text = text.rstrip("\n") + "\n\n" + md + "\n"
    path.write_text(text)


def error_plot(rows, nfes, datasets):
    from samplers.plotting import Series, hstack, line_plot
    nfes = sorted(set(nfes))
    panels = []
    for ds in datasets:
        series = []
        for origin, color, dash in (("ComfyUI", "#1f77b4", False), ("FewStep", "#d62728", False)):
            pts = [(n, best(rows, ds, n, origin, "rmse_mean")) for n in nfes]
            pts = [(n, b["rmse_mean"]) for n, b in pts if b]
            if pts:
                series.append(Series(f"{origin} best at each NFE", [n for n, _ in pts], [e for _, e in pts],
                                     color=color, width=3))
        shades = {"ComfyUI": ("#6baed6", "#08519c"), "FewStep": ("#fc9272", "#a50f15")}
        for origin, colors in shades.items():
            for ((sampler, sched), errs), color in zip(top_combos(rows, ds, origin, nfes, 2), colors):
                series.append(Series(f"{sampler} + {sched}", nfes, [errs[n] for n in nfes], color=color, dash=True,
                                     marker="s" if origin == "FewStep" else "^", width=1.5))
        for combo, marker in ((("euler", "karras"), "o"), (("dpmpp_2m", "karras"), "s")):
            pts = sorted((r["nfe"], r["rmse_mean"]) for r in rows
                         if r["dataset"] == ds and (r["sampler"], r["schedule"]) == combo)
            if pts:
                series.append(Series(" + ".join(combo) + " (common default)", [n for n, _ in pts],
                                     [e for _, e in pts], color="#8c8c8c", dash=True, marker=marker, width=1.2))
        panels.append(line_plot(series, title=f"lab data set {ds}: error vs model calls", xlabel="NFE (model calls)",
                                ylabel="RMSE vs exact ODE sample", xlog=True, ylog=True, xticks=nfes,
                                size=(760, 460)))
    return hstack(panels)


if __name__ == "__main__":
    main()
