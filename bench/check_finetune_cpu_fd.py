"""CPU twin of the fourth round's Phase 2 check (issue 21), on a base saved by the GPU study
(bench/study_finetune_gmm.py --base-dir): how much a LoRA moves the denoiser, per noise level, against the
exact one, and what that does to the FD at 32 Karras steps.

  profile  mean |D_model(x; σ) − D_exact(x; σ)|² / σ² over 256 fixed mixture samples, at 7 σ from 0.03
           to 14.6, for the base, the uniform-σ eps control (3e-4) and Phase 2 (0.5 : 1e-4 : 0.9 : eps,
           cosine) on --sigmas; each model through ComfyUI's sampling path (one Euler step to 0)
  fd       FD at 32 Karras steps (dpmpp_2m, --samples) of the base and of the Phase 2 LoRA (--fd)

  python -m bench.check_finetune_cpu_fd --base FILE [--fd --samples 8192]   # about 3 min; + 25 min with --fd
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from bench import study_finetune_gmm as study
from bench.check_finetune_state import PHASE2, RUN_E_N5, load_base, lora_settings

LEVELS = (0.03, 0.1, 0.25, 0.7, 2.0, 6.0, 14.6)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True)
    p.add_argument("--family", default="gmm8-s0.3")
    p.add_argument("--sigmas", type=float, nargs="+", default=RUN_E_N5)
    p.add_argument("--fd", action="store_true", help="also the FD at 32 steps of the base and the Phase 2 LoRA")
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    import torch
    nodes, pack = study.load(cpu=True)
    fin = importlib.import_module(pack.__name__ + ".bridge.finetune")
    import comfy.sample
    import comfy.samplers
    base, spec, seed = load_base(args.base, args.family, torch.device("cpu"))
    shape = (4, 8, 8)
    cond = [[torch.zeros(1, 1, 16), {}]]
    data = study.mixture_sample(spec, shape, 131072, torch.Generator().manual_seed(seed + 100))
    schedule = torch.tensor(args.sigmas, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    x0 = study.mixture_sample(spec, shape, 256, gen)
    eps = torch.randn(x0.shape, generator=gen)
    exact = study.EXACT.ExactDenoiser(spec)
    euler = comfy.samplers.sampler_object("euler")

    def profile(model):
        out = []
        with torch.no_grad():
            for s in LEVELS:
                xt = x0 + s * eps
                den = comfy.sample.sample_custom(model, xt / s, 1.0, euler, torch.tensor([float(s), 0.0]), cond, cond,
                                                 torch.zeros_like(xt), disable_pbar=True, seed=0)
                ref = exact(xt.double(), torch.full((256,), s, dtype=torch.float64)).float()
                out.append(float((den - ref).pow(2).mean() / s ** 2))
        return out

    def fd32(model):
        ref = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 32)
        return study.scores(study.draw_samples(model, ref, args.samples, shape, cond, 1234), spec, shape)

    t0 = time.perf_counter()
    res = {"base": Path(args.base).name, "levels": list(LEVELS), "profile": {"base": profile(base)}}
    uniform = fin.LoraTrainer(base, lora_settings(fin))
    uniform.train(data, cond, None, sigma_sampler=study.uniform_draw(fin, base, "eps"))
    res["profile"]["uniform eps control"] = profile(uniform.model)
    phase2 = fin.finetune(base, {"samples": data}, cond, schedule, lora_settings(fin, **PHASE2), rounds=1)
    res["profile"]["phase 2"] = profile(phase2.model)
    for name, values in res["profile"].items():
        print(f"{name:20s} " + " ".join(f"{v:.5f}" for v in values), flush=True)
    if args.fd:
        res["fd32"] = {"base": fd32(base), "phase 2": fd32(phase2.model), "samples": args.samples}
        print(json.dumps(res["fd32"]), flush=True)
    res["seconds"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "check_finetune_cpu_fd.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
