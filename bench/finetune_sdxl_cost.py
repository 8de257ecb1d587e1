"""Phase 2's cost on SDXL at 1024² (issue 21; bench/study_finetune_gmm.py --sdxl-cost / --sdxl-only):
time per training step and peak GPU memory of the node's trainer on a random-weight SDXL UNet."""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path


def sdxl_cost(args, log):
    """Per-step time and peak memory of Phase 2 on a random-weight SDXL UNet at 1024² (latent 128²).
    With --cpu: SDXL's block structure at tiny width and a 16² latent (checks the code path only)."""
    import torch
    from bench.study_finetune_gmm import load  # the study imports this module: loaded at call time
    nodes, pack = load(cpu=args.cpu)
    fin = importlib.import_module(pack.__name__ + ".bridge.finetune")
    from tests.support import random_unet
    cuda = torch.cuda.is_available() and not args.cpu
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out = {"device": torch.cuda.get_device_name() if cuda else "cpu"}
    t0 = time.perf_counter()
    if cuda:
        config, model, side, dtype = random_unet.SDXL_UNET, random_unet.sdxl(dtype=torch.bfloat16), 128, "bf16"
    else:
        config, side, dtype = random_unet.TINY_SDXL_UNET, 16, "fp32"
        model = random_unet.build(config, dtype=torch.float32, device=torch.device("cpu"), family="sdxl")
    out["build_s"] = time.perf_counter() - t0
    log(f"SDXL UNet built in {out['build_s']:.1f} s")
    out["unet_params_m"] = sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6
    cond = random_unet.random_conditioning(config)
    sig = torch.tensor([14.61, 4.0, 1.5, 0.6, 0.2, 0.0], dtype=torch.float64)
    # the data target with and without checkpointing; the trajectory target (its teacher's solves are
    # timed apart: TeacherPairs.seconds), alone and with half of a batch of 2 anchored to the untuned
    # model's own output (one more forward pass without gradients per anchor row)
    configs = {"batch1_ckpt1": dict(gradient_checkpointing=True), "batch1_ckpt0": dict(gradient_checkpointing=False),
               "trajectory_batch1_ckpt1": dict(target="trajectory", trajectories=2),
               "trajectory_model_anchor_batch2_ckpt1": dict(target="trajectory", trajectories=2, batch_size=2, anchor=0.5,
                                                            anchor_target="model")}
    configs = {k: v for k, v in configs.items() if not args.sdxl_configs or k in args.sdxl_configs}
    for key, over in configs.items():
        try:
            st = fin.TrainSettings(**{**dict(steps=1, batch_size=1, learning_rate=1e-4, rank=16, training_dtype=dtype,
                                             lora_dtype=dtype, gradient_checkpointing=True, seed=0, teacher_steps=8), **over})
            trainer = fin.LoraTrainer(model, st)
            lat = torch.randn(2, 4, side, side)
            trainer.train(lat, cond, sig, steps=1)  # warm-up (loads the model)
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t1 = time.perf_counter()
            trainer.train(lat, cond, sig, steps=1)
            sync()
            one = time.perf_counter() - t1
            teacher = trainer.teacher.seconds if trainer.teacher is not None else 0.0
            t1 = time.perf_counter()
            trainer.train(lat, cond, sig, steps=args.sdxl_steps + 1)
            sync()
            many = time.perf_counter() - t1
            if trainer.teacher is not None:  # each train call solves its own teacher: timed apart
                many -= trainer.teacher.seconds
                one -= teacher
            step = (many - one) / args.sdxl_steps
            out[key] = {"step_s": step, "call_overhead_s": one - step,
                        "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
                        "lora_params_m": sum(p.numel() for p in trainer.lora.values()) / 1e6}
            if trainer.teacher is not None:
                calls = trainer.teacher.sigmas.numel() * st.teacher_steps + 1  # + the final jump from sigma_min
                out[key].update(teacher_s_per_solve=teacher / st.trajectories, teacher_calls_per_solve_about=calls)
            log(f"SDXL {key}: {out[key]}")
            if args.out:  # kept row by row: a run cut short still reports what it measured
                Path(args.out).mkdir(parents=True, exist_ok=True)
                (Path(args.out) / "sdxl_cost.json").write_text(json.dumps(out, indent=1))
            del trainer
            if cuda:
                torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as e:
            out[key] = {"error": f"out of memory: {e}"[:200]}
    return out
