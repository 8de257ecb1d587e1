"""FreeU's fused GPU route inside real ComfyUI sampling (SDXL UNet, random fp16 weights, 1024²):
the F-scheduler recipe (8 UniPC steps, FreeU window on for the last 3 calls) through
comfy.sample.sample_custom with the fused route and with the torch route (FEWSTEP_FREEU_FUSED=off),
which calls took the fused kernel, how far the two latents are apart, and the same run under
ComfyUI's TorchCompileModel (graphs compiled per run, recompiles, distance to the eager result).

    python -m bench.check_freeu_gpu          # CUDA machine, ComfyUI importable ($COMFYUI_PATH)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu_env import setup_comfy
from tests.support import random_unet
from tests.support.comfy_inprocess import load_inprocess

CFG = 5.5


def main():
    setup_comfy(cpu=not torch.cuda.is_available())
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-freeu-")), cpu=not torch.cuda.is_available())
    import comfy.model_management as mm
    import comfy.sample
    fused = sys.modules[f"{pack.__name__}.freeu.fused"]

    config = random_unet.SDXL_UNET
    patcher = random_unet.build(config, dtype=torch.float16, family="sdxl")
    pos = random_unet.random_conditioning(config, 1, seed=1)
    neg = random_unet.random_conditioning(config, 1, seed=2)
    mm.load_models_gpu([patcher])
    latent = torch.zeros(1, 4, 128, 128)
    noise = comfy.sample.prepare_noise(latent, 0)
    recipe = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"]
    model, sigmas, sampler, _ = recipe.execute(patcher, "1024 (SDXL)", 8, "unipc_fs")

    launches = []
    real = fused.freeu_block

    def counted(h, hsp, b, s, threshold, version, sig, low, high):
        ok = real(h, hsp, b, s, threshold, version, sig, low, high)
        launches.append((ok, tuple(h.shape)))
        return ok
    fused.freeu_block = counted  # FreeUPatch calls it through the module

    def run(route, m=model):
        os.environ["FEWSTEP_FREEU_FUSED"] = route
        launches.clear()
        t0 = time.perf_counter()
        out = comfy.sample.sample_custom(m, noise, CFG, sampler, sigmas, pos, neg, latent,
                                         disable_pbar=True, seed=0)
        torch.cuda.synchronize()
        return out.float(), time.perf_counter() - t0, list(launches)

    print(f"# FreeU fused route in ComfyUI sampling — {torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    run("auto")  # compile the kernels
    fused_out, fused_s, fused_launches = run("auto")
    torch_out, torch_s, torch_launches = run("off")
    plain, _, _ = run("auto", recipe.execute(patcher, "1024 (SDXL)", 8, "unipc_fs", freeu="off")[0])
    blocks = len(fused_launches)
    print(f"- recipe 8 steps, CFG {CFG}: fused route took {sum(ok for ok, _ in fused_launches)} of {blocks} "
          f"patched block calls (the torch route {len(torch_launches)}); block shapes "
          f"{sorted({s for _, s in fused_launches})}")
    diff = (fused_out - torch_out).abs().max().item()
    effect = (torch_out - plain).abs().max().item()
    print(f"- final latent, fused vs torch route: max |diff| {diff:.3e} (FreeU's own effect on it: {effect:.3e}); "
          f"wall {fused_s:.2f} s vs {torch_s:.2f} s")

    import torch._dynamo.utils as dyn
    from comfy_extras.nodes_torch_compile import TorchCompileModel
    plain_model = recipe.execute(patcher, "1024 (SDXL)", 8, "unipc_fs", freeu="off")[0]
    print("\nTorchCompileModel (inductor); the compiled run against the same run eager (compiling an fp16 UNet "
          "changes roundings, which 8 CFG steps of a random-weight UNet amplify: the no-FreeU row is the yardstick)\n")
    print("| compiled model | run | wall s | new graphs | fused block calls | max |diff| vs eager |")
    print("|---|---|---|---|---|---|")
    for label, m, route, eager, runs in (("recipe, fused FreeU route", model, "auto", fused_out, 2),
                                         ("recipe, torch FreeU route", model, "off", torch_out, 1),
                                         ("recipe without FreeU", plain_model, "auto", plain, 1)):
        torch._dynamo.reset()
        out = TorchCompileModel.execute(m, "inductor")
        compiled = out[0] if isinstance(out, tuple) else out.result[0]
        for i in range(1, runs + 1):
            before = dict(dyn.counters["stats"])
            res, secs, calls = run(route, compiled)
            graphs = dyn.counters["stats"].get("unique_graphs", 0) - before.get("unique_graphs", 0)
            print(f"| {label} | {i} | {secs:.1f} | {graphs} | {sum(ok for ok, _ in calls)} | "
                  f"{(res - eager).abs().max().item():.3e} |")
    print("\nrecompiles counter:", dict(dyn.counters.get("recompiles", {})) or 0)
    print("fused route failed on:", sorted(fused._broken) or "nothing")


if __name__ == "__main__":
    with torch.inference_mode():  # as ComfyUI's executor runs every node
        main()
