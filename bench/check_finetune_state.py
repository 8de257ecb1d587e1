"""Does a trained LoRA sample the same whenever it is sampled? On one converged study base (a file
saved by bench/study_finetune_gmm.py --base-dir), in one process, as the study does:

  base → uniform-σ LoRA (Train LoRA's draw) → Phase 2 LoRA → base → uniform → Phase 2 …

each model is scored (FD at 32 Karras steps and at the Phase 2 schedule, bench/study_finetune_gmm.scores)
every time it is sampled, beside the number of weight wrappers ComfyUI has put on one convolution and
whose they are. A model whose scores change between its samplings is sampled with weights that are not
its own (another clone's adapters left on, or its own not put on).

  python -m bench.check_finetune_state --base FILE [--sigmas S0 ... 0] [--out DIR]      # GPU (or --cpu)
"""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from bench import study_finetune_gmm as study

# Phase 2 as picked on the development family in the fourth round's run E (0.5 : 1e-4 : 0.9 : eps, cosine)
PHASE2 = dict(learning_rate=1e-4, anchor=0.9, anchor_weighting="eps")
RUN_E_N5 = [14.614641189575195, 4.796535015106201, 1.2741001844406128, 0.24794989824295044, 0.029167158529162407, 0.0]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="a pretrained UNet state dict (gmm8-s0.3, width 64, 2 res blocks, size 8)")
    p.add_argument("--family", default="gmm8-s0.3")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--samples", type=int, default=8192)
    p.add_argument("--lora-steps", type=int, default=300)
    p.add_argument("--lora-batch", type=int, default=256)
    p.add_argument("--train-images", type=int, default=131072)
    p.add_argument("--sigmas", type=float, nargs="+", default=RUN_E_N5,
                   help="the Phase 2 schedule (default: Phase 1's N=5 schedule for the 1300-step gmm8-s0.3 base of "
                        "the fourth round; another base has its own Phase 1 schedule)")
    args = p.parse_args()
    import torch
    nodes, pack = study.load(cpu=args.cpu)
    fin = importlib.import_module(pack.__name__ + ".bridge.finetune")
    import comfy.model_management
    import comfy.samplers
    device = comfy.model_management.get_torch_device()
    base, spec, seed = load_base(args.base, args.family, device, args.width, args.res_blocks)
    shape = (4, args.size, args.size)
    cond = [[torch.zeros(1, 1, 16), {}]]
    data = study.mixture_sample(spec, shape, args.train_images, torch.Generator().manual_seed(seed + 100))
    ref = comfy.samplers.calculate_sigmas(base.get_model_object("model_sampling"), "karras", 32).double()
    schedule = torch.tensor(args.sigmas, dtype=torch.float64)
    probe_module = base.model.diffusion_model.input_blocks[1][0].in_layers[2]
    owners = {}
    log = []

    def wrappers():
        return [owners.get(id(f), type(f).__name__) for f in getattr(probe_module, "weight_function", [])]

    def sample(label, model, sigmas):
        x = study.draw_samples(model, sigmas, args.samples, shape, cond, 1234)
        entry = {"model": label, "steps": sigmas.numel() - 1, **study.scores(x, spec, shape),
                 "wrappers_after": wrappers()}
        log.append(entry)
        print(json.dumps(entry), flush=True)

    t0 = time.perf_counter()
    sample("base", base, ref)
    uni = fin.LoraTrainer(base, lora_settings(fin, args.lora_steps, args.lora_batch))
    uni.train(data, cond, None, sigma_sampler=study.uniform_draw(fin, base, "eps"))
    owners.update({id(a): "uniform" for a in uni._adapters})
    sample("uniform", uni.model, ref)
    res = fin.finetune(base, {"samples": data}, cond, schedule, lora_settings(fin, args.lora_steps, args.lora_batch,
                       **PHASE2), rounds=1)
    owners.update({id(a): "phase2" for a in fin_adapters(res)})
    sample("phase2", res.model, ref)
    sample("phase2", res.model, schedule)
    sample("base", base, ref)
    sample("uniform", uni.model, ref)
    sample("phase2", res.model, ref)
    sample("base", base, schedule)
    sample("phase2", res.model, schedule)
    out = {"device": str(torch.cuda.get_device_name()) if device.type == "cuda" else "cpu", "base": Path(args.base).name,
           "seconds": time.perf_counter() - t0, "log": log}
    by_model = {}
    for e in log:
        by_model.setdefault((e["model"], e["steps"]), []).append(e["fd"])
    out["consistent"] = {f"{m} @{n}": len(set(v)) == 1 for (m, n), v in by_model.items()}
    print(json.dumps(out["consistent"]))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "check_finetune_state.json").write_text(json.dumps(out, indent=1))


def load_base(path, family, device, width=64, res_blocks=2):
    """(model, mixture spec, family seed): the study's UNet for `family` with a saved base's weights."""
    import torch
    dataset, k, spread, seed = study.FAMILIES[family]
    model = study.build_unet(width, res_blocks, device, seed)
    model.model.diffusion_model.load_state_dict(torch.load(path, map_location=device))
    model.model.diffusion_model.eval()
    return model, study.EXACT.MixtureSpec(dataset, k, spread, seed), seed


def lora_settings(fin, steps=300, batch=256, **over):
    """The fourth round's LoRA recipe: rank 8, float32, cosine rate (3e-4 unless `over` says else)."""
    return fin.TrainSettings(**{**dict(steps=steps, batch_size=batch, learning_rate=3e-4, rank=8, spread=0.5,
                                       training_dtype="fp32", lora_dtype="fp32", lr_schedule="cosine",
                                       gradient_checkpointing=False, seed=0), **over})


def fin_adapters(result):
    """The adapters a fine-tune result's model carries (its ModelPatcher's weight wrappers)."""
    return [f for fs in result.model.weight_wrapper_patches.values() for f in fs]


if __name__ == "__main__":
    main()
