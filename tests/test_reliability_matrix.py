"""Reliability matrix, in-process rows (issue 25, items 4 and 5) in the real ComfyUI host on the CPU:
interrupts stop a run at the next step and leave nothing behind; every sampler at 4-30 steps gives
finite latents on fp16 / bf16 / fp32 UNets, the same latent twice for the same seed, and a batch
member's latent does not depend on the batch size wherever ComfyUI's own samplers have that property.

Models: the exact-denoiser lab (fp32: its config supports no other dtype) and a tiny SD1.5-layout
random UNet built by ComfyUI's own classes in each dtype (CPU matmuls in fp16 and bf16 are real)."""
import importlib
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet

pytestmark = pytest.mark.usefixtures("one_thread")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy
    import comfy.samplers
    M = nodes.NODE_CLASS_MAPPINGS
    catalog = importlib.import_module(f"{pack.__name__}.samplers.catalog")
    dropdowns = pack.bridge.dropdowns
    samplers = [n for n in comfy.samplers.KSampler.SAMPLERS if n.startswith("fewstep_")]
    calls_per_step = {name: catalog.SOLVERS[key].nfe_per_step for name, key in dropdowns.DROPDOWN_SAMPLERS.items()}
    calls_per_step.update({n: 1 for n in samplers if n not in calls_per_step})  # the UniPC entries
    lab = M["FewStepLabModel"].execute("gmm", 6, 0.3, 0, "sd_discrete")[0]
    cond = M["FewStepLabConditioning"].execute()[0]
    return nodes, samplers, calls_per_step, lab, cond


def sample(model, cond, sampler, steps, seed=11, batch=1, scheduler="karras", cfg=1.0, side=8):
    import comfy.sample
    latent = torch.zeros(batch, 4, side, side)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, cond, cond, latent, seed=seed,
                               disable_pbar=True)


# ---------------------------------------------------------------------------------------- interrupts

def test_interrupt_stops_at_the_next_step_and_leaves_nothing_behind(env):
    """ComfyUI's /interrupt sets a flag that its progress hook (main.py) checks at every step's
    callback. The flag is raised here during model call 5, as a POST would arrive mid-step: every
    sampler must stop within that step, and the next run must equal a run never interrupted."""
    nodes, samplers, calls_per_step, lab, cond = env
    import comfy.model_management as mm
    import comfy.utils
    net = lab.model.diffusion_model
    model = lab.clone()
    state = {"flag_at": None}

    def wrapper(apply, args):
        out = apply(args["input"], args["timestep"], **args["c"])
        if net.calls == 5 and state["flag_at"] is None:
            state["flag_at"] = net.calls
            mm.interrupt_current_processing(True)
        return out
    model.set_model_unet_function_wrapper(wrapper)

    def hook(value, total, preview, prompt_id=None, node_id=None):  # what main.py installs
        mm.throw_exception_if_processing_interrupted()

    old = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        latent = {"samples": torch.zeros(2, 4, 8, 8)}
        for name in samplers:
            fresh = nodes.common_ksampler(lab, 3, 12, 1.0, name, "karras", cond, cond, latent)[0]["samples"]
            net.calls, state["flag_at"] = 0, None
            with pytest.raises(mm.InterruptProcessingException):
                nodes.common_ksampler(model, 3, 12, 1.0, name, "karras", cond, cond, latent)
            after = net.calls - state["flag_at"]
            assert after <= calls_per_step[name], f"{name}: {after} model calls after the interrupt"
            assert not mm.processing_interrupted()  # the exception cleared the flag, as ComfyUI expects
            again = nodes.common_ksampler(lab, 3, 12, 1.0, name, "karras", cond, cond, latent)[0]["samples"]
            assert torch.equal(again, fresh), name
    finally:
        comfy.utils.set_progress_bar_global_hook(old)
        mm.interrupt_current_processing(False)


# ---------------------------------------------------------------------------- precision, determinism

@pytest.mark.parametrize("steps", [4, 30])
def test_lab_every_sampler_finite_and_deterministic(env, steps):
    _, samplers, _, lab, cond = env
    for name in samplers:
        a = sample(lab, cond, name, steps)
        b = sample(lab, cond, name, steps)
        assert torch.isfinite(a).all(), (name, steps)
        assert torch.equal(a, b), f"{name} at {steps} steps differs between two runs with the same seed"


