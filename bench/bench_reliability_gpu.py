"""Reliability matrix, GPU rows (issue 25, items 2 and 3), measured in one run.

    python -m bench.bench_reliability_gpu --out DIR          # CUDA: SDXL UNet (random fp16 weights), 1024²
    python -m bench.bench_reliability_gpu --tiny --out DIR   # anywhere: tiny SD1.5-layout UNet, 16x16 latents

Needs $COMFYUI_PATH (the host's tree, or .gpu/ComfyUI made by scripts/gpu_bundle.sh); the pack is loaded
by ComfyUI's own loader. Every phase runs in its own process, because ComfyUI reads its memory flags
at import:

  memory   every FewStep dropdown sampler, the F-scheduler recipe (UniPC + AFS + FreeU patch, through
           sample_custom) and ComfyUI's dpmpp_2m, 8 steps, CFG 1 and 5, inside torch.inference_mode()
           (how ComfyUI's executor runs nodes) and outside it with gradients on (a script, another
           pack's node); peak allocated memory per run against ComfyUI's dpmpp_2m. Also: no NaN/inf,
           the same seed twice gives the same latent, and one run with sampling_with_gradients() (the
           trainer's switch) to show what a kept graph costs.
  lowvram / novram / partial
           the same samplers and the recipe with ComfyUI's --lowvram, --novram, and a VRAM budget
           smaller than the model (--reserve-vram sized so that about half the weights fit), weights
           offloaded to the CPU, at 4 steps and CFG 1 (--novram streams every weight on every call);
           each latent compared with the same run fully loaded in the memory phase.

Writes results.json and prints markdown tables."""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _host():
    """(setup_comfy, load_inprocess, random_unet) from the repo's test support (imported late: each
    phase sets ComfyUI's memory flags before ComfyUI is imported)."""
    from bench.gpu_env import setup_comfy
    from tests.support import random_unet
    from tests.support.comfy_inprocess import load_inprocess
    return setup_comfy, load_inprocess, random_unet

STEPS = 8
CFGS = (1.0, 5.0)
# Offloaded runs stream the weights on every call (--novram: all 5 GB of them), so they use 4 steps at
# CFG 1 to fit every sampler into the run; the memory phase computes the same runs fully loaded.
OFFLOAD_STEPS, OFFLOAD_CFG = 4, 1.0
SEED = 0
MODES = ("memory", "lowvram", "novram", "partial")


# ------------------------------------------------------------------ child process: one phase

def _setup(mode, tiny):
    setup_comfy, load_inprocess, _ = _host()
    cuda = torch.cuda.is_available()
    setup_comfy(cpu=not cuda)
    import comfy.cli_args
    args = comfy.cli_args.args
    if mode == "lowvram":
        args.lowvram = True
    elif mode == "novram":
        args.novram = True
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-rel-")), cpu=not cuda)
    return nodes, pack, cuda


def _build_model(mode, tiny, device):
    import comfy.model_patcher
    random_unet = _host()[2]
    config = random_unet.TINY_SD15_UNET if tiny else random_unet.SDXL_UNET
    dtype = torch.float32 if tiny else torch.float16
    # Built on the GPU in every phase: the same generator gives the same weights.
    patcher = random_unet.build(config, dtype=dtype, device=device, family="sd15" if tiny else "sdxl")
    if mode != "memory":
        model = patcher.model.to("cpu")
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    pos = random_unet.random_conditioning(config, 1, seed=1)
    neg = random_unet.random_conditioning(config, 1, seed=2)
    return patcher, pos, neg


