"""Reliability matrix, gradients row (issue 25, item 1): a caller with gradients on (a script, another
pack's node, a training loop) gets no autograd graph from any FewStep part, as from ComfyUI's own
samplers; `sampling_with_gradients()` is the explicit switch for callers that want one.

The UNet is a tiny SD1.5-layout UNetModel built by ComfyUI's own classes with random weights whose
parameters require grad, as a loaded checkpoint's do, and every run goes through ComfyUI's
`comfy.sample.sample` / `sample_custom`. A graph is detected where it costs memory: autograd's
saved-tensor hook counts every tensor a graph keeps for backward."""
import contextlib
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4


@contextlib.contextmanager
def counting_saved_tensors():
    """Counts tensors saved for backward (what keeps activations alive) inside the block."""
    count = {"saved": 0}

    def pack(t):
        count["saved"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield count


@pytest.fixture(scope="module")
def env(comfy):
    nodes, pack = comfy
    import comfy.samplers
    unet = random_unet.tiny_sd15(device=torch.device("cpu"), seed=5)
    # weights that require grad, as a trainer's or a script's model has (ComfyUI 0.33 builds them frozen)
    for p in unet.model.diffusion_model.parameters():
        p.requires_grad_(True)
    cond = random_unet.random_conditioning(random_unet.TINY_SD15_UNET, seed=1)
    common = importlib.import_module(f"{pack.__name__}.samplers.common")
    dropdown = [n for n in comfy.samplers.KSampler.SAMPLERS if n.startswith("fewstep_")]
    return nodes, pack, unet, cond, common, dropdown


def _latent(batch=1):
    return torch.zeros(batch, 4, 8, 8)


def _watch(outputs):
    """A ComfyUI sampling callback recording whether each step's denoised estimate carries a graph."""
    def callback(step, x0, x, total):
        outputs.append(x0.grad_fn is not None or x.grad_fn is not None)
    return callback


def dropdown_run(unet, cond, name, cfg=1.0, scheduler="karras"):
    import comfy.sample
    latent = _latent()
    noise = comfy.sample.prepare_noise(latent, 7)
    graphs = []
    with torch.enable_grad(), counting_saved_tensors() as count:
        out = comfy.sample.sample(unet, noise, STEPS, cfg, name, scheduler, cond, cond, latent, seed=7,
                                  callback=_watch(graphs), disable_pbar=True)
    return out, count["saved"], graphs


def custom_run(unet, cond, sampler, sigmas, cfg=1.0):
    import comfy.sample
    latent = _latent()
    noise = comfy.sample.prepare_noise(latent, 7)
    graphs = []
    with torch.enable_grad(), counting_saved_tensors() as count:
        out = comfy.sample.sample_custom(unet, noise, cfg, sampler, sigmas, cond, cond, latent, seed=7,
                                         callback=_watch(graphs), disable_pbar=True)
    return out, count["saved"], graphs


def test_the_detector_sees_a_graph(env):
    """The check itself: the same UNet call with gradients on saves tensors; under no_grad none."""
    _, _, unet, cond, _, _ = env
    net = unet.model.diffusion_model
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), cond[0][0]
    with torch.enable_grad(), counting_saved_tensors() as on:
        assert net(x, t, context=ctx).grad_fn is not None
    with torch.no_grad(), counting_saved_tensors() as off:
        net(x, t, context=ctx)
    assert on["saved"] > 100 and off["saved"] == 0


def test_every_dropdown_sampler_builds_no_graph(env):
    _, _, unet, cond, _, dropdown = env
    assert len(dropdown) == 22  # 14 catalogue entries + 2 UniPC entries + 6 CFG++ entries
    ref, ref_saved, _ = dropdown_run(unet, cond, "dpmpp_2m")  # ComfyUI's own: the behaviour to match
    assert ref.grad_fn is None and ref_saved == 0
    bad = {}
    for name in dropdown:
        out, saved, graphs = dropdown_run(unet, cond, name)
        assert torch.isfinite(out).all(), name
        if out.grad_fn is not None or out.requires_grad or saved or any(graphs):
            bad[name] = saved
    assert not bad, f"samplers that built autograd graphs (tensors saved): {bad}"


