"""What FreeU costs per UNet call: no patch vs ComfyUI's FreeU / FreeU_V2 vs FewStep's FreeU.

    python -m bench.bench_freeu                 # CUDA: SDXL UNet, 1024² (128x128 latents), fp16
    python -m bench.bench_freeu --tiny          # any device: tiny SD1.5-layout UNet (a quick check)

Needs ComfyUI importable: $COMFYUI_PATH (or --comfyui) pointing at its checkout. The UNet is built
through ComfyUI's own classes (supported_models.SDXL -> model_base.SDXL -> UNetModel) with random
weights, on comfy.model_management's torch device. Each sample times one UNet call (CUDA events
on CUDA), variants interleaved in a rotating order, medians over the repeats; the overhead column is
median(variant) / median(no patch) - 1. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.gpu_env import setup_comfy, time_ms
from tests.support import random_unet


def comfy_node_patch(node_cls, model, b1, b2, s1, s2):
    """The output_block_patch function ComfyUI's own FreeU node installs (V1 or V3 node class)."""
    node = node_cls()
    out = (getattr(node, "patch", None) or node.execute)(model, b1, b2, s1, s2)  # V1 method / V3 classmethod
    patched = out[0] if isinstance(out, tuple) else getattr(out, "result", None) or out.args
    patched = patched[0] if isinstance(patched, tuple) else patched
    return patched.model_options["transformer_options"]["patches"]["output_block_patch"][-1]