def _runners(nodes, patcher, pos, neg, side):
    """name -> fn(cfg, steps) returning the latent, all through ComfyUI's sampling entry points."""
    import comfy.sample
    import comfy.samplers
    latent = torch.zeros(1, 4, side, side)
    noise = comfy.sample.prepare_noise(latent, SEED)
    recipe = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"]

    def dropdown(name, scheduler="karras"):
        return lambda cfg, steps=STEPS: comfy.sample.sample(patcher, noise, steps, cfg, name, scheduler, pos, neg, latent,
                                               seed=SEED, disable_pbar=True)

    def recipe_run(cfg, steps=STEPS):
        # SDXL at 8 steps: the paper's 1024² setting (its FreeU window); otherwise a window from mid-run
        options = dict(freeu="auto") if side > 64 and steps == 8 else dict(freeu="on", freeu_start_index=steps // 2)
        model, sigmas, sampler, _ = recipe.execute(patcher, "512 (SD1.5)" if side <= 64 else "1024 (SDXL)", steps,
                                                 "unipc_fs", **options)
        return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, pos, neg, latent, seed=SEED,
                                          disable_pbar=True)

    runs = {"ComfyUI dpmpp_2m": dropdown("dpmpp_2m")}
    for name in comfy.samplers.KSampler.SAMPLERS:
        if name.startswith("fewstep_"):
            runs[name] = dropdown(name)
    runs["FewStep recipe (UniPC+AFS+FreeU)"] = recipe_run
    return runs


def _measure(fn, cfg, cuda, steps=STEPS):
    """(latent, peak allocated bytes, allocated after the run with the latent alive, seconds)."""
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn(cfg, steps)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    after = torch.cuda.memory_allocated() if cuda else 0
    return out, peak, after, seconds


