"""Ground truth for Phase 2 (issue 21): a small UNet (ComfyUI's own UNetModel, SD1.5-type EPS model
with the discrete SD schedule) trained from scratch on a lab Gaussian mixture (samplers/exact.py),
then few-step samples scored against the true mixture for:

  base+karras   the trained model, Karras schedule (reference point)
  P1            Phase 1: 'Optimise Schedule (FewStep)' on the trained model
  P1+uniform    control: P1's schedule, a LoRA trained as TrainLoraNode does (sigma uniform over
                the model's range, equal steps): separates "concentrated on the steps" from "more training"
  P1+2          Phase 1, then Phase 2 (bridge/finetune.py) on P1's schedule
  alt K         Phase 1 + 2 alternated K rounds (Phase 1 re-run on the tuned model between rounds and
                once at the end)

Scores (float64): Fréchet distance between the samples' Gaussian fit and the mixture's own mean and
covariance (mu_bar, s^2 I + Cov_k mu_k), as measured on the samples ('fd') and extrapolated to infinitely
many ('fd_inf', bench/frechet.py: without the finite-sample offset every method shares); share of samples
within the 99 % radius of some component; coverage = share of components that receive at least half their expected count. At N = 4, 5, 6, 8
(the N-step schedule of each method) and at 32 Karras steps (the LoRA must not damage the model).
'floor' is the Fréchet distance of exact mixture samples of the same count.

Families: the first (--dev-family) is the one the Phase 2 settings were picked on; the others are
validation (sharper / broader / image-like mixtures, other seeds), reported separately.

  CPU, development:  python bench/study_finetune_gmm.py --tiny
  GPU:               python bench/study_finetune_gmm.py --out DIR [--sdxl-cost]
Needs COMFYUI_PATH (scripts/host.sh locally, .gpu/ComfyUI on the GPU machine)."""
from __future__ import annotations

import argparse
import importlib
import json
import math
import tempfile
import time
from pathlib import Path

from bench.finetune_diagnostics import summary, trajectory_diagnostics
from bench.finetune_sdxl_cost import sdxl_cost

REPO = Path(__file__).resolve().parents[1]

FAMILIES = {
    # name: (dataset, components, spread, seed)
    "gmm8-s0.3": ("gmm", 8, 0.3, 0),        # development family (settings picked here)
    "gmm8-s0.1": ("gmm", 8, 0.1, 1),        # sharper
    "gmm16-s0.5": ("gmm", 16, 0.5, 2),      # broader, more modes
    "shapes8-s0.1": ("shapes", 8, 0.1, 3),  # image-like means
}


def unet_config(width: int, res_blocks: int) -> dict:
    return {"use_checkpoint": False, "image_size": 32, "in_channels": 4, "out_channels": 4,
            "model_channels": width, "num_res_blocks": [res_blocks, res_blocks], "channel_mult": [1, 2],
            # one entry per res block of each level (input side) and per res block + 1 (output side)
            "transformer_depth": [0] * (2 * res_blocks), "transformer_depth_middle": 0,
            "transformer_depth_output": [0] * (2 * res_blocks + 2),
            "use_spatial_transformer": True, "use_linear_in_transformer": False, "context_dim": 16,
            "num_head_channels": 16, "legacy": False, "adm_in_channels": None,
            "use_temporal_attention": False, "use_temporal_resblock": False}


EXACT = None  # the pack's samplers/exact.py, set once the pack is loaded (ComfyUI owns the name 'samplers')


CANDIDATE_FIELDS = ("spread:learning_rate[:anchor[:anchor_weighting[:lr_schedule[:holdout[:target[:anchor_target"
                    "[:on_policy]]]]]]]")


def parse_candidate(text):
    """CANDIDATE_FIELDS -> TrainSettings overrides (anchor 0, x0, constant, no holdout, data target,
    data anchor, teacher's states only when left out)."""
    spread, lr, *rest = text.split(":")
    if len(rest) > 7:
        raise SystemExit(f"candidate {text!r}: expected {CANDIDATE_FIELDS}")
    anchor, weighting, schedule, holdout, target, anchor_target, on_policy = (
        rest + ["0", "x0", "constant", "0", "data", "data", "0"][len(rest):])
    return {"spread": float(spread), "learning_rate": float(lr), "anchor": float(anchor), "anchor_weighting": weighting,
            "lr_schedule": schedule, "holdout": float(holdout), "target": target, "anchor_target": anchor_target,
            "on_policy": float(on_policy)}