def block_tables(patcher, unet, mc, factors, device, size, context_dim, adm, batch):
    """The patched decoder blocks on their own: the (h, hsp) shapes one UNet call hands to FreeU,
    exactness of the fused kernel against the torch route and ComfyUI's FreeU_V2 per dtype, and the
    time of one call's worth of blocks per implementation."""
    import torch
    from comfy_extras.nodes_freelunch import FreeU_V2
    from freeu.patch import FreeUPatch

    shapes = []

    def record(h, hsp, to):
        if int(h.shape[1]) in (2 * mc, 4 * mc):
            shapes.append((tuple(h.shape), tuple(hsp.shape)))
        return h, hsp
    gen = torch.Generator(device=device).manual_seed(1)
    dtype = next(unet.parameters()).dtype
    x = torch.randn(batch, 4, size, size, generator=gen, device=device).to(dtype)
    ctx = torch.randn(batch, 77, context_dim, generator=gen, device=device).to(dtype)
    y = torch.randn(batch, adm, generator=gen, device=device).to(dtype) if adm else None
    with torch.inference_mode():
        unet(x, torch.full((batch,), 700.0, device=device), context=ctx, y=y,
             transformer_options={"patches": {"output_block_patch": [record]}})
    b1, b2, s1, s2 = factors
    theirs = comfy_node_patch(FreeU_V2, patcher, b1, b2, s1, s2)
    mine = FreeUPatch(mc, b1, b2, s1, s2, version="v2")
    print(f"\nPatched blocks of one batch-{batch} UNet call (h, hsp): "
          + ", ".join(f"{h}/{hsp[1]}ch" for h, hsp in shapes) + "\n")
    print("| dtype | h: fused vs torch route | h: fused vs ComfyUI FreeU_V2 | hsp: fused vs torch route "
          "(max, eps·max|y|) | hsp: fused vs ComfyUI (max, eps·max|y|) | GPU ms per call: ComfyUI FreeU_V2 | "
          "torch route | fused | host ms per call: ComfyUI | torch route | fused |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        h_torch = h_comfy = 0.0
        ulps_torch = ulps_comfy = 0.0
        inputs = []
        with torch.inference_mode():
            for hs, hsps in shapes:
                h = torch.randn(hs, generator=gen, device=device).to(dt)
                hsp = torch.randn(hsps, generator=gen, device=device).to(dt)
                inputs.append((h, hsp))
                os.environ["FEWSTEP_FREEU_FUSED"] = "auto"
                fh, fhsp = mine(h.clone(), hsp.clone(), {})
                os.environ["FEWSTEP_FREEU_FUSED"] = "off"
                th, thsp = mine(h.clone(), hsp.clone(), {})
                ch, chsp = theirs(h.clone(), hsp.clone(), {})
                unit = torch.finfo(dt).eps * thsp.float().abs().max()  # eps at the largest value
                h_unit = torch.finfo(dt).eps * th.float().abs().max()
                h_torch = max(h_torch, ((fh.float() - th.float()).abs() / h_unit).max().item())
                h_comfy = max(h_comfy, ((fh.float() - ch.float()).abs() / h_unit).max().item())
                ulps_torch = max(ulps_torch, ((fhsp.float() - thsp.float()).abs() / unit).max().item())
                ulps_comfy = max(ulps_comfy, ((fhsp.float() - chsp.float()).abs() / unit).max().item())
            gpu, host = {}, {}
            for label, fn, route in (("comfy", theirs, "auto"), ("torch", mine, "off"), ("fused", mine, "auto")):
                os.environ["FEWSTEP_FREEU_FUSED"] = route
                gpu[label], host[label] = block_call_ms(fn, inputs, device)
        os.environ["FEWSTEP_FREEU_FUSED"] = "auto"

        def same(v):
            return "bit-identical" if v == 0 else f"max {v:.2f} eps·max|h|"
        print(f"| {str(dt).replace('torch.', '')} | {same(h_torch)} | {same(h_comfy)} | {ulps_torch:.2f} | "
              f"{ulps_comfy:.2f} | {gpu['comfy']:.3f} | {gpu['torch']:.3f} | {gpu['fused']:.3f} | "
              f"{host['comfy']:.3f} | {host['torch']:.3f} | {host['fused']:.3f} |")
    print()
    if device.type == "cuda" and os.environ.get("FEWSTEP_SWEEP"):
        sweep_fused(mine, shapes, device, gen, only={k: k for k in ("layout", "map", "plane", "settings")}.get(os.environ["FEWSTEP_SWEEP"], ""))


def graph_medians(call, names, repeats, device, rounds=1):
    """Median GPU ms per UNet call from CUDA-graph replays, interleaved: the launch overhead and
    the host are out of the picture, so what remains is the work each variant adds on the GPU.
    With rounds > 1 every variant is captured again in each round (fresh buffers and addresses)
    and replayed repeats // rounds times; returns ({variant: median of the round medians},
    {variant: [round medians]}). Variants that read σ on the host cannot be captured and are left out."""
    import torch
    per_round = {}
    for _ in range(rounds):
        graphs = {}
        for n in names:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.stream(stream):
                    call(n)
                    with torch.cuda.graph(graph, stream=stream):
                        call(n)
            except Exception:
                torch.cuda.synchronize()
                continue
            torch.cuda.current_stream().wait_stream(stream)
            graphs[n] = graph
        for g in graphs.values():
            g.replay()
        samples = {n: [] for n in graphs}
        order = list(graphs)
        for r in range(max(1, repeats // rounds)):
            for n in order[r % len(order):] + order[: r % len(order)]:
                samples[n].append(time_ms(graphs[n].replay, device))
        for n, v in samples.items():
            per_round.setdefault(n, []).append(statistics.median(v))
        del graphs
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {n: statistics.median(v) for n, v in per_round.items()}, per_round


def block_call_ms(fn, inputs, device, repeats=30, to=None):
    """(GPU ms, host ms) for one UNet call's worth of patched blocks: GPU time from a CUDA-graph
    replay (no launch overhead: the work itself), host time = Python + launch cost per call,
    measured without waiting for the GPU. Inputs are scaled down so repeated in-place FreeU stays finite."""
    import torch
    work = [(h.clone().mul_(1e-3), hsp.clone()) for h, hsp in inputs]

    def one_call():
        for h, hsp in work:
            fn(h, hsp, dict(to or {}))
    for _ in range(3):
        one_call()
    host = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        one_call()
        host.append(1e3 * (time.perf_counter() - t0))
    if device.type != "cuda":
        return statistics.median(host), statistics.median(host)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        one_call()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(10):
                one_call()
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    gpu = statistics.median(time_ms(graph.replay, device) / 10 for _ in range(repeats))
    return gpu, statistics.median(host)


# v2's second launch with or without programmatic dependent launch
LAYOUTS = {
    "PDL where the GPU has it (default)": {"pdl": "auto"},
    "no PDL": {"pdl": False},
}
# Launch settings measured against freeu.fused's defaults (FEWSTEP_SWEEP=settings, and whole calls).
SETTINGS = {
    "sums 16 channels at a time": {"sum_ct": 16},
    "no early read": {"early_read": False},
    "previous session's": {"sum_ct": 16, "early_read": False},
}
PREVIOUS = "FewStep v2, fused, previous session's settings"
# (tile, warps) tried on every block by FEWSTEP_SWEEP=plane
PLANE_CANDIDATES = ((2048, 2), (4096, 4), (8192, 4), (8192, 8), (16384, 8), (16384, 16))


def set_layout(overrides=None):
    """freeu.fused's launch settings: the module's own values, then `overrides` on top."""
    import freeu.fused as fused
    defaults = _LAYOUT_DEFAULTS.setdefault("values", fused.launch_settings())
    fused.set_launch_settings(**{**defaults, **(overrides or {})})


_LAYOUT_DEFAULTS: dict = {}  # freeu.fused's values before the first set_layout


def sweep_layout(patch, v1, inputs, shapes, device):
    """GPU ms per call (all blocks, then block by block) of v2 and v1 for each launch layout."""
    print(f"v1 (one launch per block): {block_call_ms(v1, inputs, device, repeats=20)[0]:.4f} ms\n")
    print("| v2 layout | v2 ms, all blocks | v2 ms per block |")
    print("|---|---|---|")
    for name, over in LAYOUTS.items():
        set_layout(over)
        v2_all = block_call_ms(patch, inputs, device, repeats=20)[0]
        per = [block_call_ms(patch, [hp], device, repeats=10)[0] for hp in inputs]
        print(f"| {name} | {v2_all:.4f} | " + ", ".join(f"{v * 1e3:.1f}" for v in per) + " µs |")
    set_layout()
    print("\nblocks: " + ", ".join(f"{hs}/{ps[1]}" for hs, ps in shapes) + "\n")


def block_kinds(patch, inputs, device):
    """The sweeps' patches (v1, v2, v2 σ-gated on / off; SDXL factors) and the transformer_options
    carrying a σ of 1.0 per sample that the gated ones read."""
    import torch
    from freeu.patch import FreeUPatch
    from freeu.window import window_from_sigma
    mc = min(patch.stages) // 2

    def mk(version, window=None):
        return FreeUPatch(mc, 1.3, 1.4, 0.9, 0.2, version=version, **({"window": window} if window else {}))
    kinds = {"v1": mk("v1"), "v2": mk("v2"), "v2 σ-gated on": mk("v2", window_from_sigma(100.0, 0.0)),
             "v2 σ-gated off": mk("v2", window_from_sigma(0.5, 0.0))}
    return kinds, {"sigmas": torch.full((inputs[0][0].shape[0],), 1.0, device=device)}


def sweep_plane(patch, inputs, shapes, device):
    """GPU µs per block for each (tile, warps) in PLANE_CANDIDATES (every launch of the block):
    v1, v2, v2 σ-gated on / off."""
    kinds, to = block_kinds(patch, inputs, device)
    batch = inputs[0][0].shape[0]
    print(f"batch {batch}, blocks: " + ", ".join(f"{hs}/{ps[1]}" for hs, ps in shapes))
    print("| tile, warps | variant | all blocks µs | per block µs |")
    print("|---|---|---|---|")
    for tile, warps in PLANE_CANDIDATES:
        set_layout({"tile": tile, "num_warps": warps})
        for name, q in kinds.items():
            total = block_call_ms(q, inputs, device, repeats=20, to=to)[0]
            per = [block_call_ms(q, [hp], device, repeats=10, to=to)[0] for hp in inputs]
            print(f"| {tile}, {warps} | {name} | {total * 1e3:.1f} | " + ", ".join(f"{v * 1e3:.1f}" for v in per) + " |",
                  flush=True)
    set_layout()
    print()


def sweep_settings(patch, inputs, shapes, device, rounds=3):
    """GPU µs per call of all patched blocks (v1, v2, v2 σ-gated on / off) with freeu.fused's
    defaults and with each entry of SETTINGS, in `rounds` interleaved rounds (median)."""
    kinds, to = block_kinds(patch, inputs, device)
    batch = inputs[0][0].shape[0]
    table = {"defaults": {}, **SETTINGS}
    got = {(name, kind): [] for name in table for kind in kinds}
    for _ in range(rounds):
        for name, over in table.items():
            set_layout(over)
            for kind, q in kinds.items():
                got[(name, kind)].append(block_call_ms(q, inputs, device, repeats=20, to=to)[0] * 1e3)
    set_layout()
    print(f"batch {batch}: GPU µs per UNet call, all patched blocks (median of {rounds} rounds)")
    print("| settings | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name in table:
        print(f"| {name} | " + " | ".join(f"{statistics.median(got[(name, k)]):.1f}" for k in kinds) + " |")
    print()


def sweep_fused(patch, shapes, device, gen, only=""):
    """Kernel launch parameters of the fused route: GPU ms per call, fp16, v2 / filter only / scale only."""
    import torch
    from freeu.patch import FreeUPatch
    inputs = [(torch.randn(h, generator=gen, device=device).half(), torch.randn(p, generator=gen, device=device).half())
              for h, p in shapes]
    mc = min(patch.stages) // 2
    v1 = FreeUPatch(mc, 1.3, 1.4, 0.9, 0.2, version="v1")
    if only == "plane":
        sweep_plane(patch, inputs, shapes, device)
        return
    if only == "settings":
        sweep_settings(patch, inputs, shapes, device)
        return
    if only in ("", "layout"):
        sweep_layout(patch, v1, inputs, shapes, device)
    if only == "map":
        sweep_mean_map(patch, v1, inputs, device)
    if only:
        return
    only_filter = FreeUPatch(mc, 1.0, 1.0, 0.9, 0.2, version="v1")
    only_scale = FreeUPatch(mc, 1.3, 1.4, 1.0, 1.0, version="v1")
    print("| num_warps | tile | v2 ms | v1 ms | filter only ms | v1 scale only ms |")
    print("|---|---|---|---|---|---|")
    for warps in (2, 4, 8):
        for tile in (1024, 2048, 4096):
            set_layout({"num_warps": warps, "tile": tile})
            row = [block_call_ms(p, inputs, device, repeats=10)[0] for p in (patch, v1, only_filter, only_scale)]
            print(f"| {warps} | {tile} | " + " | ".join(f"{v:.3f}" for v in row) + " |")
    set_layout()
    sweep_mean_map(patch, v1, inputs, device)
    print("| block (h / skip channels) | v1 ms | v2 ms |")
    print("|---|---|---|")
    for (h, p), (hs, ps) in zip(inputs, shapes):
        row = [block_call_ms(q, [(h, p)], device, repeats=10)[0] for q in (v1, patch)]
        print(f"| {hs} / {ps[1]} | {row[0]:.4f} | {row[1]:.4f} |")

    def mean_only(h, hsp, to):
        torch.aminmax(h.mean(1).reshape(h.shape[0], -1), dim=1)
        return h, hsp
    print(f"\ntorch mean + aminmax alone (v2's structure map): {block_call_ms(mean_only, inputs, device)[0]:.3f} GPU ms per call\n")
    from torch.profiler import ProfilerActivity, profile
    for label, p in (("v2", patch), ("v1", v1)):
        work = [(h.clone().mul_(1e-3), hsp.clone()) for h, hsp in inputs]
        for h, hsp in work:
            p(h, hsp, {})
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                for h, hsp in work:
                    p(h, hsp, {})
            torch.cuda.synchronize()
        totals = {}
        for ev in prof.key_averages():
            t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
            if t:
                totals[ev.key] = totals.get(ev.key, 0) + t
        print(f"{label} kernels, GPU µs per UNet call: " +
              ", ".join(f"{k[:40]} {v / 10:.1f}" for k, v in sorted(totals.items(), key=lambda kv: -kv[1])[:6]))


def sweep_mean_map(patch, v1, inputs, device):
    """v2's channel-mean map: GPU ms per call of the v2 blocks for the sizes in freeu.fused (channels
    and pixels per chunk program), the module's own first; then the backbone piece per scaling program."""
    import itertools
    import freeu.fused as fused
    names = ("mean_chunk", "sum_block")
    saved = fused.launch_settings()
    defaults = tuple(saved[n] for n in names)
    grid = [defaults] + [c for c in itertools.product((16, 32, 64, 128, 256), (32, 64, 128, 256)) if c != defaults]
    print("| channels per chunk program | pixels per chunk program | v2 ms |")
    print("|---|---|---|")
    best = None
    for combo in grid:
        fused.set_launch_settings(**dict(zip(names, combo)))
        ms = block_call_ms(patch, inputs, device, repeats=10)[0]
        best = min(best or (ms, combo), (ms, combo))
        print(f"| {combo[0]} | {combo[1]} | {ms:.3f} |")
    fused.set_launch_settings(**saved)
    print(f"\nfastest: {best[1]} at {best[0]:.3f} ms (module defaults {defaults})\n")
    default_piece = saved["scale_piece"]
    print("| backbone elements per scaling program | v1 ms | v2 ms |")
    print("|---|---|---|")
    for piece in (1024, 2048, 4096, 8192, 16384):
        fused.set_launch_settings(scale_piece=piece)
        row = [block_call_ms(q, inputs, device, repeats=10)[0] for q in (v1, patch)]
        print(f"| {piece}{' (default)' if piece == default_piece else ''} | {row[0]:.3f} | {row[1]:.3f} |")
    fused.set_launch_settings(**saved)
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny SD1.5-layout UNet and 16x16 latents (a check that runs anywhere)")
    ap.add_argument("--comfyui", help="ComfyUI checkout (default $COMFYUI_PATH)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="default fp16 (fp32 with --tiny)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=None, help="timed samples per variant (default 40, 5 with --tiny)")
    ap.add_argument("--graph-repeats", type=int, default=None,
                    help="CUDA-graph replays per variant (default 3x --repeats: cheap, and the effect is ~0.1 %%)")
    ap.add_argument("--graph-rounds", type=int, default=1,
                    help="capture every variant's graph this many times (fresh addresses each time) and report "
                         "the median of the per-capture medians with their range")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-blocks", action="store_true", help="skip the per-block exactness/timing table")
    ap.add_argument("--size", type=int, default=None, help="latent side (default 128 = 1024 px; 16 with --tiny)")
    ap.add_argument("--variants", help="';'-separated variant names to time (and 'no patch'); default all")
    ap.add_argument("--sweep-only", action="store_true",
                    help="CUDA: only the fused route's launch-parameter sweeps on the block shapes, then exit")
    args = ap.parse_args()

    import torch
    setup_comfy(cpu=not torch.cuda.is_available(), root=args.comfyui)
    import comfy.model_management as mm
    from comfy_extras.nodes_freelunch import FreeU, FreeU_V2
    from freeu.patch import FreeUPatch
    from freeu.window import window_from_sigma

    device = mm.get_torch_device()
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "float16"))
    size = args.size or (16 if args.tiny else 128)
    repeats = args.repeats or (5 if args.tiny else 40)
    if args.tiny:
        config, family, context_dim, adm = random_unet.TINY_SD15_UNET, "sd15", 16, None
    else:
        config, family, context_dim, adm = random_unet.SDXL_UNET, "sdxl", 2048, 2816
    t0 = time.perf_counter()
    patcher = random_unet.build(config, dtype=dtype, device=device, seed=0, family=family)
    unet = patcher.model.diffusion_model
    mc = patcher.model.model_config.unet_config["model_channels"]
    build_s = time.perf_counter() - t0

    b1, b2, s1, s2 = 1.3, 1.4, 0.9, 0.2  # FreeU_V2 defaults = SDXL preset
    on_window, off_window = window_from_sigma(100.0, 0.0), window_from_sigma(0.5, 0.0)

    def ours(version, window=None):
        return [FreeUPatch(mc, b1, b2, s1, s2, version=version, **({"window": window} if window else {}))]

    # name -> (patches, FEWSTEP_FREEU_FUSED): "auto" takes the fused Triton route on CUDA, "off"
    # forces the torch route (what runs where Triton is missing). A bounded window containing the
    # call's σ makes the gate read σ: on the device (fused) or on the host (torch route).
    variants = {
        "no patch": ([], "auto"),
        "ComfyUI FreeU (v1)": ([comfy_node_patch(FreeU, patcher, b1, b2, s1, s2)], "auto"),
        "ComfyUI FreeU_V2": ([comfy_node_patch(FreeU_V2, patcher, b1, b2, s1, s2)], "auto"),
        "FewStep v1, fused": (ours("v1"), "auto"),
        "FewStep v2, fused": (ours("v2"), "auto"),
        "FewStep v2, fused, σ-gated on": (ours("v2", on_window), "auto"),
        "FewStep v2, fused, σ-gated off": (ours("v2", off_window), "auto"),
        "FewStep v2, fused, no PDL": (ours("v2"), "auto", LAYOUTS["no PDL"]),
        "FewStep v1, fused, previous session's settings": (ours("v1"), "auto", SETTINGS["previous session's"]),
        "FewStep v2, fused, previous session's settings": (ours("v2"), "auto", SETTINGS["previous session's"]),
        "FewStep v2, fused, σ-gated on, previous session's settings":
            (ours("v2", on_window), "auto", SETTINGS["previous session's"]),
        "FewStep v1, torch route": (ours("v1"), "off"),
        "FewStep v2, torch route": (ours("v2"), "off"),
        "FewStep v2, torch route, σ-gated on": (ours("v2", on_window), "off"),
        "FewStep v2, torch route, σ-gated off": (ours("v2", off_window), "off"),
    }
    names = list(variants)
    if args.variants:
        keep = [n.strip() for n in args.variants.split(";")]
        unknown = [n for n in keep if n not in variants]
        if unknown:
            ap.error(f"unknown variants {unknown}; known: {names}")
        names = [n for n in names if n == "no patch" or n in keep]


    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    comfy_version = "?"
    try:
        import comfyui_version
        comfy_version = comfyui_version.__version__
    except Exception:
        pass
    print(f"FreeU cost per UNet call: {'tiny SD1.5-layout' if args.tiny else 'SDXL'} UNet "
          f"(model_channels {mc}, random weights, built in {build_s:.1f} s), latents {size}x{size}, {dtype}, "
          f"device {device} ({name}), torch {torch.__version__}, ComfyUI {comfy_version}; "
          f"b1/b2/s1/s2 {b1}/{b2}/{s1}/{s2}; {repeats} interleaved samples per variant, medians.\n")
    rows = []
    gen = torch.Generator(device=device).manual_seed(0)
    if args.sweep_only:
        os.environ.setdefault("FEWSTEP_SWEEP", "1")
        block_tables(patcher, unet, mc, (b1, b2, s1, s2), device, size, context_dim, adm, args.batches[-1])
        return
    for batch in args.batches:
        x = torch.randn(batch, 4, size, size, generator=gen, device=device).to(dtype)
        ctx = torch.randn(batch, 77, context_dim, generator=gen, device=device).to(dtype)
        y = torch.randn(batch, adm, generator=gen, device=device).to(dtype) if adm else None
        ts = torch.full((batch,), 700.0, device=device)
        sigma = torch.full((batch,), 1.0, device=device)  # what ComfyUI's sampler puts in "sigmas"

        def call(name):
            patches, route, *layout = variants[name]
            os.environ["FEWSTEP_FREEU_FUSED"] = route
            set_layout(layout[0] if layout else None)
            to = {"patches": {"output_block_patch": patches} if patches else {}, "sigmas": sigma}
            return unet(x, ts, context=ctx, y=y, transformer_options=to)

        with torch.inference_mode():
            ref = {n: call(n).float() for n in ("no patch", "ComfyUI FreeU_V2", "FewStep v2, fused",
                                                "FewStep v2, torch route", "FewStep v2, fused, σ-gated off",
                                                "FewStep v2, torch route, σ-gated off",
                                                PREVIOUS)}
            checks = {
                "fused v2 vs ComfyUI FreeU_V2 max |diff|":
                    f'{(ref["FewStep v2, fused"] - ref["ComfyUI FreeU_V2"]).abs().max().item():.3e}',
                "torch-route v2 vs ComfyUI FreeU_V2 max |diff|":
                    f'{(ref["FewStep v2, torch route"] - ref["ComfyUI FreeU_V2"]).abs().max().item():.3e}',
                "fused v2 with the previous session's settings vs fused v2 max |diff|":
                    f'{(ref[PREVIOUS] - ref["FewStep v2, fused"]).abs().max().item():.3e}',
                "FreeU_V2's own change max |diff|":
                    f'{(ref["ComfyUI FreeU_V2"] - ref["no patch"]).abs().max().item():.3e}',
                "σ-gated off == no patch (fused / torch route)":
                    f'{torch.equal(ref["FewStep v2, fused, σ-gated off"], ref["no patch"])} / '
                    f'{torch.equal(ref["FewStep v2, torch route, σ-gated off"], ref["no patch"])}',
                "output finite": bool(torch.isfinite(ref["no patch"]).all()),
            }
            del ref
            for _ in range(args.warmup):
                for n in names:
                    call(n)
            samples = {n: [] for n in names}
            for r in range(repeats):
                for n in names[r % len(names):] + names[: r % len(names)]:
                    # Two back-to-back calls per sample: the second starts with the queue already fed.
                    samples[n].append(time_ms(lambda: (call(n), call(n)), device) / 2)
            graphed, rounds = graph_medians(call, names, args.graph_repeats or 3 * repeats, device, args.graph_rounds) \
                if device.type == "cuda" else ({}, {})
            os.environ["FEWSTEP_FREEU_FUSED"] = "auto"
            set_layout()
        med = {n: statistics.median(v) for n, v in samples.items()}
        for n in names:
            g = graphed.get(n)
            spread = None
            if len(rounds.get(n, ())) > 1:  # overhead in each round against that round's no patch
                each = [100 * (a / b - 1) for a, b in zip(rounds[n], rounds["no patch"])]
                spread = (min(each), max(each))
            rows.append((batch, n, med[n], 100 * (med[n] / med["no patch"] - 1),
                         g, None if g is None else 100 * (g / graphed["no patch"] - 1), bool(graphed), spread))
        import freeu.fused
        checks["fused route failed on"] = freeu.fused.failed_devices() or "nothing"
        print(f"batch {batch}: " + "; ".join(f"{k}: {v}" for k, v in checks.items()), file=sys.stderr)
        del x, ctx, y
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if not args.no_blocks:
        block_tables(patcher, unet, mc, (b1, b2, s1, s2), device, size, context_dim, adm, args.batches[-1])
    ranges = args.graph_rounds > 1
    print("| batch | variant | GPU ms / UNet call (CUDA graph) | overhead |"
          + (f" overhead, lowest…highest of {args.graph_rounds} captures |" if ranges else "")
          + " eager ms / UNet call | overhead |")
    print("|---|---|---|---|" + ("---|" if ranges else "") + "---|---|")
    for batch, n, ms, over, g, gover, graphed, spread in rows:
        graph_cols = ("n/a (reads σ on the host)" if graphed else "n/a", "") if g is None else \
            (f"{g:.2f}", "—" if n == "no patch" else f"{gover:+.2f} %")
        span = "" if not ranges else (" — |" if spread is None or n == "no patch"
                                      else f" {spread[0]:+.2f}…{spread[1]:+.2f} % |")
        print(f"| {batch} | {n} | {graph_cols[0]} | {graph_cols[1]} |{span} {ms:.2f} | "
              f"{'—' if n == 'no patch' else f'{over:+.2f} %'} |")


if __name__ == "__main__":
    main()
