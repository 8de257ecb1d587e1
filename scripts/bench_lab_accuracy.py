"""Ground-truth sampler benchmark on the exact-denoiser lab: error vs model calls (NFE).

Every deterministic sampler x scheduler — ComfyUI's own and FewStep's (`fewstep_*` dropdown
entries plus the pack's SAMPLER / SIGMAS nodes at their defaults, found at run time) — runs
through ComfyUI's real sampling path on the lab MODEL at equal model calls (NFE 5, 6, 8, 10, 15,
20 by default: a sampler with two calls per step gets half the steps; combinations that cannot
make exactly N calls are skipped). Each output is compared with the exact probability-flow ODE
sample from the same noise (samplers/accuracy.py: ODE to the model's sigma_min, then the final
denoise; float64, convergence-checked). KSampler's convention is used for sigmas (dpm_2 / uni_pc
style samplers get steps+1 sigmas with the penultimate one dropped).

Stochastic samplers (output changes with the sampler seed at fixed initial noise) are listed but
not ranked: they do not approximate the ODE map, so their distance to it is not an accuracy.

    python scripts/bench_lab_accuracy.py                 # prints the tables, writes BENCHMARKS.md + docs/
    python scripts/bench_lab_accuracy.py --no-write --nfe 5 8 --datasets shapes
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_NFE = (5, 6, 8, 10, 15, 20)
# name -> (dataset, components, spread, seed) of the lab data sets benchmarked
DATASETS = {
    "shapes": ("shapes", 16, 0.05, 0),
    "gmm": ("gmm", 16, 0.3, 0),
}
SECTION_START = "<!-- lab-accuracy:start -->"
SECTION_END = "<!-- lab-accuracy:end -->"


def load_comfy(device: str):
    if not os.environ.get("COMFYUI_PATH"):
        spec = importlib.util.find_spec("comfy")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("ComfyUI not found: set COMFYUI_PATH to a ComfyUI checkout (or run through scripts/host.sh)")
        os.environ["COMFYUI_PATH"] = str(Path(list(spec.submodule_search_locations)[0]).parent)
    os.environ["FEWSTEP_TEST_DEVICE"] = device
    sys.path.insert(0, str(REPO / "tests"))
    from comfy_host import load_inprocess
    return load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-bench-")))


class Entry:
    """A sampler or schedule candidate: name, origin ('ComfyUI' / 'FewStep') and how to make it."""

    def __init__(self, name, origin, make, discard_penultimate=False):
        self.name, self.origin, self.make, self.discard_penultimate = name, origin, make, discard_penultimate


def _fill_defaults(cls, model, steps):
    """kwargs for a V1 node from its defaults; MODEL gets the lab model, 'steps' the step count.
    None when a required input has no default."""
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
        elif "default" in opts:
            kwargs[name] = opts["default"]
        else:
            return None
    return kwargs


def discover(pack, runner):
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
    for node_id, cls in sorted(pack.NODE_CLASS_MAPPINGS.items()):
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
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--schedule", default="sd_discrete", choices=["sd_discrete", "edm"], help="lab model noise schedule")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=16, help="latent height/width (4 channels)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to run the lab model on the GPU")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the lab's matrices are tiny, and extra threads only "
                         "spin when the cores are shared)")
    ap.add_argument("--only", default="", help="regex: keep only samplers/schedules whose name matches (quick looks)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch BENCHMARKS.md / docs/")
    args = ap.parse_args(argv)
    if min(args.nfe) < 1 or args.batch < 1 or args.size < 2:
        ap.error("--nfe values and --batch must be >= 1, --size >= 2")

    t_start = time.time()
    nodes, pack = load_comfy(args.device)
    import torch
    torch.set_num_threads(max(1, args.threads))
    import comfy.samplers
    runner = sys.modules[pack.__name__ + ".nodes._lab_runner"]
    accuracy = sys.modules[pack.__name__ + ".samplers.accuracy"]
    reference = sys.modules[pack.__name__ + ".samplers.reference"]
    lab = sys.modules[pack.__name__ + ".nodes.lab"]

    samplers, schedulers = discover(pack, runner)
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
    for ds in args.datasets:
        dataset, comps, spread, dseed = DATASETS[ds]
        model = lab.build_lab_model(dataset, comps, spread, dseed, args.schedule)
        denoiser = runner.lab_denoiser(model)
        sigma_min = float(model.get_model_object("model_sampling").sigma_min)
        noise = runner.make_noise(args.seed, args.batch, args.size)
        runs, starts = [], {}
        for s in deterministic:
            sampler = s.make(model)
            for sch in schedulers:
                for n, steps in plan[(s.name, sch.name)].items():
                    if steps is None:
                        continue
                    try:
                        sig = sch.make(model, steps, s.discard_penultimate)
                        accuracy.check_sigmas(sig)
                        run = runner.run_sampler(model, sampler, sig.float(), noise, args.seed)
                    except Exception as e:
                        print(f"[bench] {s.name} + {sch.name} @ {n}: {type(e).__name__}: {e}", file=sys.stderr)
                        continue
                    if run.log.nfe != n:
                        continue  # probe and full-size run disagree: not an equal-NFE point
                    kind, s_end = accuracy.end_convention(sig.double().tolist(), run.output, run.log)
                    starts.setdefault(round(float(sig[0]), 9), run.x_start)
                    runs.append(dict(sampler=s, schedule=sch, nfe=n, steps=steps, sigmas=sig.double().tolist(),
                                     output=run.output, kind=kind, s_end=s_end))
        # One certified reference per starting sigma, with every end point any run needs.
        by_start = {}
        for r in runs:
            by_start.setdefault(round(r["sigmas"][0], 9), []).append(r)
        for s0, group in by_start.items():
            points = {sigma_min} | {r["s_end"] for r in group}
            ref = reference.reference_states(denoiser, starts[s0], group[0]["sigmas"][0], points)
            d = lambda x, s: denoiser(x, torch.full((x.shape[0],), s, dtype=torch.float64))
            sample = d(ref.at(sigma_min), sigma_min)
            for r in group:
                out = r["output"].double()
                endpoint = d(ref.at(r["s_end"]), r["s_end"]) if r["kind"] == "denoise" else ref.at(r["s_end"])
                e = reference.per_sample_rmse(out, sample)
                ee = reference.per_sample_rmse(out, endpoint)
                finite = bool(torch.isfinite(out).all())
                rows.append(dict(dataset=ds, sampler=r["sampler"].name, schedule=r["schedule"].name,
                                 origin="FewStep" if "FewStep" in (r["sampler"].origin, r["schedule"].origin) else "ComfyUI",
                                 nfe=r["nfe"], steps=r["steps"],
                                 rmse_mean=float(e.mean()) if finite else math.inf,
                                 rmse_median=float(e.median()) if finite else math.inf,
                                 endpoint_rmse_mean=float(ee.mean()) if finite else math.inf,
                                 end=("%s@%.4g" % (r["kind"], r["s_end"])), ref_discrepancy=ref.discrepancy))
        print(f"[bench] {ds}: {len(runs)} runs scored after {time.time() - t_start:.0f} s", flush=True)

    elapsed = time.time() - t_start
    meta = dict(args=vars(args), elapsed_s=elapsed, stochastic=[s.name for s in stochastic],
                samplers=[(s.name, s.origin) for s in deterministic], schedules=[(s.name, s.origin) for s in schedulers])
    md = markdown(rows, meta)
    print(md)
    if not args.no_write:
        docs = REPO / "docs"
        docs.mkdir(exist_ok=True)
        plot_path = docs / "lab_accuracy.png"
        error_plot(rows, args).save(plot_path)
        with open(docs / "lab_accuracy.csv", "w", newline="") as fh:
            cols = ["dataset", "origin", "sampler", "schedule", "nfe", "steps", "rmse_mean", "rmse_median",
                    "endpoint_rmse_mean", "end", "ref_discrepancy"]
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in sorted(rows, key=lambda r: (r["dataset"], r["nfe"], r["rmse_mean"])):
                w.writerow({k: r[k] for k in cols})
        write_section(REPO / "BENCHMARKS.md", md)
        print(f"[bench] wrote BENCHMARKS.md, {plot_path.relative_to(REPO)}, docs/lab_accuracy.csv")
    print(f"[bench] total {time.time() - t_start:.0f} s")
    return rows


def best(rows, dataset, nfe, origin):
    cands = [r for r in rows if r["dataset"] == dataset and r["nfe"] == nfe and r["origin"] == origin
             and math.isfinite(r["rmse_mean"])]
    return min(cands, key=lambda r: r["rmse_mean"]) if cands else None


def _gmean(vals):
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def top_combos(rows, dataset, origin, nfes, k):
    """Combos present at every NFE, ranked by the geometric mean of their error."""
    combos = {}
    for r in rows:
        if r["dataset"] == dataset and r["origin"] == origin and math.isfinite(r["rmse_mean"]) and r["rmse_mean"] > 0:
            combos.setdefault((r["sampler"], r["schedule"]), {})[r["nfe"]] = r["rmse_mean"]
    full = {c: v for c, v in combos.items() if all(n in v for n in nfes)}
    return sorted(full.items(), key=lambda cv: _gmean(list(cv[1].values())))[:k]


def markdown(rows, meta) -> str:
    args = meta["args"]
    nfes = sorted(set(args["nfe"]))
    import torch
    import comfy
    try:
        from comfyui_version import __version__ as comfy_version
    except ImportError:
        comfy_version = "unknown"
    lines = [SECTION_START, "## Lab accuracy: error vs model calls (exact-denoiser lab)", ""]
    lines += [
        f"Measured {datetime.date.today().isoformat()} with `python scripts/bench_lab_accuracy.py` "
        f"(ComfyUI {comfy_version}, torch {torch.__version__}, {platform.machine()} {args['device']}, "
        f"{meta['elapsed_s']:.0f} s). Lab model `{args['schedule']}` (sigma 0.0292-14.61), latent 4x{args['size']}x{args['size']}, "
        f"batch {args['batch']}, noise seed {args['seed']}. Data sets: "
        + ", ".join(f"`{k}` ({v[1]} components, spread {v[2]})" for k, v in DATASETS.items() if k in args["datasets"]) + ".",
        "",
        "Error = per-sample RMSE (mean over the batch) against the exact sample of the model: the probability-flow "
        "ODE from the same initial latent to sigma_min, then the final denoise (float64, adaptive RK45, two "
        "tolerances must agree). Equal model calls (NFE), not equal steps; a sampler/schedule that cannot make "
        "exactly N calls has no entry at N. \"FewStep\" = a pack sampler or a pack schedule is involved; "
        "\"ComfyUI\" = both built in. Target: FewStep's best <= 0.5 x ComfyUI's best at NFE 5, 6, 8.",
        "",
        f"Deterministic samplers ranked: {len(meta['samplers'])} "
        f"({sum(o == 'FewStep' for _, o in meta['samplers'])} FewStep); schedules: {len(meta['schedules'])} "
        f"({sum(o == 'FewStep' for _, o in meta['schedules'])} FewStep). Stochastic, not ranked: "
        + (", ".join(meta["stochastic"]) or "none") + ".",
        "",
    ]
    for ds in args["datasets"]:
        lines += [f"### `{ds}`", "",
                  "| NFE | ComfyUI best (sampler + scheduler) | RMSE | FewStep best (sampler + schedule) | RMSE | FewStep / ComfyUI | target |",
                  "|---:|---|---:|---|---:|---:|---|"]
        for n in nfes:
            c, p = best(rows, ds, n, "ComfyUI"), best(rows, ds, n, "FewStep")
            ratio = p["rmse_mean"] / c["rmse_mean"] if (c and p and c["rmse_mean"] > 0) else None
            target = ("met" if ratio is not None and ratio <= 0.5 else "missed") if n in (5, 6, 8) else ""
            if p is None and n in (5, 6, 8):
                target = "no FewStep entry"
            lines.append(
                f"| {n} | {c['sampler'] + ' + ' + c['schedule'] if c else '-'} | {c['rmse_mean']:.4g} |" if c else f"| {n} | - | - |")
            lines[-1] += (f" {p['sampler']} + {p['schedule']} | {p['rmse_mean']:.4g} |" if p else " - | - |")
            lines[-1] += f" {ratio:.2f} | {target} |" if ratio is not None else f" - | {target} |"
        lines.append("")
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
    lines += ["Plot: `docs/lab_accuracy.png`; every run: `docs/lab_accuracy.csv` (also the error against each "
              "schedule's own end point, `endpoint_rmse_mean`).", SECTION_END]
    return "\n".join(lines)


def write_section(path: Path, md: str):
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        _, tail = rest.split(SECTION_END, 1)
        text = head + md + tail
    else:
        text = text.rstrip("\n") + "\n\n" + md + "\n"
    path.write_text(text)


def error_plot(rows, args):
    sys.path.insert(0, str(REPO))
    from samplers.plotting import Series, hstack, line_plot
    nfes = sorted(set(args.nfe))
    panels = []
    for ds in args.datasets:
        series = []
        for origin, color, dash in (("ComfyUI", "#1f77b4", False), ("FewStep", "#d62728", False)):
            pts = [(n, best(rows, ds, n, origin)) for n in nfes]
            pts = [(n, b["rmse_mean"]) for n, b in pts if b]
            if pts:
                series.append(Series(f"{origin} best at each NFE", [n for n, _ in pts], [e for _, e in pts],
                                     color=color, width=3))
        extra = [("ComfyUI", 2, "#6baed6"), ("FewStep", 2, "#fc9272")]
        for origin, k, color in extra:
            for (sampler, sched), errs in top_combos(rows, ds, origin, nfes, k):
                series.append(Series(f"{sampler} + {sched}", nfes, [errs[n] for n in nfes], color=color, dash=True,
                                     marker="s" if origin == "FewStep" else "^", width=1.5))
                color = "#2171b5" if origin == "ComfyUI" else "#cb181d"
        for combo in (("euler", "karras"), ("dpmpp_2m", "karras")):
            pts = [(r["nfe"], r["rmse_mean"]) for r in rows if r["dataset"] == ds and (r["sampler"], r["schedule"]) == combo]
            pts.sort()
            if pts:
                series.append(Series(" + ".join(combo), [n for n, _ in pts], [e for _, e in pts], color="#7f7f7f",
                                     dash=True, marker="o", width=1.2))
        panels.append(line_plot(series, title=f"lab `{ds}`: error vs model calls", xlabel="NFE (model calls)",
                                ylabel="RMSE vs exact ODE sample", xlog=True, ylog=True, xticks=nfes,
                                size=(760, 460)))
    return hstack(panels)


if __name__ == "__main__":
    main()
