"""Phase 2's trajectory target at CFG > 1 against the conditional (CFG 1) one (issue 21), on CPU
ground truth.

A small class-conditional UNet (ComfyUI's UNetModel with cross-attention, about 1 M parameters) is
pretrained from scratch on a lab Gaussian mixture whose components are split into CLASSES classes
(component k belongs to class k mod CLASSES). Class c's prompt is a fixed random token; the empty
prompt (zeros) replaces it on DROP of the rows, so one network is both the conditional and the
unconditional denoiser, as CFG needs. The prompt is class 0, the negative the empty prompt.

Ground truth for guided sampling is the untuned model's own guided ODE: ComfyUI's dpmpp_2m at CFG w
on a fine grid (--ref-per-step steps per step of the schedule, 4x the teacher's) from the same noises.
On each cell (family, CFG w, N, method seed), the schedule is Phase 1 at CFG w on the untuned model
and three models are sampled on it at CFG w, at equal model calls:

  untuned    the pretrained model
  lora@1     a trajectory LoRA trained at CFG 1, positive only (the fine-tune before its cfg input)
  lora@w     a trajectory LoRA trained at CFG w with the negative (cfg = w)

Both LoRAs use the study's validated setting (bench/study_finetune_gmm.py --fixed
0:1e-3:0.5:eps:cosine:0:trajectory:model) at the sizes below, fixed before any cell was run; the
first family and CFG are the development cell, the others validate them unchanged.

Scores of each model's N-step samples against the reference (same noises):
  gap       |x - ref|^2 / dim per sample (paired): its mean and its median. The mean is dominated by
            the few samples that end at another component than their reference (a flip near the
            boundary between two modes costs the distance between them), so the median is the
            headline and `flips` is reported beside it
  flips     share of samples whose nearest mixture component is not their reference's
  fd        Fréchet distance between the samples' Gaussian fit and the reference's
  in_class  share of samples nearest to a component of the prompted class
and `check`: the same scores at --check-steps Karras steps with the LoRA applied everywhere
(ungated), beside the untuned model's there: what the LoRA does to many-step sampling without
only_on_schedule (with it, the gated model is the untuned one there, bit for bit:
tests/test_finetune_comfy.py).

  eval "$(bash scripts/host.sh)"
  OMP_NUM_THREADS=1 "$FEWSTEP_PYTHON" -m bench.check_finetune_cfg --out DIR --families gmm8-s0.3 --cfgs 3 6 \\
      --steps 5 6 8 --method-seeds 0 1 --base-dir BASES            # about 5 min a cell on one core
  "$FEWSTEP_PYTHON" -m bench.check_finetune_cfg --table DIR/check_finetune_cfg.json [MORE.json ...]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from bench import study_finetune_gmm as study

CLASSES = 2
DROP = 0.2  # share of pretraining rows with the empty prompt (classifier-free guidance training)
FIXED = "0:1e-3:0.5:eps:cosine:0:trajectory:model"  # the GPU study's validated Phase 2 setting


def conditional_config(width: int) -> dict:
    """The study's UNet with cross-attention at its second level and in the middle block."""
    config = study.unet_config(width, 1)
    config.update(transformer_depth=[0, 1], transformer_depth_middle=1, transformer_depth_output=[0, 0, 1, 1])
    return config


def prompt_tokens(seed: int = 0):
    """(CLASSES, 1, 16) fixed random prompt tokens; the empty prompt is zeros."""
    import torch
    return torch.randn((CLASSES, 1, 16), generator=torch.Generator().manual_seed(seed))


def conditioning(token):
    return [[token[None].float(), {}]]