@pytest.fixture(scope="module")
def unets(comfy):
    return {k: random_unet.tiny_sd15(dtype=d, device=torch.device("cpu"), seed=2) for k, d in DTYPES.items()}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_random_unet_every_sampler_every_dtype(env, unets, dtype):
    """fp16 / bf16 / fp32 weights (what --force-fp16 / --bf16-unet / --fp32-unet select), 4 and 30
    steps, CFG 5: finite, and the same seed twice is bitwise the same latent (checked at 4 steps)."""
    _, samplers, _, _, _ = env
    unet = unets[dtype]
    assert unet.model.diffusion_model.dtype == DTYPES[dtype] and unet.model_dtype() == DTYPES[dtype]
    cond = random_unet.random_conditioning(random_unet.TINY_SD15_UNET, seed=1)
    for name in samplers:
        for steps in (4, 30):
            out = sample(unet, cond, name, steps, cfg=5.0)
            assert torch.isfinite(out).all(), (name, dtype, steps)
            if steps == 4:
                assert torch.equal(out, sample(unet, cond, name, steps, cfg=5.0)), (name, dtype)


def _batch_deviation(model, cond, name, steps=8):
    """Largest difference of members 0 and 2 of a batch of 3 from the same members run alone (the
    noise comes from ComfyUI's batch_index path, so each member's start noise is its own)."""
    import comfy.sample
    latent = torch.zeros(3, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 5)
    full = comfy.sample.sample(model, noise, steps, 1.0, name, "karras", cond, cond, latent, seed=5,
                               disable_pbar=True)
    worst = 0.0
    for k in (0, 2):
        one = comfy.sample.sample(model, noise[k:k + 1], steps, 1.0, name, "karras", cond, cond, latent[k:k + 1],
                                  seed=5, disable_pbar=True)
        if name == "fewstep_edm_stochastic":
            # its churn noise is seeded per member index (samplers/noise.py): alone, member k is member 0
            continue
        worst = max(worst, float((one[0] - full[k]).abs().max()))
    return worst


def test_batch_size_does_not_change_a_member_where_comfyui_has_that_property(env, unets):
    """Lab: ComfyUI's own euler / dpmpp_2m give each member bitwise the same latent alone and in a
    batch, so every FewStep sampler must too. Random UNet: ComfyUI's own differ by float rounding
    (batched matmuls), so FewStep's may differ by no more than a small multiple of that."""
    _, samplers, _, lab, lab_cond = env
    theirs = max(_batch_deviation(lab, lab_cond, n) for n in ("euler", "dpmpp_2m"))
    assert theirs == 0.0
    bad = {n: d for n in samplers if (d := _batch_deviation(lab, lab_cond, n)) != 0.0}
    assert not bad, f"batch size changes a member's latent on the lab: {bad}"
    unet = unets["fp32"]
    cond = random_unet.random_conditioning(random_unet.TINY_SD15_UNET, seed=1)
    theirs = max(_batch_deviation(unet, cond, n) for n in ("euler", "dpmpp_2m"))
    ours = {n: _batch_deviation(unet, cond, n) for n in samplers}
    assert max(ours.values()) <= max(4 * theirs, 1e-5), (theirs, ours)


def test_stochastic_sampler_members_keep_their_noise_across_batch_sizes(env):
    """The churn noise of fewstep_edm_stochastic is per member: member 0 of a batch of 3 equals the
    same start noise run alone (ComfyUI's own ancestral samplers draw one batch tensor instead)."""
    import comfy.sample
    _, _, _, lab, cond = env
    latent = torch.zeros(3, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 5)
    full = comfy.sample.sample(lab, noise, 8, 1.0, "fewstep_edm_stochastic", "karras", cond, cond, latent, seed=5,
                               disable_pbar=True)
    one = comfy.sample.sample(lab, noise[:1], 8, 1.0, "fewstep_edm_stochastic", "karras", cond, cond, latent[:1],
                              seed=5, disable_pbar=True)
    assert torch.equal(one[0], full[0])
