"""Guidance Window cost on the GPU: rows, GPU time and wall time per image, plain CFG vs the window.

    python bench/bench_guidance_gpu.py            # CUDA: SDXL 1024² and SD1.5 512², random fp16 UNets
    python bench/bench_guidance_gpu.py --tiny     # anywhere (CPU): tiny UNets, 16x16 latents

Needs $COMFYUI_PATH (the host's tree, or .gpu/ComfyUI from scripts/gpu_bundle.sh). Every run goes
through ComfyUI's KSampler path (nodes.common_ksampler: DPM++ 2M + karras, 8 steps, CFG 5, batch 1),
variants interleaved, medians of --repeats. Per image: rows the UNet evaluated (counted in a separate,
untimed run), GPU time (CUDA events around the whole sampling call) and wall time (perf_counter,
after a synchronize). When the pack has the launch-free node (FewStepCudaGraph, bridge/cuda_graph.py)
every variant is also run through it (its batch-1 and batch-2 calls are captured separately);
otherwise that column says why it is absent. Prints markdown; ratios are within one run."""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
from bench.gpu_env import setup_comfy  # noqa: E402

CFG, STEPS = 5.0, 8

def timed(fn, device):
    """(GPU ms by CUDA events, wall ms) of fn(); both equal perf_counter on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms


def interleaved(variants: dict, repeats: int, device, warmup: int = 2):
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    samples = {k: ([], []) for k in variants}
    names = list(variants)
    for r in range(repeats):
        for k in names[r % len(names):] + names[:r % len(names)]:
            gpu, wall = timed(variants[k], device)
            samples[k][0].append(gpu)
            samples[k][1].append(wall)
    return {k: (statistics.median(g), statistics.median(w)) for k, (g, w) in samples.items()}


def node_defaults(cls) -> dict:
    """Default values of a node's inputs other than `model` (v1 INPUT_TYPES or v3 schema)."""
    out = {}
    if hasattr(cls, "define_schema"):
        for inp in cls.define_schema().inputs:
            if inp.id != "model" and not inp.optional:
                out[inp.id] = getattr(inp, "default", None)
        return out
    for name, spec in cls.INPUT_TYPES().get("required", {}).items():
        if name != "model":
            opts = spec[1] if len(spec) > 1 else {}
            out[name] = opts.get("default", spec[0][0] if isinstance(spec[0], list) else None)
    return out


def apply_model_node(cls, model):
    kwargs = {"model": model, **node_defaults(cls)}
    if hasattr(cls, "define_schema"):
        res = cls.execute(**kwargs)
        return (res.result if hasattr(res, "result") else res.args)[0]
    obj = cls()
    return getattr(obj, cls.FUNCTION)(**kwargs)[0]


def launch_free(nodes, pack):
    """The launch-free node class, or (None, why not)."""
    try:
        importlib.import_module(f"{pack.__name__}.bridge.cuda_graph")
    except ImportError as err:
        return None, f"bridge/cuda_graph.py not in this checkout ({err.__class__.__name__})"
    cls = nodes.NODE_CLASS_MAPPINGS.get("FewStepCudaGraph")
    return (cls, "") if cls is not None else (None, "FewStepCudaGraph node not registered")


def rows_per_image(nodes, model, pos, neg, latent):
    m = model.clone()
    rows = []

    def wrapper(apply, args):
        rows.append(int(args["input"].shape[0]))
        return apply(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    with torch.inference_mode():
        nodes.common_ksampler(m, 0, STEPS, CFG, "dpmpp_2m", "karras", pos, neg, latent)
    return sum(rows)


def bench_model(nodes, pack, label, config, family, side, dtype, repeats, device, warmup=2):
    import comfy.model_management as mm
    from tests.support import random_unet
    patcher = random_unet.build(config, dtype=dtype, family=family)
    pos = random_unet.random_conditioning(config, 1, seed=1)
    neg = random_unet.random_conditioning(config, 1, seed=2)
    latent = {"samples": torch.zeros(1, 4, side, side)}
    window_cls = nodes.NODE_CLASS_MAPPINGS["FewStepGuidanceWindow"]
    windowed = apply_model_node(window_cls, patcher)
    models = {"plain CFG": patcher, "Guidance Window (default σ window)": windowed}
    graph_cls, why = launch_free(nodes, pack)
    if graph_cls is not None:
        try:
            models["plain CFG + launch-free"] = apply_model_node(graph_cls, patcher)
            models["Guidance Window + launch-free"] = apply_model_node(graph_cls, windowed)
        except Exception as err:  # noqa: BLE001 - reported, not hidden
            why = f"FewStepCudaGraph failed: {err}"
    mm.load_models_gpu([patcher])

    def run(model):
        def go():
            with torch.inference_mode():
                nodes.common_ksampler(model, 0, STEPS, CFG, "dpmpp_2m", "karras", pos, neg, latent)
        return go
    times = interleaved({k: run(m) for k, m in models.items()}, repeats, device, warmup)
    rows = {k: rows_per_image(nodes, m, pos, neg, latent) for k, m in models.items()}
    lines = []
    for k, (gpu, wall) in times.items():
        base = times["plain CFG + launch-free" if "launch-free" in k else "plain CFG"]
        lines.append(f"| {label} | {k} | {rows[k]} | {gpu:.1f} | {wall:.1f} | {gpu / base[0]:.3f} | {wall / base[1]:.3f} |")
    del patcher, windowed, models
    mm.soft_empty_cache()
    return lines, why


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny UNets on 16x16 latents (runs on the CPU)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", choices=["sdxl", "sd15"], help="one model only")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs of each variant first")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    setup_comfy(cpu=not cuda)
    from tests.support.comfy_inprocess import load_inprocess
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-guidance-bench-")), cpu=not cuda)
    import comfy.model_management as mm
    import comfyui_version
    from tests.support import random_unet
    device = mm.get_torch_device()
    repeats = args.repeats or (3 if args.tiny else 7)
    if args.tiny:
        setups = [("tiny SDXL layout 16²", random_unet.TINY_SDXL_UNET, "sdxl", 16, torch.float32),
                  ("tiny SD1.5 layout 16²", random_unet.TINY_SD15_UNET, "sd15", 16, torch.float32)]
    else:
        setups = [("SDXL 1024²", random_unet.SDXL_UNET, "sdxl", 128, torch.float16),
                  ("SD1.5 512²", random_unet.SD15_UNET, "sd15", 64, torch.float16)]
    if args.only:
        setups = [s for s in setups if args.only in s[2]]
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"# Guidance Window benchmark\n\ndevice: {name}; torch {torch.__version__}; ComfyUI "
          f"{comfyui_version.__version__}; random-weight UNets; DPM++ 2M + karras, {STEPS} steps, CFG {CFG}, "
          f"batch 1; medians of {repeats} interleaved runs; times per image\n")
    print("| model | variant | UNet rows / image | GPU ms | wall ms | GPU vs plain | wall vs plain |")
    print("|---|---|---|---|---|---|---|")
    notes = set()
    for label, config, family, side, dtype in setups:
        lines, why = bench_model(nodes, pack, label, config, family, side, dtype, repeats, device, args.warmup)
        print("\n".join(lines), flush=True)
        if why:
            notes.add(why)
    for why in sorted(notes):
        print(f"\nlaunch-free rows absent: {why}")
    print("\n(\"vs plain\": against plain CFG in the same mode, eager or launch-free)")


if __name__ == "__main__":
    main()