def test_cfg_and_fewstep_schedulers_build_no_graph(env):
    import comfy.samplers
    _, _, unet, cond, _, _ = env
    out, saved, _ = dropdown_run(unet, cond, "fewstep_dpmpp_3m", cfg=5.0, scheduler="fewstep_fscheduler_512")
    assert out.grad_fn is None and saved == 0
    ms = unet.get_model_object("model_sampling")
    with torch.enable_grad():
        for name in ("fewstep_timestep_power", "fewstep_fscheduler_512", "fewstep_fscheduler_1024"):
            sig = comfy.samplers.calculate_sigmas(ms, name, 6)
            assert not sig.requires_grad and sig.grad_fn is None, name


def _sampler_node_outputs(nodes, unet):
    """Every SAMPLER-producing FewStep node with the option that selects each solver family."""
    M = nodes.NODE_CLASS_MAPPINGS
    out = {f"dpmpp {s}": M["FewStepSamplerDPMPP"].execute(s, allow_short_schedule=True)[0]
           for s in ("1s", "2s", "2m", "3m")}
    for method in ("tab", "rhoab", "rhork"):
        out[f"deis {method}"] = M["FewStepSamplerDEIS"].execute(method, allow_short_schedule=True)[0]
    out["edm heun"] = M["FewStepSamplerEDM"].execute()[0]
    out["edm churn"] = M["FewStepSamplerEDM"].execute(1.0, 2.0, 0.0, 1000.0, 1.0)[0]
    out["unipc"] = M["FewStepSamplerUniPC"].execute("auto", True, True, False, 1.0)[0]
    out["unipc afs"] = M["FewStepSamplerUniPC"].execute("2", True, True, True, 1.0)[0]
    return out


def test_every_sampler_node_and_schedule_node_builds_no_graph(env):
    nodes, _, unet, cond, _, _ = env
    M = nodes.NODE_CLASS_MAPPINGS
    with torch.enable_grad():
        schedules = {
            "karras": M["FewStepKarrasSigmas"].execute(STEPS, 0.0, 0.0, 7.0, model=unet)[0],
            "timestep power": M["FewStepTimestepPowerSigmas"].execute(unet, STEPS, 1.2, -1, -1, True, "log_sigma")[0],
            "fscheduler": M["FewStepFSchedulerSigmas"].execute(unet, "512x5", 6, 1.2, 5.0, 8, 6, -1, "auto")[0],
        }
    for name, sig in schedules.items():
        assert torch.is_tensor(sig) and not sig.requires_grad and sig.grad_fn is None, name
    bad = {}
    for name, sampler in _sampler_node_outputs(nodes, unet).items():
        out, saved, graphs = custom_run(unet, cond, sampler, schedules["karras"])
        assert torch.isfinite(out).all(), name
        if out.grad_fn is not None or saved or any(graphs):
            bad[name] = saved
    assert not bad, f"SAMPLER nodes that built autograd graphs (tensors saved): {bad}"
    ksa = M["FewStepKSamplerAdvanced"]
    for override in ({}, {"sampler": _sampler_node_outputs(nodes, unet)["deis tab"], "sigmas": schedules["fscheduler"]}):
        with torch.enable_grad(), counting_saved_tensors() as count:
            out = ksa.execute(unet, "enable", 7, STEPS, 1.0, "fewstep_dpmpp_3m", "karras", cond, cond,
                             {"samples": _latent()}, 0, 10000, "disable", **override)[0]["samples"]
        assert out.grad_fn is None and count["saved"] == 0, list(override)


