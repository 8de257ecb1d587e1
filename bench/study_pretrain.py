"""Pretraining the small UNets of the Phase 2 study (bench/study_finetune_gmm.py) from scratch, and a
speed probe of the ways to run its steps.

The objective is the standard eps loss: timesteps uniform over the model's 1000 discrete levels,
x_t = x0 + σ_t ε, loss ‖ε̂(x_t / √(σ_t² + 1), t) − ε‖² (ComfyUI's EPS input scaling), AdamW, the
learning rate on the trainer's warm-up + cosine schedule (`lr_factor`, samplers/finetune_loss.py).

Two ways to run a step (`mode`):
- "eager": the network through ComfyUI's `apply_model`, as everything else in the study.
- "graph": the same network call captured once with `torch.cuda.make_graphed_callables` (forward and
  backward) and replayed each step; the optimiser (fused AdamW) runs outside the graph. The small UNet
  is launch-bound on a datacentre GPU: its kernels are tiny, so the host's launches set the pace.
`amp="bf16"` runs the network under bfloat16 autocast (the loss and the weights stay float32).
A capture that fails falls back to eager and says why.

Data come from the CPU generator of `seed` in both modes, so a run depends only on its settings and
step count, not on the mode's speed (up to floating-point rounding).

  python -m bench.study_pretrain --probe --out DIR     # steps/s of each mode and batch size (GPU)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

MODES = ("eager", "graph")
AMPS = ("fp32", "bf16")


def sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def eps_module(net, amp):
    """The network's eps prediction for (scaled input, timestep, context), as one module to capture."""
    import torch

    class EpsNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, ctx):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp == "bf16", cache_enabled=False):
                return self.net(x, t, ctx, transformer_options={}).float()

    return EpsNet()


class Stepper:
    """One optimisation step of the eps objective on a batch drawn by `draw(count, generator)`."""

    def __init__(self, model, draw, batch, device, mode="eager", amp="fp32", log=print, capture=None):
        """capture(module, sample_args) -> the module to call each step; torch.cuda.make_graphed_callables
        unless given (tests pass the identity to run the graph mode's arithmetic on CPU)."""
        import torch
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if amp not in AMPS:
            raise ValueError(f"amp must be one of {AMPS}, got {amp!r}")
        self.torch, self.model, self.draw, self.batch, self.device = torch, model, draw, batch, device
        self.net = model.model.diffusion_model
        self.sig_table = model.model.model_sampling.sigmas.to(device)
        self.ctx = torch.zeros(batch, 1, 16, device=device)
        self.amp = amp
        self.mode = "eager"
        self.fallback = None
        if mode == "graph":
            if capture is None and device.type != "cuda":
                self.fallback = "graph mode needs a CUDA device"
            else:
                try:
                    self._capture(capture or torch.cuda.make_graphed_callables)
                    self.mode = "graph"
                except Exception as e:  # the capture is an optimisation: eager gives the same steps
                    self.fallback = f"capture failed: {type(e).__name__}: {e}"[:300]
            if self.fallback:
                log(f"  pretrain: graph mode not taken, eager instead ({self.fallback})")

    def _capture(self, capture):
        torch = self.torch
        self.net.train()
        x = torch.randn(self.batch, *self._shape(), device=self.device)
        t = torch.zeros(self.batch, device=self.device)
        self.graphed = capture(eps_module(self.net, self.amp), (x, t, self.ctx))
        # The graph calls the network directly with the EPS input scaling; a model that ComfyUI scales
        # otherwise (v-prediction, flow) must not be trained on it: the first batch is checked both ways.
        with torch.no_grad():
            xt, sigma, t, _, ctx = self._batch(torch.Generator().manual_seed(1))
            direct = self.graphed(xt / (sigma ** 2 + 1).sqrt(), t.float(), ctx)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
                den = self.model.model.apply_model(xt, sigma.view(-1), c_crossattn=ctx)
            via = (xt - den.float()) / sigma
        if not torch.allclose(direct, via, rtol=2e-2, atol=2e-2 if self.amp == "bf16" else 1e-4):
            raise ValueError(f"the direct call differs from apply_model by {float((direct - via).abs().max()):.3g} "
                             "(not an EPS model?)")

    def _drawn(self, count, gen):
        """(x0, cross-attention context): `draw` returns x0, or (x0, context) for a conditional model
        (bench/check_finetune_cfg.py); without one the context is zeros."""
        drawn = self.draw(count, gen)
        x0, ctx = drawn if isinstance(drawn, tuple) else (drawn, self.ctx[:count])
        return x0.to(self.device), ctx.to(self.device, self.torch.float32)

    def _shape(self):
        x0, _ = self._drawn(1, self.torch.Generator().manual_seed(0))
        return tuple(x0.shape[1:])

    def _batch(self, gen):
        """(x_t, σ_t as (B, 1, 1, 1), timestep index, ε, context) of a fresh batch."""
        torch = self.torch
        x0, ctx = self._drawn(self.batch, gen)
        eps = torch.randn(x0.shape, generator=gen).to(self.device)
        t = torch.randint(0, self.sig_table.numel(), (self.batch,), generator=gen).to(self.device)
        sigma = self.sig_table[t].view(-1, 1, 1, 1)
        return x0 + sigma * eps, sigma, t, eps, ctx

    def loss(self, gen):
        """The batch's loss, with the graph of the backward ready (call .backward())."""
        torch = self.torch
        xt, sigma, t, eps, ctx = self._batch(gen)
        if self.mode == "graph":
            return (self.graphed(xt / (sigma ** 2 + 1).sqrt(), t.float(), ctx) - eps).pow(2).mean()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            den = self.model.model.apply_model(xt, sigma.view(-1), c_crossattn=ctx)
        return ((xt - den.float()) / sigma - eps).pow(2).mean()

    def step(self, opt, gen, rate):
        for group in opt.param_groups:
            group["lr"] = rate
        loss = self.loss(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss


def optimiser(params, lr, device):
    import torch
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.type == "cuda")