def child(mode, tiny, out_dir: Path, budget_s: float, smoke: bool = False):
    t_start = time.perf_counter()
    if tiny:
        torch.set_num_threads(1)  # a smoke run on a shared CPU: extra threads only spin
    nodes, pack, cuda = _setup(mode, tiny)
    import comfy.model_management as mm
    device = mm.get_torch_device()
    patcher, pos, neg = _build_model(mode, tiny, device)
    side = 16 if tiny else 128
    runs = _runners(nodes, patcher, pos, neg, side)
    if smoke:
        keep = ("ComfyUI dpmpp_2m", "fewstep_dpmpp_2m", "fewstep_dpmpp_2s", "FewStep recipe (UniPC+AFS+FreeU)")
        runs = {k: v for k, v in runs.items() if k in keep}
    result = {"mode": mode, "device": torch.cuda.get_device_name() if cuda else "CPU", "torch": torch.__version__,
              "vram_state": mm.vram_state.name, "rows": [], "not_run": []}
    import comfyui_version
    result["comfyui"] = comfyui_version.__version__

    if mode == "partial" and cuda:
        import comfy.sampler_helpers
        conds = {"positive": pos, "negative": neg}
        # what ComfyUI's loader will ask for at CFG 1 (batch 1), then reserve all but half the weights
        _, minimum = comfy.sampler_helpers.estimate_memory(patcher, (1, 4, side, side), {})
        free = mm.get_free_memory(device)
        reserve = free - minimum - 0.5 * patcher.model_size()
        mm.EXTRA_RESERVED_VRAM = int(max(reserve, 0))  # what --reserve-vram sets
        result["reserve_vram_gib"] = round(mm.EXTRA_RESERVED_VRAM / 2**30, 2)
        del conds

    import importlib
    common = importlib.import_module(f"{pack.__name__}.samplers.common")
    latents, by_grad_mode = {}, {}
    if mode == "memory":
        grad_modes = {"inference_mode": torch.inference_mode, "grad on, no inference_mode": torch.enable_grad}
        # warm-up (cuDNN / cuBLAS workspaces) outside the measurements
        with torch.inference_mode():
            runs["ComfyUI dpmpp_2m"](1.0)
        for cfg in CFGS:
            for gm_name, gm in grad_modes.items():
                base = None
                for name, fn in runs.items():
                    if time.perf_counter() - t_start > budget_s:
                        result["not_run"].append(f"{name} cfg {cfg} {gm_name}")
                        continue
                    try:
                        with gm():
                            out, peak, after, secs = _measure(fn, cfg, cuda)
                    except Exception as e:  # recorded (an OOM is a finding), the other rows still run
                        row = {"cfg": cfg, "grad_mode": gm_name, "sampler": name,
                               "error": f"{type(e).__name__}: {str(e)[:200]}"}
                        result["rows"].append(row)
                        print(json.dumps(row), flush=True)
                        gc.collect()
                        continue
                    base = peak if name == "ComfyUI dpmpp_2m" else base
                    row = {"cfg": cfg, "grad_mode": gm_name, "sampler": name, "peak_mib": peak / 2**20,
                           "after_mib": after / 2**20, "seconds": secs, "ratio": peak / base if base else None,
                           "finite": bool(torch.isfinite(out).all()), "graph": out.grad_fn is not None}
                    result["rows"].append(row)
                    if name in by_grad_mode.setdefault(cfg, {}):
                        row["same_as_inference_mode"] = bool(torch.equal(by_grad_mode[cfg][name], out.detach().cpu()))
                    else:
                        by_grad_mode[cfg][name] = out.detach().cpu().clone()
                    del out
                    print(json.dumps(row), flush=True)
        # determinism: the same seed twice, bitwise
        with torch.inference_mode():
            a = runs["fewstep_dpmpp_2m"](5.0).cpu()
            b = runs["fewstep_dpmpp_2m"](5.0).cpu()
            result["same_seed_twice_bitwise"] = bool(torch.equal(a, b))
            # the fully loaded reference for the offload phases
            for name, fn in runs.items():
                if time.perf_counter() - t_start > budget_s + 20:
                    break
                latents[name] = fn(OFFLOAD_CFG, OFFLOAD_STEPS).detach().cpu().clone()
        # what a kept graph costs: the trainer's switch, CFG 1, gradients on
        if cuda and time.perf_counter() - t_start < budget_s:
            try:
                with torch.enable_grad(), common.sampling_with_gradients():
                    out, peak, after, secs = _measure(runs["fewstep_dpmpp_2m"], 1.0, cuda)
                result["with_gradients_switch"] = {"peak_mib": peak / 2**20, "after_mib": after / 2**20,
                                                   "seconds": secs, "graph": out.grad_fn is not None}
                del out
            except torch.OutOfMemoryError as e:
                result["with_gradients_switch"] = {"error": str(e).split("\n")[0][:200]}
            gc.collect()
        torch.save(latents, out_dir / "reference_latents.pt")
    else:
        reference = torch.load(out_dir / "reference_latents.pt") if (out_dir / "reference_latents.pt").exists() else {}
        for name, fn in runs.items():
            if time.perf_counter() - t_start > budget_s:
                result["not_run"].append(name)
                continue
            try:
                with torch.inference_mode():
                    out, peak, after, secs = _measure(fn, OFFLOAD_CFG, cuda, OFFLOAD_STEPS)
            except Exception as e:  # recorded: an offload failure is a finding, not a crash of the bench
                result["rows"].append({"sampler": name, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                continue
            out = out.cpu()
            ref = reference.get(name)
            row = {"sampler": name, "peak_mib": peak / 2**20, "seconds": secs,
                   "finite": bool(torch.isfinite(out).all()),
                   "loaded_fraction": patcher.loaded_size() / max(patcher.model_size(), 1)}
            if ref is not None:
                row["bitwise"] = bool(torch.equal(ref, out))
                row["max_abs_diff"] = float((ref.float() - out.float()).abs().max())
                row["ref_scale"] = float(ref.float().abs().max())
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    result["seconds"] = time.perf_counter() - t_start
    (out_dir / f"{mode}.json").write_text(json.dumps(result, indent=1))


# ------------------------------------------------------------------ parent: phases and tables

def _table_memory(res):
    lines = [f"device: {res['device']}; torch {res['torch']}; ComfyUI {res['comfyui']}; vram state {res['vram_state']}",
             "", "| CFG | grad mode | sampler | peak MiB | × ComfyUI dpmpp_2m | MiB held after | s | finite | graph |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['cfg']:g} | {r['grad_mode']} | {r['sampler']} | ERROR {r['error']} | | | | | |")
            continue
        ratio = f"{r['ratio']:.4f}" if r.get("ratio") else "-"
        lines.append(f"| {r['cfg']:g} | {r['grad_mode']} | {r['sampler']} | {r['peak_mib']:.0f} | {ratio} | "
                     f"{r['after_mib']:.0f} | {r['seconds']:.2f} | {r['finite']} | {r['graph']} |")
    worst = {}
    for r in res["rows"]:
        if r.get("ratio") and r["sampler"] != "ComfyUI dpmpp_2m":
            k = (r["cfg"], r["grad_mode"])
            worst[k] = max(worst.get(k, 0), r["ratio"])
    lines.append("")
    for (cfg, gm), w in worst.items():
        lines.append(f"- CFG {cfg:g}, {gm}: worst FewStep ratio {w:.4f} (target <= 1.02)")
    mismatched = [r["sampler"] for r in res["rows"] if r.get("same_as_inference_mode") is False]
    lines.append(f"- latents with gradients on equal the inference-mode latents bitwise: "
                 f"{'all' if not mismatched else 'not for ' + ', '.join(mismatched)}")
    lines.append(f"- same seed twice bitwise (fewstep_dpmpp_2m, CFG 5): {res.get('same_seed_twice_bitwise')}")
    if "with_gradients_switch" in res:
        lines.append(f"- fewstep_dpmpp_2m inside sampling_with_gradients(), CFG 1: {res['with_gradients_switch']}")
    if res["not_run"]:
        lines.append(f"- not run (time budget): {res['not_run']}")
    return "\n".join(lines)


def _table_offload(res):
    lines = [f"### {res['mode']} (vram state {res['vram_state']}"
             + (f", reserve-vram {res['reserve_vram_gib']} GiB" if "reserve_vram_gib" in res else "") + ")", "",
             "| sampler | loaded fraction of weights | peak MiB | s | bitwise = full load | max abs diff | finite |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['sampler']} | ERROR {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['sampler']} | {r['loaded_fraction']:.2f} | {r['peak_mib']:.0f} | {r['seconds']:.2f} | "
                     f"{r.get('bitwise')} | {r.get('max_abs_diff', float('nan')):.3g} | {r['finite']} |")
    if res["not_run"]:
        lines.append(f"\nnot run (time budget): {res['not_run']}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default=None, help="folder for results.json and the reference latents")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--budget", type=float, default=330.0, help="seconds for all phases together")
    ap.add_argument("--smoke", action="store_true", help="three samplers and the recipe only (a quick check)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--child-budget", type=float, default=120.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    out_dir = Path(args.out or tempfile.mkdtemp(prefix="fewstep-rel-out-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.tiny, out_dir, args.child_budget, args.smoke)
        return
    t0 = time.perf_counter()
    shares = {"memory": 0.4, "lowvram": 0.15, "novram": 0.25, "partial": 0.2}
    results = {}
    for mode in args.modes:
        left = args.budget - (time.perf_counter() - t0)
        todo = args.modes[args.modes.index(mode):]
        budget = left * shares[mode] / sum(shares[m] for m in todo) - 5
        if budget < 20:
            print(f"skipping {mode}: no time left", flush=True)
            continue
        cmd = [sys.executable, "-m", "bench.bench_reliability_gpu", "--child", mode, "--child-budget", str(budget - 25), "--out", str(out_dir)]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--smoke"] if args.smoke else []
        print(f"== {mode} (budget {budget:.0f} s)", flush=True)
        proc = subprocess.run(cmd, env=os.environ.copy(), cwd=REPO, timeout=budget + 60)
        path = out_dir / f"{mode}.json"
        if proc.returncode == 0 and path.exists():
            results[mode] = json.loads(path.read_text())
        else:
            print(f"{mode} failed with exit code {proc.returncode}", flush=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print("\n## Peak memory against ComfyUI's dpmpp_2m (8 steps)\n")
    if "memory" in results:
        print(_table_memory(results["memory"]))
    print(f"\n## Offloaded models ({OFFLOAD_STEPS} steps, CFG {OFFLOAD_CFG:g}, inference mode), latents against "
          f"the fully loaded run\n")
    for mode in ("lowvram", "novram", "partial"):
        if mode in results:
            print(_table_offload(results[mode]) + "\n")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