def class_draw(spec, shape, tokens, drop=DROP):
    """draw(count, generator) -> (x0, context) for bench/study_pretrain.py: mixture samples with their
    class's prompt, the empty prompt on `drop` of the rows."""
    import torch
    mu = study.EXACT.mixture_means(spec, shape).float()

    def draw(count, gen):
        k = torch.randint(0, mu.shape[0], (count,), generator=gen)
        x0 = mu[k] + spec.spread * torch.randn((count,) + tuple(shape), generator=gen)
        ctx = tokens[k % CLASSES].clone()
        ctx[torch.rand(count, generator=gen) < drop] = 0.0
        return x0, ctx
    return draw


def class_samples(spec, shape, cls, count, gen):
    """Mixture samples of class `cls` alone (the prompt's training images)."""
    import torch
    mu = study.EXACT.mixture_means(spec, shape).float()
    members = torch.arange(mu.shape[0])[torch.arange(mu.shape[0]) % CLASSES == cls]
    k = members[torch.randint(0, members.numel(), (count,), generator=gen)]
    return mu[k] + spec.spread * torch.randn((count,) + tuple(shape), generator=gen)


def scores(x, ref, spec, shape, cls):
    """gap (mean and median), flips, fd and in_class of samples `x` against the reference `ref` drawn
    from the same noises."""
    import torch
    from bench.frechet import GaussianTarget, frechet
    xf, rf = x.double().flatten(1), ref.double().flatten(1)
    gap = (xf - rf).pow(2).mean(1)
    mu = study.EXACT.mixture_means(spec, shape).flatten(1)
    nearest, ref_nearest = torch.cdist(xf, mu).argmin(1), torch.cdist(rf, mu).argmin(1)
    target = GaussianTarget.of(rf.mean(0), torch.cov(rf.T))
    return {"gap": float(gap.mean()), "gap_median": float(gap.median()), "fd": frechet(xf, target),
            "flips": float((nearest != ref_nearest).double().mean()),
            "in_class": float((nearest % CLASSES == cls).double().mean())}