def pretrain(model, draw, steps, batch, lr, device, seed, log, lr_factor, ema=0.0, budget_s=None,
             evaluate=None, evals=0, mode="eager", amp="fp32"):
    """Trains model's UNet in place. ema > 0 keeps an exponential moving average of the weights (decay
    ramped as min(ema, (1+i)/(10+i))) and leaves it in the network at the end, as diffusion models are
    usually released. budget_s replaces `steps` with as many steps as fit in that many seconds,
    measured on 30 probe steps (at rate 0, from their own generator, so the run itself depends only on
    the step count it reports). evaluate(step) is called on the weights the run would return, at
    `evals` evenly spaced steps (the convergence curve). Returns a dict: seconds, steps, curve, mode."""
    import torch
    net = model.model.diffusion_model
    net.to(device).train()
    params = [p for p in net.parameters()]
    for p in params:
        p.requires_grad_(True)
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        stepper = Stepper(model, draw, batch, device, mode, amp, log)
        if budget_s:
            probe = optimiser(params, 0.0, device)
            rate = measure(stepper, probe, torch.Generator().manual_seed(seed + 999), 30, device)
            steps = max(100, int((budget_s - (time.perf_counter() - t0)) * rate * (0.92 if evals else 1.0)) // 100 * 100)
            log(f"  pretrain ({stepper.mode}, {amp}): {rate:.1f} steps/s measured, {steps} steps fit in {budget_s:.0f} s")
            del probe
        gen = torch.Generator().manual_seed(seed)
        opt = optimiser(params, lr, device)
        average = [p.detach().clone() for p in params] if ema > 0 else None
        marks = {round(steps * (j + 1) / evals) for j in range(evals)} if evals and evaluate else set()
        curve = []
        for i in range(steps):
            loss = stepper.step(opt, gen, lr * lr_factor(i, steps, "cosine"))
            if average is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(average, [p.detach() for p in params], 1.0 - min(ema, (1 + i) / (10 + i)))
            if (i + 1) % max(1, steps // 5) == 0:
                log(f"  pretrain {i + 1}/{steps} eps-loss {float(loss.detach()):.4f} ({time.perf_counter() - t0:.0f} s)")
            if i + 1 in marks:
                with torch.no_grad():
                    live = [p.detach().clone() for p in params] if average is not None else None
                    if live is not None:
                        torch._foreach_copy_(params, average)
                    net.eval()
                    curve.append([i + 1, evaluate(i + 1)])
                    net.train()
                    if live is not None:
                        torch._foreach_copy_(params, live)
        if average is not None:
            with torch.no_grad():
                torch._foreach_copy_(params, average)
    for p in params:
        p.requires_grad_(False)
    net.eval()
    return {"seconds": time.perf_counter() - t0, "steps": steps, "curve": curve, "mode": stepper.mode,
            "fallback": stepper.fallback}


def measure(stepper, opt, gen, count, device, warmup=5) -> float:
    """Steps per second over `count` steps after `warmup` (the optimiser at rate 0 leaves the weights)."""
    for i in range(warmup + count):
        if i == warmup:
            sync(device)
            t1 = time.perf_counter()
        stepper.step(opt, gen, 0.0)
    sync(device)
    return count / (time.perf_counter() - t1)


def probe(args):
    """Steps/s of each mode, precision and batch size on the development family's UNet (random weights)."""
    import torch
    from bench import study_finetune_gmm as study
    study.load(cpu=args.cpu)
    import comfy.model_management
    device = comfy.model_management.get_torch_device()
    dataset, k, spread, seed = study.FAMILIES["gmm8-s0.3"]
    spec = study.EXACT.MixtureSpec(dataset, k, spread, seed)
    shape = (4, args.size, args.size)
    draw = lambda count, gen: study.mixture_sample(spec, shape, count, gen)
    rows = []
    for batch in args.batches:
        gen = torch.Generator().manual_seed(2)
        t1 = time.perf_counter()
        for _ in range(args.count):  # the host's share of a step: the batch drawn on the CPU and copied over
            x0 = draw(batch, gen).to(device)
            torch.randn(x0.shape, generator=gen).to(device)
            torch.randint(0, 1000, (batch,), generator=gen).to(device)
        sync(device)
        rows.append({"batch": batch, "mode": "data only", "draw_ms": (time.perf_counter() - t1) / args.count * 1e3})
        print(json.dumps(rows[-1]), flush=True)
        for mode in MODES:
            for amp in AMPS:
                model = study.build_unet(args.width, args.res_blocks, device, seed)
                model.model.diffusion_model.to(device)
                params = list(model.model.diffusion_model.parameters())
                for p in params:
                    p.requires_grad_(True)
                with torch.inference_mode(False), torch.enable_grad():
                    stepper = Stepper(model, draw, batch, device, mode, amp, print)
                    rate = measure(stepper, optimiser(params, 0.0, device), torch.Generator().manual_seed(1), args.count, device)
                row = {"batch": batch, "mode": mode, "taken": stepper.mode, "amp": amp, "steps_s": rate,
                       "samples_s": rate * batch, "fallback": stepper.fallback}
                rows.append(row)
                print(json.dumps(row), flush=True)
                del stepper, model
                torch.cuda.empty_cache()
    out = {"device": torch.cuda.get_device_name() if device.type == "cuda" else device.type, "width": args.width, "size": args.size, "rows": rows}
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "pretrain_probe.json").write_text(json.dumps(out, indent=1))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--probe", action="store_true", required=True)
    p.add_argument("--out", default=None)
    p.add_argument("--cpu", action="store_true", help="check the code path on CPU (graph mode falls back)")
    p.add_argument("--batches", nargs="+", type=int, default=[512, 4096])
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--res-blocks", type=int, default=2)
    p.add_argument("--size", type=int, default=8)
    probe(p.parse_args())


if __name__ == "__main__":
    main()