def mixture_sample(spec, shape, count, gen):
    import torch
    mixture_means = EXACT.mixture_means
    mu = mixture_means(spec, shape).float()
    k = torch.randint(0, mu.shape[0], (count,), generator=gen)
    return mu[k] + spec.spread * torch.randn((count,) + tuple(shape), generator=gen)


def mixture_target(spec, shape):
    """(component means (K, d) float64, the mixture's Gaussian target: its own mean and covariance)."""
    import torch
    from bench.frechet import GaussianTarget, mixture_moments
    mu = EXACT.mixture_means(spec, shape).flatten(1)  # float64
    uniform = torch.full((mu.shape[0],), 1.0 / mu.shape[0], dtype=torch.float64)
    return mu, GaussianTarget.of(*mixture_moments(mu, uniform, spec.spread))


def paired_folds(reference, x, spec, shape):
    """bench/frechet.py's fold_ratios of samples x against `reference` drawn from the same noises."""
    from bench.frechet import fold_ratios
    flat = lambda t: t.detach().double().cpu().flatten(1)
    return fold_ratios(flat(reference), flat(x), mixture_target(spec, shape)[1])


def scores(x, spec, shape, radius_q=0.99):
    """(frechet, frechet extrapolated to infinitely many samples, near share, coverage) of samples
    x (n, C, H, W) against the mixture."""
    import torch
    from bench.frechet import frechet, frechet_infinite
    mu, target = mixture_target(spec, shape)
    k, d = mu.shape
    xf = x.detach().double().cpu().flatten(1)
    fd, fd_inf = frechet(xf, target), frechet_infinite(xf, target)
    z = 2.3263478740408408 if radius_q == 0.99 else 1.6448536269514722
    chi2 = d * (1 - 2 / (9 * d) + z * math.sqrt(2 / (9 * d))) ** 3  # Wilson-Hilferty quantile
    dist2 = torch.cdist(xf, mu).pow(2)
    best, which = dist2.min(1)
    near = best <= spec.spread ** 2 * chi2
    counts = torch.bincount(which[near], minlength=k).double()
    coverage = float((counts >= 0.5 * xf.shape[0] / k).double().mean())
    return {"fd": fd, "fd_inf": fd_inf, "near": float(near.double().mean()), "coverage": coverage}


