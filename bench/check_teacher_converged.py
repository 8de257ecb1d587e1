"""Is the Phase 2 teacher's fine solve the model's converged ODE solution? (CPU, ~30 min on 2 cores)

The study's teacher (samplers/finetune_trajectory.py: every interval of an N-step schedule cut into
`teacher_steps` steps even in log sigma) against Karras schedules of 32, 64 and 128 steps, on a
pretrained base of the study, the same noises for each, scored against the true mixture
(bench/study_finetune_gmm.py's scores). Converged solves agree with each other within the scores'
sampling noise (bench/check_frechet_spread.py); the N-step solve is printed beside them.

  python -m bench.check_teacher_converged BASE.pt [--family gmm8-s0.1] [--count 4096] [--steps 8]
"""
from __future__ import annotations

import argparse
import importlib
import time

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", help="a base saved by the study's --base-dir (state dict of the UNet)")
    p.add_argument("--family", default="gmm8-s0.1")
    p.add_argument("--count", type=int, default=4096)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--karras", nargs="+", type=int, default=[32, 64, 128])
    a = p.parse_args()
    from bench import study_finetune_gmm as study
    nodes, pack = study.load(cpu=True)
    traj = importlib.import_module(pack.__name__ + ".samplers.finetune_trajectory")
    import comfy.samplers
    dataset, k, spread, seed = study.FAMILIES[a.family]
    spec = study.EXACT.MixtureSpec(dataset, k, spread, seed)
    model = study.build_unet(64, 2, torch.device("cpu"), seed)
    model.model.diffusion_model.load_state_dict(torch.load(a.base, map_location="cpu"))
    cond, shape = [[torch.zeros(1, 1, 16), {}]], (4, 8, 8)
    ms = model.get_model_object("model_sampling")
    karras = lambda n: comfy.samplers.calculate_sigmas(ms, "karras", n).double()
    fine, _ = traj.teacher_sigmas(karras(a.steps), a.teacher_steps, float(ms.sigma_min))
    runs = [(f"karras {a.steps}", karras(a.steps)), (f"teacher grid of karras {a.steps}", fine)]
    runs += [(f"karras {n}", karras(n)) for n in a.karras]
    for label, sig in runs:
        t0 = time.perf_counter()
        x = study.draw_samples(model, sig, a.count, shape, cond, 1234, "dpmpp_2m", 1024)
        s = study.scores(x, spec, shape)
        print(f"{label} ({sig.numel() - 1} calls): " + ", ".join(f"{k} {v:.4f}" for k, v in s.items())
              + f" ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
