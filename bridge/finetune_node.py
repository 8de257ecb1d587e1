"""What 'Few-Step Fine-tune (FewStep)' does once its inputs are checked (bridge/finetune.py holds the
training): where its schedule comes from, the alternation's Phase 1 through the optimiser and its
cache, the progress bar, the gate and the report."""
from __future__ import annotations

import dataclasses

import comfy.utils
import folder_paths
import torch

from . import schedule_cache
from .finetune import FinetuneError, check_latents, finetune
from .finetune_gate import gate_to_schedule
from .finetune_report import report


def one_value_each(inputs: dict) -> dict:
    """The node takes its inputs as lists (as ComfyUI's Train LoRA does), so that a list of training
    images (ComfyUI's dataset nodes output lists; VAE Encode then runs once per image) reaches it as
    one training set: `latents` become one LATENT batch, `positive` / `negative` one conditioning each,
    every other input its one value. An input not given (an optional one left out of an API prompt)
    keeps its default."""
    out = {}
    for name, value in inputs.items():
        if name == "latents":
            out[name] = merge_latents(value)
        elif name in ("positive", "negative"):
            out[name] = one_conditioning(value, name)
        elif isinstance(value, list):
            if len(value) != 1:
                raise FinetuneError(f"{name}: expected one value, got a list of {len(value)} (only 'latents' takes a "
                                    f"list: one training set)")
            out[name] = value[0]
        else:
            out[name] = value
    return out


def merge_latents(latents) -> dict:
    """One LATENT batch from a LATENT or a list of them (each a batch of one or more images)."""
    items = latents if isinstance(latents, list) else [latents]
    if not items:
        raise FinetuneError("latents: nothing reached the input (an empty list of training images)")
    if len(items) == 1:
        return items[0]
    samples = [check_latents(item) for item in items]
    sizes = sorted({tuple(x.shape[1:]) for x in samples})
    if len(sizes) > 1:
        raise FinetuneError(f"latents: the training latents differ in size ({', '.join('x'.join(map(str, z)) for z in sizes)}); "
                            f"bring the images to one size before VAE Encode")
    return {"samples": torch.cat([x.to(samples[0]) for x in samples])}


def one_conditioning(conditioning, name="positive"):
    """One CONDITIONING from the list input `name`: a list of one, or of the same conditioning repeated."""
    if not isinstance(conditioning, list) or not conditioning:
        return conditioning  # checked with the other inputs downstream
    if isinstance(conditioning[0], (list, tuple)) and len(conditioning[0]) == 2 and torch.is_tensor(conditioning[0][0]):
        return conditioning  # a CONDITIONING itself (a direct call), not a list of them
    first = conditioning[0]
    for other in conditioning[1:]:
        if not _same_conditioning(first, other):
            raise FinetuneError(f"{name}: one conditioning for every training latent is supported, got {len(conditioning)} "
                                f"different ones (per-image captions are not); encode one prompt for the set")
    return first


def _same_conditioning(a, b) -> bool:
    if a is b:
        return True
    try:
        return len(a) == len(b) and all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    except (TypeError, IndexError, RuntimeError):
        return False


def schedule_for(model, sigmas, steps):
    """(sigmas, sampler the schedule was optimised for or None, where it came from): SIGMAS when
    connected, else the optimiser's record for THIS model (attached by 'Optimise Schedule (FewStep)'
    to its MODEL output, or the newest cached one for this model)."""
    if sigmas is not None:
        return sigmas, None, "SIGMAS input"
    found = schedule_cache.lookup(model.get_model_object("model_sampling"))
    if found is None:
        path, record = schedule_cache.latest_for_model(folder_paths.get_user_directory(), schedule_cache.model_fingerprint(model))
        if record is None:
            raise FinetuneError("sigmas: not connected and no optimised schedule is cached for this model; connect "
                                   "SIGMAS, or run 'Optimise Schedule (FewStep)' on this model (a schedule made for "
                                   "another model is not used)")
        found = (record, path)
    record, path = found
    key = record.get("key", {})
    if key.get("model") != schedule_cache.model_fingerprint(model):
        # e.g. a record registered for another clone sharing this model's model_sampling object
        raise FinetuneError(f"sigmas: the optimised schedule found for this MODEL ({path}) was made for another "
                               f"model (weights, LoRAs or patches differ); connect SIGMAS or re-run 'Optimise "
                               f"Schedule (FewStep)' on this model")
    try:
        values, how = schedule_cache.schedule_from(record, int(steps))
    except ValueError as e:
        raise FinetuneError(f"steps: {e}") from None
    made_at = f", optimised at CFG {key['cfg']:g}" if key.get("cfg") is not None else ""
    return values, key.get("sampler"), f"optimiser record {path} ({how}{made_at})"


def run_node(model, latents, positive, steps, settings, rounds, sigmas, phase1_sampler, phase1_mc_samples, phase1_grid,
             only_on_schedule=False, negative=None):
    """What 'Few-Step Fine-tune (FewStep)' does once its inputs are checked: the schedule (SIGMAS or
    this model's optimiser record), K rounds of Phase 2 with Phase 1 re-run between them through the
    optimiser (and its cache), a progress bar over every training step; with `only_on_schedule` the
    returned model applies the LoRA only when sampled on the last round's schedule. With settings.cfg != 1
    training and the alternation's Phase 1 run at that CFG with `negative`. Returns (result, report)."""
    from . import schedule_opt
    schedule, record_sampler, source = schedule_for(model, sigmas, steps)
    sampler = record_sampler or phase1_sampler
    if settings.target == "trajectory":
        settings = dataclasses.replace(settings, solver=sampler)  # refuses a sampler with no target, by name

    def phase1(tuned, n):
        # at the CFG the model is trained and sampled at (the optimiser refuses an empty negative by name too)
        sig, _, _ = schedule_opt.optimise(tuned, positive, negative if settings.guided else positive, float(settings.cfg),
                                          64, 64, int(n), sampler, phase1_mc_samples, settings.seed, latents, phase1_grid,
                                          0, 0, 8, 1, 0.0, 0.0, True, True, "golden", "mean", 3)
        return sig

    pbar = comfy.utils.ProgressBar(settings.steps * rounds)
    result = finetune(model, latents, positive, schedule, settings, rounds=rounds, phase1=phase1,
                      progress=lambda done, total: pbar.update_absolute(done, total), negative=negative)
    text = f"schedule: {source}\n" + report(result)
    if only_on_schedule:
        last = result.rounds[-1].sigmas
        result.model = gate_to_schedule(result.model, result.adapters, last)
        text += (f"\nthe MODEL output applies the LoRA only when sampled on [{', '.join(f'{v:.4g}' for v in last)}]; "
                 f"any other sampling runs the untuned weights (the LoRA output itself is not gated)")
    return result, text
