"""What 'Few-Step Fine-tune (FewStep)' does once its inputs are checked (bridge/finetune.py holds the
training): where its schedule comes from, the alternation's Phase 1 through the optimiser and its
cache, the progress bar, the gate and the report."""
from __future__ import annotations

import dataclasses

import comfy.utils
import folder_paths

from . import schedule_cache
from .finetune import FinetuneError, finetune
from .finetune_gate import gate_to_schedule
from .finetune_report import report


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
    made_for = record.get("key", {}).get("model")
    if made_for != schedule_cache.model_fingerprint(model):
        # e.g. a record registered for another clone sharing this model's model_sampling object
        raise FinetuneError(f"sigmas: the optimised schedule found for this MODEL ({path}) was made for another "
                               f"model (weights, LoRAs or patches differ); connect SIGMAS or re-run 'Optimise "
                               f"Schedule (FewStep)' on this model")
    try:
        values, how = schedule_cache.schedule_from(record, int(steps))
    except ValueError as e:
        raise FinetuneError(f"steps: {e}") from None
    return values, record.get("key", {}).get("sampler"), f"optimiser record {path} ({how})"


def run_node(model, latents, positive, steps, settings, rounds, sigmas, phase1_sampler, phase1_mc_samples, phase1_grid,
             only_on_schedule=False):
    """What 'Few-Step Fine-tune (FewStep)' does once its inputs are checked: the schedule (SIGMAS or
    this model's optimiser record), K rounds of Phase 2 with Phase 1 re-run between them through the
    optimiser (and its cache), a progress bar over every training step; with `only_on_schedule` the
    returned model applies the LoRA only when sampled on the last round's schedule. Returns (result, report)."""
    from . import schedule_opt
    schedule, record_sampler, source = schedule_for(model, sigmas, steps)
    sampler = record_sampler or phase1_sampler
    if settings.target == "trajectory":
        settings = dataclasses.replace(settings, solver=sampler)  # refuses a sampler with no target, by name

    def phase1(tuned, n):
        sig, _, _ = schedule_opt.optimise(tuned, positive, positive, 1.0, 64, 64, int(n), sampler, phase1_mc_samples,
                                          settings.seed, latents, phase1_grid, 0, 0, 8, 1, 0.0, 0.0, True, True,
                                          "golden", "mean", 3)
        return sig

    pbar = comfy.utils.ProgressBar(settings.steps * rounds)
    result = finetune(model, latents, positive, schedule, settings, rounds=rounds, phase1=phase1,
                      progress=lambda done, total: pbar.update_absolute(done, total))
    text = f"schedule: {source}\n" + report(result)
    if only_on_schedule:
        last = result.rounds[-1].sigmas
        result.model = gate_to_schedule(result.model, result.adapters, last)
        text += (f"\nthe MODEL output applies the LoRA only when sampled on [{', '.join(f'{v:.4g}' for v in last)}]; "
                 f"any other sampling runs the untuned weights (the LoRA output itself is not gated)")
    return result, text