def test_recipe_and_freeu_patch_build_no_graph_and_stay_differentiable_on_request(env):
    """The recipe (F-scheduler SIGMAS + UniPC SAMPLER + FreeU-patched MODEL) under gradients, through
    a FewStep sampler and ComfyUI's own; with the switch on, gradients reach the UNet's weights."""
    nodes, _, unet, cond, common, _ = env
    M = nodes.NODE_CLASS_MAPPINGS
    with torch.enable_grad():
        model, sigmas, sampler, _ = M["FewStepFSchedulerRecipe"].execute(unet, "512 (SD1.5)", 5, "unipc_fs",
                                                                         freeu="on", freeu_start_index=0)
    freeu = M["FewStepFreeU"].execute(unet, "custom", 1.2, 1.3, 0.9, 0.2, "v2", 1, "percent", 0.0, 1.0, None)[0]
    for m in (model, freeu):
        out, saved, graphs = custom_run(m, cond, sampler, sigmas)
        assert out.grad_fn is None and saved == 0 and not any(graphs)
        out, saved, _ = dropdown_run(m, cond, "euler")
        assert out.grad_fn is None and saved == 0
    net = unet.model.diffusion_model
    net.zero_grad(set_to_none=True)
    with common.sampling_with_gradients():
        out, saved, graphs = custom_run(freeu, cond, sampler, sigmas)
    assert out.grad_fn is not None and saved > 0 and all(graphs)
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    net.zero_grad(set_to_none=True)


def test_switch_is_explicit_scoped_and_reaches_every_solver(env):
    """Inside sampling_with_gradients() a dropdown sampler keeps the caller's graph (the trainer's
    case); it ends with the block, and under no_grad the switch builds nothing."""
    _, _, unet, cond, common, dropdown = env
    for name in ("fewstep_dpmpp_2m", "fewstep_unipc_fs"):
        with common.sampling_with_gradients():
            assert common.gradients_requested()
            out, saved, graphs = dropdown_run(unet, cond, name)
            assert out.grad_fn is not None and saved > 0 and all(graphs), name
            with torch.no_grad():
                import comfy.sample
                latent = _latent()
                plain = comfy.sample.sample(unet, comfy.sample.prepare_noise(latent, 7), STEPS, 1.0, name,
                                            "karras", cond, cond, latent, seed=7, disable_pbar=True)
            assert plain.grad_fn is None
        assert not common.gradients_requested()
        # same numbers with and without the switch: it changes bookkeeping, not the maths
        again, saved, _ = dropdown_run(unet, cond, name)
        assert saved == 0 and torch.equal(again, out.detach())


def test_every_public_solver_carries_the_guard(env):
    """A new sample_* function that forgets @solver_entry fails here, not on a user's GPU."""
    _, pack, _, _, common, _ = env
    package = importlib.import_module(f"{pack.__name__}.samplers")
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("sample_") and fn.__module__ == module.__name__:
                found.append(name)
                assert getattr(fn, "fewstep_solver", False), f"{info.name}.{name} lacks @solver_entry"
    assert len(found) >= 13


def test_lab_nodes_and_schedule_optimiser_build_no_graph(env, tmp_path):
    nodes, _, _, _, _, _ = env
    import comfy.samplers
    import folder_paths
    M = nodes.NODE_CLASS_MAPPINGS
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        with torch.enable_grad(), counting_saved_tensors() as count:
            lab = M["FewStepLabModel"].execute("gmm", 4, 0.3, 0, "sd_discrete")[0]
            lab_cond = M["FewStepLabConditioning"].execute()[0]
            latent = {"samples": torch.zeros(2, 4, 8, 8)}
            sampled = nodes.common_ksampler(lab, 1, STEPS, 1.0, "fewstep_dpmpp_2m", "karras", lab_cond, lab_cond,
                                            latent)[0]["samples"]
            image = M["FewStepLabDecode"].execute({"samples": sampled}, 1.0)[0]
            acc = M["FewStepLabAccuracy"].execute(lab, comfy.samplers.sampler_object("fewstep_dpmpp_2m"), "karras",
                                                    STEPS, "steps", 0, 2, 4, "model sample").result
            sig, _, _ = M["FewStepOptimizeSchedule"].execute(lab, lab_cond, lab_cond, 1.0, 64, 64, 3,
                                                                "fewstep_dpmpp_2m", 2, 0, grid=12).result
        tensors = [sampled, image, sig] + [v for v in acc if torch.is_tensor(v)] + \
                  [v["samples"] for v in acc if isinstance(v, dict)]
        assert all(t.grad_fn is None and not t.requires_grad for t in tensors)
        assert count["saved"] == 0
    finally:
        folder_paths.set_user_directory(old)
