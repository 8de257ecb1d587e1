"""Launch-free UNet (issue 17): sampling wall time with and without the FewStepCudaGraph node, against
the bare UNet's own CUDA-graph time (the floor) and ComfyUI's TorchCompileModel, in one run.

    python -m bench.bench_launch_free                       # SDXL 1024² and SD1.5 512², fp16, CUDA
    python -m bench.bench_launch_free --families sd15 --repeats 1 --no-compile   # quick look

Needs $COMFYUI_PATH (the host's tree, or .gpu/ComfyUI made by scripts/gpu_bundle.sh); the pack is
loaded by ComfyUI's own loader. UNets are ComfyUI's own classes with random fp16 weights
(tests/support/random_unet.py). Every run goes through ComfyUI's sampling code: the FewStep recipe's
MODEL/SIGMAS/SAMPLER through comfy.sample.sample_custom, dpmpp_2m + karras through KSampler's
common_ksampler. CFG 1 runs batch-1 UNet calls (ComfyUI skips the unconditional pass), CFG 5.5
batch-2 calls (cond and uncond batched). Wall time = host clock around the sampling call with the
GPU synchronised before and after (what a user waits for), median of --repeats runs taken in
rotating variant order after one warm-up run (the warm-up holds capture / compile time).
Peak memory = torch.cuda.max_memory_reserved during one run after emptying the cache (a graph's
private pool is reserved, not allocated, between replays). Prints markdown; --json writes all rows."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu_env import setup_comfy

REPO = Path(__file__).resolve().parents[1]

FAMILIES = {  # config name, family, latent side, recipe resolution
    "sdxl": ("SDXL_UNET", "sdxl", 128, "1024 (SDXL)"),
    "sd15": ("SD15_UNET", "sd15", 64, "512 (SD1.5)"),
}
RUNS = (("recipe", 6), ("recipe", 8), ("dpmpp_2m", 20))
CFGS = (1.0, 5.5)


CUDA = torch.cuda.is_available()
TINY = {"sdxl": ("TINY_SDXL_UNET", "sdxl", 16, "1024 (SDXL)"), "sd15": ("TINY_SD15_UNET", "sd15", 16, "512 (SD1.5)")}


def sync():
    if CUDA:
        torch.cuda.synchronize()


def sync_ms(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return (time.perf_counter() - t0) * 1e3, out


def reset_peak():
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib():
    return torch.cuda.max_memory_reserved() / 2**20 if CUDA else 1.0


def unet_floor(patcher, batch, side, reps):
    """Bare diffusion_model call at `batch`: eager ms per call (back to back) and CUDA-graph replay ms."""
    unet = patcher.model.diffusion_model
    cfg = patcher.model.model_config.unet_config
    dtype = patcher.model.get_dtype()
    dev = patcher.load_device
    x = torch.randn(batch, 4, side, side, device=dev, dtype=dtype)
    t = torch.full((batch,), 500.0, device=dev)
    ctx = torch.randn(batch, 77, cfg["context_dim"], device=dev, dtype=dtype)
    kw = {"y": torch.randn(batch, patcher.model.adm_channels, device=dev, dtype=dtype)} if patcher.model.adm_channels else {}

    def call():
        return unet(x, t, context=ctx, **kw)
    for _ in range(3):
        call()
    eager = sync_ms(lambda: [call() for _ in range(reps)])[0] / reps
    if not CUDA:
        return eager, eager
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    graph.replay()
    replay = sync_ms(lambda: [graph.replay() for _ in range(reps)])[0] / reps
    del graph
    torch.cuda.empty_cache()
    return eager, replay


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="sdxl,sd15")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile-cases", default="sd15:1/dpmpp_2m/20+5.5/dpmpp_2m/20,sdxl:1/dpmpp_2m/20",
                    help="family:all or family:cfg/run/steps[+...] for the TorchCompileModel variants "
                         "(each new shape / patch set compiles for minutes on SDXL)")
    ap.add_argument("--budget", type=float, default=1e9, help="seconds; compile variants are skipped past it")
    ap.add_argument("--reduce-overhead", action="store_true",
                    help="also inductor with CUDA graphs (torch.compile mode='reduce-overhead', the issue's "
                         "reference per call) on the compile cases; not stacked under the node (a graph "
                         "cannot be captured inside another)")
    ap.add_argument("--only-compile-cases", action="store_true", help="run only the --compile-cases cases")
    ap.add_argument("--json", default=None)
    ap.add_argument("--tiny", action="store_true", help="tiny UNets, fp32 (a check of this script on CPU)")
    args = ap.parse_args()
    if not CUDA and not args.tiny:
        raise SystemExit("bench_launch_free needs a CUDA GPU (--tiny checks the script anywhere)")
    start = time.time()
    setup_comfy(cpu=not CUDA)
    from tests.support.comfy_inprocess import load_inprocess
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-bench-")), cpu=not CUDA)
    import comfy.model_management as mm
    import comfy.sample
    import comfyui_version
    from tests.support import random_unet
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    bridge = sys.modules[f"{pack.__name__}.bridge.cuda_graph"]
    import comfy.utils
    comfy.utils.PROGRESS_BAR_ENABLED = False
    launch_free = nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraph"]
    recipe_node = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"]()

    compile_cases = {}
    for item in args.compile_cases.split(","):
        fam, _, cases = item.partition(":")
        compile_cases[fam] = None if cases == "all" else set(cases.split("+"))

    device_name = torch.cuda.get_device_name() if CUDA else "CPU"
    print(f"# Launch-free UNet benchmark\n\ndevice: {device_name}; torch {torch.__version__}; "
          f"ComfyUI {comfyui_version.__version__}; fp16 random weights; medians of {args.repeats} runs\n")
    rows, floors, reports = [], {}, []
    for fam in args.families.split(","):
        config_name, family, side, resolution = (TINY if args.tiny else FAMILIES)[fam]
        config = getattr(random_unet, config_name)
        patcher = random_unet.build(config, dtype=torch.float32 if args.tiny else torch.float16, family=family)
        mm.load_models_gpu([patcher])
        pos = random_unet.random_conditioning(config, 1, seed=1)
        neg = random_unet.random_conditioning(config, 1, seed=2)
        latent = torch.zeros(1, 4, side, side)
        noise = comfy.sample.prepare_noise(latent, 0)
        for batch in (1, 2):
            floors[(fam, batch)] = unet_floor(patcher, batch, side, 20)
        print(f"## {fam} ({side * 8}², latent {side}x{side})\n")
        print("bare UNet call, back to back: " + "; ".join(
            f"batch {b}: eager {floors[(fam, b)][0]:.2f} ms, CUDA graph {floors[(fam, b)][1]:.2f} ms (floor), "
            f"eager/graph {floors[(fam, b)][0] / floors[(fam, b)][1]:.2f}x" for b in (1, 2)) + "\n")

        bases = {"eager": patcher}
        if not args.no_compile and fam in compile_cases:
            bases["TorchCompileModel"] = TorchCompileModel.execute(patcher, "inductor").result[0]
            if args.reduce_overhead:
                bases[REDUCE_OVERHEAD] = patcher.clone()
                set_torch_compile_wrapper(bases[REDUCE_OVERHEAD], "inductor", mode="reduce-overhead")
        attached = []
        for cfg in CFGS:
            for kind, steps in RUNS:
                case = f"{cfg:g}/{kind}/{steps}"
                wanted = compile_cases.get(fam, set())
                if args.only_compile_cases and not (wanted is None or case in wanted):
                    continue
                use = [b for b in bases if b == "eager" or (
                    (wanted is None or case in wanted) and time.time() - start < args.budget)]
                variants = {}
                for base_name in use:
                    # the recipe's FreeU patch is made once per case and shared by the variants on one base
                    if kind == "recipe":
                        m, sigmas, sampler, _ = recipe_node.build(bases[base_name], resolution, steps, "unipc_fs")
                    else:
                        m = bases[base_name]
                    pairs = [(base_name, m)]
                    if base_name != REDUCE_OVERHEAD:
                        node = launch_free.execute(m, 8, True).result[0]
                        attached.append((f"{base_name} {case}", node))
                        pairs.append((launch_name(base_name), node))
                    for name, model in pairs:
                        if kind == "recipe":
                            variants[name] = (model, lambda model=model, sigmas=sigmas, sampler=sampler: comfy.sample.sample_custom(
                                model, noise, cfg, sampler, sigmas, pos, neg, latent, disable_pbar=True, seed=0))
                        else:
                            variants[name] = (model, lambda model=model: nodes.common_ksampler(
                                model, 0, steps, cfg, "dpmpp_2m", "karras", pos, neg, {"samples": latent})[0]["samples"])
                names = list(variants)
                runs = {n: v[1] for n, v in variants.items()}
                first, times, outs, peaks = {}, {n: [] for n in names}, {}, {}
                for name in list(names):
                    runner = bridge.find(variants[name][0])
                    captures_before = len(runner.capture_seconds) if runner else 0
                    try:
                        first[name] = sync_ms(runs[name])[0]
                    except Exception as exc:  # a compile variant that fails must not cost the other rows
                        if name == "eager":
                            raise
                        print(f"\n{fam} {case} {name}: failed on its first run: {type(exc).__name__}: {exc}\n")
                        names.remove(name)
                        continue
                    cap = runner.capture_seconds[captures_before:] if runner else []
                    first[name] = (first[name], max(cap) if cap else None, runner.last_fallback if runner else None)
                    reset_peak()
                    ms, outs[name] = sync_ms(runs[name])
                    peaks[name] = peak_mib()
                for r in range(args.repeats):
                    order = names[r % len(names):] + names[:r % len(names)]
                    for name in order:
                        times[name].append(sync_ms(runs[name])[0])
                base = statistics.median(times["eager"])
                batch = 1 if cfg == 1.0 else 2
                floor = floors[(fam, batch)][1]
                for name in names:
                    med = statistics.median(times[name])
                    rows.append({
                        "family": fam, "cfg": cfg, "batch": batch, "run": f"{kind} {steps}", "calls": steps,
                        "variant": name, "wall_ms": med, "spread_ms": [min(times[name]), max(times[name])],
                        "per_call_ms": med / steps, "floor_ms": floor, "per_call_over_floor": med / steps / floor,
                        "speedup_vs_eager": base / med, "first_run_ms": first[name][0], "capture_s": first[name][1],
                        "fallback": first[name][2], "peak_reserved_mib": peaks[name],
                        "extra_mem_pct": 100 * (peaks[name] - peaks["eager"]) / peaks["eager"],
                        "max_abs_diff": (outs[name].float() - outs["eager"].float()).abs().max().item(),
                        "bitwise": bool(torch.equal(outs[name], outs["eager"]))})
                for label, node in attached:  # free this case's graphs before the next case's memory peaks
                    runner = bridge.find(node)
                    if runner.entries or runner.refused:
                        reports.append((label, runner.report()))
                        runner.clear("benchmark case done")
                attached.clear()
                reset_peak()
                print_rows([r for r in rows if r["family"] == fam and r["cfg"] == cfg and r["run"] == f"{kind} {steps}"],
                           header=(cfg == CFGS[0] and (kind, steps) == RUNS[0]))
        for label, text in reports:
            print(f"\nlaunch-free on {label}:\n```\n{text}\n```")
        reports.clear()
        print()
        del variants, bases, attached, patcher
        mm.unload_all_models()
        mm.soft_empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "floors": {
            f"{k[0]} b{k[1]}": v for k, v in floors.items()}, "rows": rows}, indent=1))
    print(f"\ntotal {time.time() - start:.0f} s")


REDUCE_OVERHEAD = "inductor reduce-overhead (CUDA graphs)"


def launch_name(base_name):
    return "launch-free" if base_name == "eager" else f"{base_name} → launch-free"


def print_rows(rows, header):
    if header:
        print("| CFG (batch) | run | variant | ms / image | ms / UNet call | / floor | vs eager | first run ms "
              "(capture s) | peak reserved MiB (extra) | max abs diff vs eager |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cap = f" ({r['capture_s']:.2f})" if r["capture_s"] is not None else ""
        diff = "bitwise" if r["bitwise"] else f"{r['max_abs_diff']:.3g}"
        print(f"| {r['cfg']:g} ({r['batch']}) | {r['run']} | {r['variant']} | {r['wall_ms']:.1f} | "
              f"{r['per_call_ms']:.2f} | {r['per_call_over_floor']:.2f}x | {r['speedup_vs_eager']:.2f}x | "
              f"{r['first_run_ms']:.0f}{cap} | {r['peak_reserved_mib']:.0f} ({r['extra_mem_pct']:+.1f} %) | {diff} |")
        if r["fallback"] and r["variant"] != "eager":
            print(f"|  |  | ↳ eager calls: {r['fallback']} |  |  |  |  |  |  |  |")
    sys.stdout.flush()


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        main()