class Check:
    def __init__(self, args):
        import importlib

        import torch
        self.torch, self.args = torch, args
        self.nodes, self.pack = study.load(cpu=True)
        self.fin = importlib.import_module(self.pack.__name__ + ".bridge.finetune")
        self.traj = importlib.import_module(self.pack.__name__ + ".samplers.finetune_trajectory")
        import comfy.samplers
        self.comfy_samplers = comfy.samplers
        self.shape = (4, args.size, args.size)
        self.tokens = prompt_tokens()
        self.positive = conditioning(self.tokens[args.prompt_class])
        self.negative = conditioning(torch.zeros(1, 16))
        self.t0 = time.perf_counter()
        self.results = {"args": vars(args), "setting": FIXED, "cells": []}

    def log(self, msg):
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def save(self):
        if self.args.out:
            Path(self.args.out).mkdir(parents=True, exist_ok=True)
            (Path(self.args.out) / "check_finetune_cfg.json").write_text(json.dumps(self.results, indent=1))

    def base(self, name, spec, seed):
        """The family's pretrained conditional UNet, loaded from --base-dir when saved there."""
        from bench.study_pretrain import pretrain
        torch, a = self.torch, self.args
        from tests.support import random_unet
        model = random_unet.build(conditional_config(a.width), dtype=torch.float32, device=torch.device("cpu"), seed=seed)
        model.model.latent_format.scale_factor = 1.0  # the mixture's own latent space, as in the study
        net = model.model.diffusion_model
        path = Path(a.base_dir) / f"cfg-{name}-w{a.width}-s{a.size}-p{a.pretrain_steps}-b{a.pretrain_batch}.pt" \
            if a.base_dir else None
        if path is not None and path.exists():
            net.load_state_dict(torch.load(path))
            net.eval()
            self.log(f"{name}: base loaded from {path}")
            return model
        run = pretrain(model, class_draw(spec, self.shape, self.tokens), a.pretrain_steps, a.pretrain_batch, 2e-3,
                       torch.device("cpu"), seed, self.log, self.fin.lr_factor, ema=0.999)
        self.log(f"{name}: pretrained {run['steps']} steps in {run['seconds']:.0f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
        return model

    def phase1(self, model, cfg, n, seed):
        opt = self.nodes.NODE_CLASS_MAPPINGS["FewStepOptimizeSchedule"]
        out = opt.execute(model, self.positive, self.negative, float(cfg), 64, 64, int(n), "dpmpp_2m", self.args.mc, seed,
                          latent={"samples": self.torch.zeros((1,) + self.shape)}, grid=self.args.grid, use_cache=False)
        return out.result[0].double()

    def lora(self, model, data, sig, cfg, seed):
        a = self.args
        over = study.parse_candidate(FIXED)
        settings = self.fin.TrainSettings(
            steps=a.lora_steps, batch_size=a.lora_batch, learning_rate=over["learning_rate"], rank=8,
            spread=over["spread"], anchor=over["anchor"], anchor_weighting=over["anchor_weighting"],
            lr_schedule=over["lr_schedule"], target=over["target"], anchor_target=over["anchor_target"],
            training_dtype="fp32", lora_dtype="fp32", gradient_checkpointing=False, seed=seed, solver="dpmpp_2m",
            teacher_steps=a.teacher_steps, trajectories=a.trajectories, cfg=float(cfg))
        t0 = time.perf_counter()
        res = self.fin.finetune(model, {"samples": data}, self.positive, sig, settings,
                                negative=self.negative if settings.guided else None)
        return res.model, time.perf_counter() - t0

    def cell(self, name, spec, model, cfg, n, method_seed):
        torch, a = self.torch, self.args
        seed = 10_000 * method_seed
        row = {"family": name, "cfg": cfg, "steps": n, "method_seed": method_seed}
        sig = self.phase1(model, cfg, n, seed)
        row["sigmas"] = sig.tolist()
        fine, _ = self.traj.teacher_sigmas(sig, a.ref_per_step, float(model.get_model_object("model_sampling").sigma_min))
        # every model samples the same noises (the study's draw from seed 4321 + seed): paired with the reference
        guided = lambda m, sigmas: study.draw_samples(m, sigmas, a.samples, self.shape, self.positive, 4321 + seed,
                                                      negative=self.negative, cfg=cfg)
        ref = guided(model, fine)
        karras = self.comfy_samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", a.check_steps)
        data = class_samples(spec, self.shape, a.prompt_class, a.train_images, torch.Generator().manual_seed(100 + seed))
        models = {"untuned": model}
        for label, train_cfg in (("lora@1", 1.0), ("lora@w", cfg)):
            models[label], row[label + "_s"] = self.lora(model, data, sig, train_cfg, seed)
        for label, m in models.items():
            row[label] = scores(guided(m, sig), ref, spec, self.shape, a.prompt_class)
            row[label]["check"] = scores(guided(m, karras), ref, spec, self.shape, a.prompt_class)
        row["reference_in_class"] = scores(ref, ref, spec, self.shape, a.prompt_class)["in_class"]
        self.log(f"{name} cfg {cfg:g} N={n} seed {method_seed}: " + ", ".join(
            f"{k} median gap {row[k]['gap_median']:.4g} flips {row[k]['flips']:.3f} fd {row[k]['fd']:.4g}" for k in models))
        return row

    def run(self):
        a = self.args
        for name in a.families:
            dataset, k, spread, seed = study.FAMILIES[name]
            spec = study.EXACT.MixtureSpec(dataset, k, spread, seed)
            model = self.base(name, spec, seed)
            for method_seed in a.method_seeds:
                for cfg in a.cfgs:
                    for n in a.steps:
                        self.results["cells"].append(self.cell(name, spec, model, cfg, n, method_seed))
                        self.save()


def table(*paths) -> str:
    """Markdown: per cell, the untuned model's median gap, flips and FD, each LoRA's median gap and FD
    as ratios to the untuned model's (flips as shares), and the FD at --check-steps of the untuned
    model and of each LoRA applied everywhere; then medians and ranges over the cells."""
    cells = [c for path in paths for c in json.loads(Path(path).read_text())["cells"]]
    lines = ["| family | CFG | N | seed | untuned: median gap / flips / FD | lora@1: gap / flips / FD | "
             "lora@w: gap / flips / FD | FD at 32 steps, ungated: untuned / lora@1 / lora@w |",
             "|---|---|---|---|---|---|---|---|"]
    ratios = {k: {"gap": [], "fd": []} for k in ("lora@1", "lora@w")}
    for c in cells:
        u = c["untuned"]
        parts = []
        for k, r in ratios.items():
            r["gap"].append(c[k]["gap_median"] / u["gap_median"])
            r["fd"].append(c[k]["fd"] / u["fd"])
            parts.append(f"{r['gap'][-1]:.3f} / {c[k]['flips']:.3f} / {r['fd'][-1]:.3f}")
        lines.append(f"| {c['family']} | {c['cfg']:g} | {c['steps']} | {c['method_seed']} | {u['gap_median']:.3g} / "
                     f"{u['flips']:.3f} / {u['fd']:.3g} | {parts[0]} | {parts[1]} | "
                     + " / ".join(f"{c[k]['check']['fd']:.2g}" for k in ("untuned", "lora@1", "lora@w")) + " |")
    for k, r in ratios.items():
        if r["gap"]:
            lines.append("\n" + f"{k} over {len(r['gap'])} cells, ratio to untuned (median, range): " + "; ".join(
                f"{m} {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" for m, v in r.items()))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None)
    p.add_argument("--table", nargs="+", default=None, help="print the markdown table of results JSONs and exit")
    p.add_argument("--families", nargs="+", default=["gmm8-s0.3"], choices=list(study.FAMILIES))
    p.add_argument("--cfgs", nargs="+", type=float, default=[3.0])
    p.add_argument("--steps", nargs="+", type=int, default=[6])
    p.add_argument("--method-seeds", nargs="+", type=int, default=[0])
    p.add_argument("--prompt-class", type=int, default=0)
    p.add_argument("--base-dir", default=None, help="pretrained conditional UNets are saved and loaded here")
    p.add_argument("--size", type=int, default=4)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--pretrain-batch", type=int, default=256)
    p.add_argument("--lora-steps", type=int, default=400)
    p.add_argument("--lora-batch", type=int, default=256)
    p.add_argument("--trajectories", type=int, default=4096)
    p.add_argument("--teacher-steps", type=int, default=8)
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--ref-per-step", type=int, default=32)
    p.add_argument("--check-steps", type=int, default=32)
    p.add_argument("--samples", type=int, default=2048)
    p.add_argument("--mc", type=int, default=32)
    p.add_argument("--grid", type=int, default=60)
    p.add_argument("--tiny", action="store_true", help="CPU test size (seconds)")
    args = p.parse_args()
    if args.table:
        print(table(*args.table))
        return
    for name in ("cfgs",):
        if any(not (math.isfinite(v) and v > 1.0) for v in getattr(args, name)):
            p.error(f"--cfgs: each must be > 1 (the comparison is with the CFG 1 LoRA), got {args.cfgs}")
    if any(v < 0 for v in args.method_seeds):
        p.error(f"--method-seeds: must be >= 0 (they offset the seeds), got {args.method_seeds}")
    if not 0 <= args.prompt_class < CLASSES:
        p.error(f"--prompt-class: must be in [0, {CLASSES - 1}], got {args.prompt_class}")
    if args.tiny:
        for k, v in dict(pretrain_steps=20, pretrain_batch=32, lora_steps=3, lora_batch=16, trajectories=32,
                         teacher_steps=2, train_images=64, ref_per_step=4, check_steps=8, samples=64, mc=4,
                         grid=12).items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    check = Check(args)
    check.run()
    check.save()
    if args.out:
        print(table(Path(args.out) / "check_finetune_cfg.json"))


if __name__ == "__main__":
    main()
