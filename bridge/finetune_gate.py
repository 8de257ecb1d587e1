"""A fine-tuned model whose adapters act only while it is sampled on the schedule they were trained
for (the Fine-tune node's `only_on_schedule`): any other sampling (more steps, another schedule,
another node's use of the model) runs the untuned weights exactly.

Why: the trajectory target trains each step's output to correct that step's solver error; the same
correction taken at nearby levels by a 32-step solve is an error there (docs/finetune.md). ComfyUI
passes every model call the sampler's whole schedule (transformer_options["sample_sigmas"]), so an
apply-model wrapper can tell which schedule a call belongs to and switch the adapters, which ComfyUI
applies at each forward as weight wrappers, on for that call only."""
from __future__ import annotations

import uuid

import torch

import comfy.patcher_extension

GATE_KEY = "fewstep_schedule_gate"
GATE_OPTION = "fewstep_lora_gate"  # model_options entry: the gated schedule (part of the schedule cache's key)
RELATIVE_TOLERANCE = 1e-4  # float32 copies of a float64 schedule agree to ~1e-7


class ScheduleGate:
    """Open while the current call's sampling schedule equals `sigmas` (same length, every value
    within RELATIVE_TOLERANCE)."""

    def __init__(self, sigmas):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten().cpu()
        self.open = False

    def matches(self, sample_sigmas) -> bool:
        if sample_sigmas is None:
            return False
        s = torch.as_tensor(sample_sigmas).detach().to("cpu", torch.float64).flatten()
        return s.numel() == self.sigmas.numel() and bool(torch.allclose(s, self.sigmas, rtol=RELATIVE_TOLERANCE, atol=0.0))

    def wrapper(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        self.open = self.matches((transformer_options or {}).get("sample_sigmas"))
        try:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        finally:
            self.open = False


class GatedAdapter:
    """A weight wrapper that applies `adapter` only while `gate` is open."""

    def __init__(self, adapter, gate: ScheduleGate):
        self.adapter, self.gate = adapter, gate

    def __call__(self, weight, *args, **kwargs):
        return self.adapter(weight, *args, **kwargs) if self.gate.open else weight


def gate_to_schedule(model, adapters, sigmas):
    """A clone of `model` (which carries `adapters` as weight wrappers) with those adapters acting only
    on `sigmas`; the clone's model_options name the gated schedule."""
    gate = ScheduleGate(sigmas)
    ours = {id(a) for a in adapters}
    gated = model.clone()
    for key, functions in list(gated.weight_wrapper_patches.items()):
        gated.weight_wrapper_patches[key] = [GatedAdapter(f, gate) if id(f) in ours else f for f in functions]
    # as add_weight_wrapper does: a new id, or ComfyUI keeps the ungated wrappers of a model loaded with the same id
    gated.patches_uuid = uuid.uuid4()
    gated.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, GATE_KEY, gate.wrapper)
    gated.model_options[GATE_OPTION] = [round(float(v), 6) for v in gate.sigmas.tolist()]
    return gated
