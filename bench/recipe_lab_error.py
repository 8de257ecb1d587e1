"""How close each F-scheduler recipe gets to the exact probability-flow solution on the lab's exact
denoiser (pure maths, CPU, seconds). Prints a markdown table.

For every published preset: start from the same x_T, run the recipe's solver along its sigmas (AFS
included where the recipe uses it; "no AFS" runs the same sigmas with a model call at sigma_0
instead) and compare the latent at sigma_stop with a reference from the
same x_T by 400 log-spaced UniPC-2 steps to the same sigma_stop. Error = RMS over latents / RMS of
the reference. Also shown: the same run without the corrector and with DPM-Solver++(1S).
The lab data are a 64-component Gaussian mixture on 4x16x16 latents (unit-scale means, spread 0.3)
— a stand-in for a real model, so the numbers rank solvers; they are not image quality.

    python -m bench.recipe_lab_error
"""
import math

import torch

from samplers.dpmpp import sample_dpmpp_1s
from samplers.exact import ExactDenoiser, MixtureSpec
from samplers.recipe import build_recipe, recipe_sigmas
from samplers.schedules import sd_discrete_sigmas
from samplers.unipc import sample_unipc_fs, timestep_midpoint

PRESETS = [("512", 5), ("512", 6), ("512", 8), ("1024", 5), ("1024", 6), ("1024", 8)]


def main(batch=16, seed=0):
    torch.set_grad_enabled(False)
    table = sd_discrete_sigmas(dtype=torch.float64)
    den = ExactDenoiser(MixtureSpec("gmm", 64, 0.3, 1))
    model = lambda x, s, **_: den(x, s)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(batch, 4, 16, 16, generator=gen, dtype=torch.float64)
    print("| preset | sigma_stop | NFE | UniPC (recipe) | UniPC, no corrector | UniPC, no AFS | DPM++ 1S |")
    print("|---|---|---|---|---|---|---|")
    for res, n in PRESETS:
        r = build_recipe(res, n)
        sig = recipe_sigmas(r, table, dtype=torch.float64)
        x0 = x_t * math.sqrt(1 + float(sig[0]) ** 2)  # ComfyUI's noise scaling at sigma_max
        fine = torch.exp(torch.linspace(math.log(float(sig[0])), math.log(float(sig[-1])), 401, dtype=torch.float64))
        ref = sample_unipc_fs(model, x0.clone(), fine, order=2, lower_order_final=False)
        mid = timestep_midpoint(float(sig[0]), float(sig[1]), table) if r.afs else None

        def err(out):
            return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()
        calls = []
        counted = lambda x, s, **k: (calls.append(1), model(x, s))[1]  # noqa: E731
        e_rec = err(sample_unipc_fs(counted, x0.clone(), sig, order=r.order, afs=r.afs, afs_sigma=mid))
        e_noc = err(sample_unipc_fs(model, x0.clone(), sig, order=r.order, corrector=False, afs=r.afs, afs_sigma=mid))
        e_noafs = err(sample_unipc_fs(model, x0.clone(), sig, order=r.order)) if r.afs else e_rec
        e_ddim = err(sample_dpmpp_1s(model, x0.clone(), sig))
        label = f"{res}² {n} steps (order {r.order}{', AFS' if r.afs else ''})"
        print(f"| {label} | {float(sig[-1]):.4f} | {len(calls)} | {e_rec:.4f} | {e_noc:.4f} | {e_noafs:.4f} | {e_ddim:.4f} |")


if __name__ == "__main__":
    main()