def pick(fam, labels, choose_steps):
    """(ratios, label): the candidate with the lowest median FD ratio to P1 over N in choose_steps
    (on the development family only)."""
    ratios = {}
    for label in labels:
        r = [fam["rows"][str(n)][f"P1+2[{label}]"]["fd"] / fam["rows"][str(n)]["P1"]["fd"]
             for n in choose_steps if f"P1+2[{label}]" in fam["rows"].get(str(n), {})]
        ratios[label] = sorted(r)[len(r) // 2] if r else math.inf
    return ratios, min(ratios, key=ratios.get)


def adopt(fam, label):
    """Makes candidate `label`'s rows the family's P1+2 rows."""
    for row in fam["rows"].values():
        for suffix in ("", "_ref", "_s", "_loss", "_held_out", "_best_step", "_gated", "_ref_gated", "_teacher_s",
                       "_student_s", "_diag", "_folds"):
            if f"P1+2[{label}]" + suffix in row:
                row["P1+2" + suffix] = row[f"P1+2[{label}]" + suffix]


def load(cpu: bool):
    """(nodes, pack): the real ComfyUI in-process with the pack loaded by ComfyUI's own loader; sets
    EXACT, the pack's exact denoiser module, which the scores and the mixture draws use."""
    from bench.gpu_env import setup_comfy
    setup_comfy(cpu=cpu)
    from tests.support.comfy_inprocess import load_inprocess
    nodes, pack = load_inprocess(Path(tempfile.mkdtemp(prefix="fewstep-study-")), cpu=cpu)
    global EXACT
    EXACT = importlib.import_module(pack.__name__ + ".samplers.exact")
    return nodes, pack


def build_unet(width, res_blocks, device, seed):
    """The study's UNet (random weights from `seed`), in the mixture's own latent space: no VAE scaling
    on the way in or out."""
    import torch
    from tests.support import random_unet
    model = random_unet.build(unet_config(width, res_blocks), dtype=torch.float32, device=device, seed=seed, family="sd15")
    model.model.latent_format.scale_factor = 1.0
    return model


def draw_samples(model, sigmas, count, shape, cond, seed, sampler="dpmpp_2m", batch=None, negative=None, cfg=1.0):
    """`count` samples on `sigmas` through ComfyUI's sampling path (CFG 1, or `cfg` with `negative`),
    noise from CPU generator `seed`, in chunks of `batch`."""
    import torch
    import comfy.sample
    import comfy.samplers
    noise = torch.randn((count,) + tuple(shape), generator=torch.Generator().manual_seed(seed))
    sampler = comfy.samplers.sampler_object(sampler)
    out = []
    for i in range(0, count, batch or count):
        n = noise[i:i + (batch or count)]
        out.append(comfy.sample.sample_custom(model, n, float(cfg), sampler, sigmas.float(), cond,
                                              cond if negative is None else negative, torch.zeros_like(n),
                                              disable_pbar=True, seed=seed))
    return torch.cat(out)


class Study:
    def __init__(self, args):
        import torch
        self.torch = torch
        self.args = args
        self.nodes, self.pack = load(cpu=args.cpu)
        self.fin = importlib.import_module(self.pack.__name__ + ".bridge.finetune")
        self.gate = importlib.import_module(self.pack.__name__ + ".bridge.finetune_gate")
        import comfy.model_management
        import comfy.samplers
        self.samplers = comfy.samplers
        self.device = comfy.model_management.get_torch_device()
        self.cond = [[torch.zeros(1, 1, 16), {}]]
        self.shape = (4, args.size, args.size)
        self.t_start = time.perf_counter()
        self.candidates = {}
        for item in args.sweep:
            self.candidates[item] = parse_candidate(item)
        self.chosen = None
        if args.fixed:  # settings picked in an earlier run: every family here validates them unchanged
            self.chosen = parse_candidate(args.fixed)
        self.family_deadline = args.budget_s
        # seeds of everything a method draws (Phase 1's noises, LoRA, teacher, evaluation noises), base aside
        self.method_seed = 10_000 * args.method_seed
        self.results = {"args": vars(args), "device": str(torch.cuda.get_device_name()) if torch.cuda.is_available() else "cpu",
                        "families": {}}
        if self.chosen:
            self.results["chosen"] = {"label": args.fixed, "fixed": True, **self.chosen}

    def log(self, msg):
        print(f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}", flush=True)

    def left(self):
        """Seconds left for the current family (each gets an equal share of --budget-s)."""
        return self.family_deadline - (time.perf_counter() - self.t_start)

    def save(self):
        if self.args.out:
            Path(self.args.out).mkdir(parents=True, exist_ok=True)
            (Path(self.args.out) / "study_finetune_gmm.json").write_text(json.dumps(self.results, indent=1))

    # -- pieces
    def phase1(self, model, steps):
        opt = self.nodes.NODE_CLASS_MAPPINGS["FewStepOptimizeSchedule"]
        out = opt.execute(model, self.cond, self.cond, 1.0, 64, 64, int(steps), self.args.sampler, self.args.mc,
                          self.method_seed, latent={"samples": self.torch.zeros((1,) + self.shape)}, grid=self.args.grid,
                          use_cache=False)
        return out.result[0].double()

    def sample(self, model, sigmas, count, seed=None):
        seed = 1234 + self.args.replicate + self.method_seed if seed is None else seed
        return draw_samples(model, sigmas, count, self.shape, self.cond, seed, self.args.sampler, self.args.sample_batch)

    def karras(self, model, steps):
        ms = model.get_model_object("model_sampling")
        return self.samplers.calculate_sigmas(ms, "karras", steps).double()

    def settings(self, **over):
        a = self.args
        base = dict(steps=a.lora_steps, batch_size=a.lora_batch, learning_rate=a.lora_lr, rank=a.rank,
                    spread=a.spread, estimator=a.estimator, training_dtype="fp32", lora_dtype="fp32",
                    gradient_checkpointing=False, seed=a.replicate + self.method_seed, solver=a.sampler,
                    teacher_steps=a.teacher_steps, trajectories=a.trajectories)
        base.update(over)
        return self.fin.TrainSettings(**base)

    def data_latents(self, spec, count, seed):
        torch = self.torch
        return {"samples": mixture_sample(spec, self.shape, count, torch.Generator().manual_seed(seed))}

    # -- one family
    def family(self, name):
        torch, a = self.torch, self.args
        MixtureSpec = EXACT.MixtureSpec
        dataset, k, spread, seed = FAMILIES[name]
        spec = MixtureSpec(dataset, k, spread, seed)
        fam = {"spec": [dataset, k, spread, seed], "rows": {}}
        self.results["families"][name] = fam
        if a.replicate:  # another draw of everything random (network, data, noise, LoRA); the same mixture
            fam["replicate"] = a.replicate
            seed += 1000 * a.replicate
        if a.method_seed:  # another draw of the methods' randomness on the same base network
            fam["method_seed"] = a.method_seed
        model = build_unet(a.width, a.res_blocks, self.device, seed)
        fam["params"] = sum(p.numel() for p in model.model.diffusion_model.parameters())
        ref_sig = self.karras(model, a.ref_steps)
        self.base_model(name, model, spec, seed, fam,
                        lambda step: scores(self.sample(model, ref_sig, a.samples), spec, self.shape))
        data = self.data_latents(spec, a.train_images, seed + 100 + self.method_seed)
        exact = mixture_sample(spec, self.shape, a.samples, torch.Generator().manual_seed(seed + 7 + self.method_seed))
        fam["floor"] = scores(exact, spec, self.shape)
        fam["base_ref"] = scores(self.sample(model, ref_sig, a.samples), spec, self.shape)
        self.log(f"{name}: floor {fam['floor']}, base @{a.ref_steps} {fam['base_ref']}")

        uni = None
        if not a.no_controls:
            uni = self.controls(name, model, data, ref_sig, spec, fam)
        if a.controls_only:
            self.save()
            return

        dev = self.chosen is None  # the first family picks the Phase 2 settings among --sweep
        candidates = self.candidates if dev else {"chosen": self.chosen}
        if a.no_pick:  # a parallel worker: every family runs the sweep, the merge picks on the first family
            dev = False
        p1_samples = {}
        for n in a.steps:
            if self.left() < a.reserve_s:
                self.log(f"{name}: time budget reached before N={n}")
                fam["cut_at"] = n
                break
            row = {}
            row["base+karras"] = scores(self.sample(model, self.karras(model, n), a.samples), spec, self.shape)
            t0 = time.perf_counter()
            sig1 = self.phase1(model, n)
            row["P1_s"] = time.perf_counter() - t0
            row["P1_sigmas"] = sig1.tolist()
            x1 = p1_samples[n] = self.sample(model, sig1, a.samples)  # every method samples these noises: paired
            row["P1"] = scores(x1, spec, self.shape)
            if uni is not None:
                row["P1+uniform"] = scores(self.sample(uni.model, sig1, a.samples), spec, self.shape)
            # the validated setting with alternation: one run, its round 1 scored as P1+2 on the way
            together = not (dev or a.no_pick) and a.rounds >= 2 and self.left() >= a.reserve_s
            for label, over in candidates.items():
                key = "P1+2" if not (dev or a.no_pick) else f"P1+2[{label}]"
                clock = {"t0": time.perf_counter(), "scoring": 0.0}  # training time excludes round 1's scoring

                def after_round(res, key=key, label=label, clock=clock):
                    t1 = time.perf_counter()
                    if len(res.rounds) == 1:
                        self.score_round_one(res, key, t1 - clock["t0"], model, sig1, ref_sig, spec, row, x1,
                                             f"{name} N={n} {label}")
                        fam["rows"][str(n)] = row
                        self.save()  # a run cut during the alternation keeps round 1
                        clock["scoring"] = time.perf_counter() - t1
                    elif len(res.rounds) == a.rounds:
                        self.score_alternation(res, n, t1 - clock["t0"] - clock["scoring"], ref_sig, spec, row, x1)

                # not together: --rounds 1, or too little time left for the alternation (alternate() declines alike)
                self.fin.finetune(model, data, self.cond, sig1, self.settings(**over), rounds=a.rounds if together else 1,
                                  phase1=self.phase1, after_round=after_round)
            fam["rows"][str(n)] = row
            self.log(f"{name} N={n}: " + ", ".join(f"{k} {v['fd']:.4f}" for k, v in row.items() if isinstance(v, dict) and "fd" in v))
            self.save()
        if dev:
            self.choose(fam)
            adopt(fam, fam["chosen"])
            for n, row in fam["rows"].items():
                if self.left() > a.reserve_s:
                    self.alternate(model, data, torch.tensor(row["P1_sigmas"], dtype=torch.float64), int(n), ref_sig,
                                   spec, row, self.chosen, p1_samples[int(n)])
                self.save()
        # The LoRA clones share the base network: sampling the base again must give the same numbers.
        fam["base_ref_after"] = scores(self.sample(model, ref_sig, a.samples), spec, self.shape)
        self.log(f"{name}: base @{a.ref_steps} before/after the LoRAs: {fam['base_ref']['fd']:.6g} / {fam['base_ref_after']['fd']:.6g}")
        self.save()

    def controls(self, name, model, data, ref_sig, spec, fam):
        """The uniform-sigma LoRAs (TrainLoraNode's draw): x0 loss, and the pretraining's eps loss;
        returns the x0 one (its P1 rows are P1+uniform)."""
        a = self.args
        t0 = time.perf_counter()
        control = dict(lr_schedule=a.control_lr_schedule)
        uni = self.fin.LoraTrainer(model, self.settings(**control))
        uni_losses = self._uniform_train(uni, data)
        fam["uniform_loss"] = [uni_losses[0], uni_losses[-1]]
        fam["uniform_lora_s"] = time.perf_counter() - t0
        fam["uniform_ref"] = scores(self.sample(uni.model, ref_sig, a.samples), spec, self.shape)
        # The same draw with the pretraining's own (eps) weighting: separates "Train LoRA's x0 loss moves
        # the model" from "any further training moves it".
        uni_eps = self.fin.LoraTrainer(model, self.settings(**control))
        fam["uniform_eps_loss"] = self._uniform_train(uni_eps, data, weighting="eps")[-1]
        fam["uniform_eps_ref"] = scores(self.sample(uni_eps.model, ref_sig, a.samples), spec, self.shape)
        self.log(f"{name}: @{a.ref_steps} base {fam['base_ref']['fd']:.4f}, uniform x0 LoRA {fam['uniform_ref']['fd']:.4f}, "
                 f"uniform eps LoRA {fam['uniform_eps_ref']['fd']:.4f}")
        return uni

    def base_model(self, name, model, spec, seed, fam, evaluate):
        """Pretrains the family's UNet, or with --base-dir loads it when an earlier run (another
        session, another machine) saved one for the same family and pretraining settings there."""
        torch, a = self.torch, self.args
        net = model.model.diffusion_model
        path = None
        if a.base_dir:
            steps = "*" if a.pretrain_budget_s else a.pretrain_steps
            pattern = (f"{name}-w{a.width}-r{a.res_blocks}-s{a.size}-p{steps}-b{a.pretrain_batch}-lr{a.pretrain_lr:g}"
                       + (f"-ema{a.pretrain_ema:g}" if a.pretrain_ema else "") + (f"-rep{a.replicate}" if a.replicate else "")
                       + ("" if a.pretrain_amp == "fp32" else f"-{a.pretrain_amp}")
                       + ".pt")
            # with a time budget the step count is known only afterwards: the longest saved run is taken
            found = sorted(Path(a.base_dir).glob(pattern), key=lambda f: int(f.name.split("-p")[1].split("-")[0]))
            if found:
                path = found[-1]
                net.load_state_dict(torch.load(path, map_location=self.device))
                net.eval()
                fam["pretrain_s"], fam["base_loaded"] = 0.0, path.name
                self.log(f"{name}: pretrained UNet loaded from {path}")
                return
        self.log(f"{name}: UNet {fam['params'] / 1e6:.2f} M parameters, pretraining "
                 + (f"for {a.pretrain_budget_s:g} s" if a.pretrain_budget_s else f"{a.pretrain_steps} steps"))
        from bench.study_pretrain import pretrain
        run = pretrain(model, lambda count, gen: mixture_sample(spec, self.shape, count, gen), a.pretrain_steps,
                       a.pretrain_batch, a.pretrain_lr, self.device, seed, self.log, self.fin.lr_factor,
                       ema=a.pretrain_ema, budget_s=a.pretrain_budget_s, evaluate=evaluate, evals=a.pretrain_evals,
                       mode=a.pretrain_mode, amp=a.pretrain_amp)
        fam["pretrain_s"], fam["pretrain_steps"], curve = run["seconds"], run["steps"], run["curve"]
        fam["pretrain_mode"] = run["mode"] + ("" if a.pretrain_amp == "fp32" else f" {a.pretrain_amp}")
        if run["fallback"]:
            fam["pretrain_fallback"] = run["fallback"]
        if curve:
            fam["pretrain_curve"] = curve
            self.log(f"{name}: @{a.ref_steps} during pretraining: " + ", ".join(f"{i}: {c['fd']:.4f}" for i, c in curve))
        if a.base_dir:
            path = Path(a.base_dir) / pattern.replace("-p*-", f"-p{fam['pretrain_steps']}-")
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
            fam["base_saved"] = path.name

    def choose(self, fam):
        fam["sweep_ratios"], fam["chosen"] = pick(fam, self.candidates, self.args.choose_steps)
        self.chosen = self.candidates[fam["chosen"]]
        self.results["chosen"] = {"label": fam["chosen"], **self.chosen}
        self.log(f"settings picked on this family: {fam['chosen']} (median FD ratio to P1: {fam['sweep_ratios']})")

    def alternate(self, model, data, sig1, n, ref_sig, spec, row, over, x1):
        """Phase 1 + 2 alternated (--rounds); x1: Phase 1's samples, for the paired fold ratios."""
        a = self.args
        if a.rounds < 2 or self.left() < a.reserve_s:
            return
        t0 = time.perf_counter()
        alt = self.fin.finetune(model, data, self.cond, sig1, self.settings(**over), rounds=a.rounds, phase1=self.phase1)
        self.score_alternation(alt, n, time.perf_counter() - t0, ref_sig, spec, row, x1)

    def score_alternation(self, alt, n, seconds, ref_sig, spec, row, x1):
        """Scores K rounds of Phase 1 + 2 into row["altK..."] after a last Phase 1 on the tuned model."""
        a = self.args
        t0 = time.perf_counter()
        final = self.phase1(alt.model, n)
        row["alt_s"] = seconds + time.perf_counter() - t0
        row["alt_rounds"] = [{"sigmas": r.sigmas, "loss_first": r.losses[0], "loss_last": r.losses[-1],
                              "best_step": r.best_step} for r in alt.rounds]
        row["alt_sigmas"] = final.tolist()
        xa = self.sample(alt.model, final, a.samples)
        row[f"alt{a.rounds}"], row[f"alt{a.rounds}_folds"] = scores(xa, spec, self.shape), paired_folds(x1, xa, spec, self.shape)
        row[f"alt{a.rounds}_ref"] = scores(self.sample(alt.model, ref_sig, a.samples), spec, self.shape)

    def score_round_one(self, res, key, seconds, model, sig1, ref_sig, spec, row, x1, tag):
        """Scores one round of Phase 2 on P1's schedule into row[key...]; x1: Phase 1's samples (paired)."""
        a = self.args
        row[key + "_s"] = seconds
        if res.rounds[0].teacher_seconds:
            row[key + "_teacher_s"] = res.rounds[0].teacher_seconds
        if res.rounds[0].student_seconds:
            row[key + "_student_s"] = res.rounds[0].student_seconds
        x2 = self.sample(res.model, sig1, a.samples)
        row[key], row[key + "_folds"] = scores(x2, spec, self.shape), paired_folds(x1, x2, spec, self.shape)
        row[key + "_ref"] = scores(self.sample(res.model, ref_sig, a.samples), spec, self.shape)
        if a.gated:  # the LoRA acting only on its own schedule (the node's only_on_schedule)
            gated = self.gate.gate_to_schedule(res.model, res.adapters, sig1)
            row[key + "_gated"] = scores(self.sample(gated, sig1, a.samples), spec, self.shape)
            row[key + "_ref_gated"] = scores(self.sample(gated, ref_sig, a.samples), spec, self.shape)
        head, tail = res.losses[:max(1, len(res.losses) // 10)], res.losses[-max(1, len(res.losses) // 10):]
        row[key + "_loss"] = [sum(head) / len(head), sum(tail) / len(tail)]
        if res.rounds[0].held_out:
            row[key + "_held_out"] = res.rounds[0].held_out
            row[key + "_best_step"] = res.rounds[0].best_step
        if a.diagnose and res.settings.target == "trajectory":
            row[key + "_diag"] = trajectory_diagnostics(
                self.pack.__name__, model, res.model, sig1, self.cond, self.shape, a.diagnose, a.teacher_steps,
                a.sampler, 4321 + a.replicate + self.method_seed, lambda x: scores(x, spec, self.shape))
            self.log(f"{tag}: {summary(row[key + '_diag'])}")

    def _uniform_train(self, trainer, data, weighting="x0"):
        return trainer.train(data["samples"], self.cond, None, sigma_sampler=uniform_draw(self.fin, trainer.model, weighting))


def uniform_draw(fin, model, weighting="x0"):
    """The control's noise levels: TrainLoraNode's (timestep uniform over the model's levels), weight 1
    (its x0 loss) or, with weighting="eps", the pretraining's eps loss ‖D − x0‖²/σ² scaled to mean
    weight 1 over the levels. A sigma_sampler for LoraTrainer.train."""
    return fin.UniformLevels(model.get_model_object("model_sampling").sigmas.double().cpu(), weighting)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU development size (minutes on 2 cores)")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--steps", nargs="+", type=int, default=[4, 5, 6, 8])
    p.add_argument("--ref-steps", type=int, default=32)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--size", type=int, default=8)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--pretrain-batch", type=int, default=512)
    p.add_argument("--pretrain-lr", type=float, default=2e-3)
    p.add_argument("--pretrain-ema", type=float, default=0.0, help="EMA decay of the pretrained weights (0: none)")
    p.add_argument("--pretrain-budget-s", type=float, default=None,
                   help="pretrain for as many steps as fit in this many seconds (replaces --pretrain-steps)")
    p.add_argument("--pretrain-mode", default="eager", choices=["eager", "graph"],
                   help="graph: each pretraining step replayed from a captured CUDA graph (bench/study_pretrain.py)")
    p.add_argument("--pretrain-amp", default="fp32", choices=["fp32", "bf16"], help="bf16: the network under autocast")
    p.add_argument("--pretrain-evals", type=int, default=0,
                   help="score the model at --ref-steps this many times during pretraining (convergence curve)")
    p.add_argument("--replicate", type=int, default=0,
                   help="another independent draw of network, data, noise and LoRA seeds on the same mixtures")
    p.add_argument("--method-seed", type=int, default=0,
                   help="another draw of the methods' seeds (Phase 1, LoRA, teacher, evaluation noises) on the same base")
    p.add_argument("--no-pick", action="store_true",
                   help="every family runs all --sweep candidates and none picks (parallel workers; the merge picks)")
    p.add_argument("--train-images", type=int, default=4096)
    p.add_argument("--lora-steps", type=int, default=200)
    p.add_argument("--lora-batch", type=int, default=256)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--teacher-steps", type=int, default=8, help="trajectory target: teacher steps per step")
    p.add_argument("--trajectories", type=int, default=16384, help="trajectory target: teacher solves per fine-tune")
    p.add_argument("--diagnose", type=int, default=0, metavar="COUNT",
                   help="trajectory target: on COUNT fresh teacher solves, the teacher's own score, the per-step loss "
                        "and the free-running gap to the teacher, untuned and tuned (bench/finetune_diagnostics.py)")
    p.add_argument("--spread", type=float, default=0.5)
    p.add_argument("--estimator", default="importance")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sweep", nargs="+", default=["0.5:1e-3:0", "0.5:1e-3:0.5", "0.5:3e-4:0.5"],
                   help=CANDIDATE_FIELDS + " candidates tried on the first family only")
    p.add_argument("--controls-only", action="store_true", help="pretrain, then only the two uniform-σ LoRA controls")
    p.add_argument("--gated", action="store_true",
                   help="also score each Phase 2 model gated to its schedule (at N and at --ref-steps)")
    p.add_argument("--no-controls", action="store_true",
                   help="skip the uniform-σ LoRA controls (e.g. already measured on the same saved base)")
    p.add_argument("--fixed", default=None,
                   help=CANDIDATE_FIELDS + " picked in an earlier run; no family picks, all validate")
    p.add_argument("--base-dir", default=None,
                   help="pretrained UNets: loaded from here when one for the family and pretraining settings is "
                        "there, else pretrained and saved here (pretrain to convergence in one run, study in the next)")
    p.add_argument("--control-lr-schedule", default="constant", help="learning-rate schedule of the uniform-sigma controls")
    p.add_argument("--choose-steps", nargs="+", type=int, default=[5, 6, 8])
    p.add_argument("--mc", type=int, default=32)
    p.add_argument("--grid", type=int, default=60)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--sample-batch", type=int, default=4096)
    p.add_argument("--budget-s", type=float, default=1e9, help="stop starting new N rows after this")
    p.add_argument("--reserve-s", type=float, default=0.0)
    p.add_argument("--sdxl-cost", action="store_true", help="also measure SDXL 1024² Phase 2 cost (GPU)")
    p.add_argument("--sdxl-only", action="store_true")
    p.add_argument("--sdxl-steps", type=int, default=4)
    p.add_argument("--sdxl-configs", nargs="+", default=None, help="only these SDXL cost rows (default: all)")
    p.add_argument("--table", default=None, help="print markdown tables from a results JSON and exit")
    args = p.parse_args()
    for name in ("replicate", "method_seed"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')}: must be >= 0 (it offsets the seeds), got {getattr(args, name)}")
    if args.table:
        from bench.study_finetune_parallel import table
        print(table(args.table))
        return
    if args.tiny:
        args.cpu = True
        for k, v in dict(families=args.families[:2], steps=[5], choose_steps=[5], width=32, res_blocks=1,
                         pretrain_steps=20, pretrain_batch=32, train_images=64, lora_steps=4, lora_batch=16, mc=4,
                         grid=12, samples=128, sample_batch=128, ref_steps=12, rounds=2, size=4,
                         trajectories=64, teacher_steps=2, diagnose=32, sweep=["0.5:1e-3", "0:1e-3:0.5:eps:cosine:0:trajectory:model"]).items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    log = lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True)
    results = {}
    if args.sdxl_cost or args.sdxl_only:
        results["sdxl"] = sdxl_cost(args, log)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "sdxl_cost.json").write_text(json.dumps(results["sdxl"], indent=1))
        if args.sdxl_only:
            return
    study = Study(args)
    for i, name in enumerate(args.families):
        study.family_deadline = args.budget_s * (i + 1) / len(args.families)
        study.family(name)
    study.save()
    print(json.dumps(study.results, indent=1)[:20000])


if __name__ == "__main__":
    main()
