"""Launch-free UNet on a CUDA GPU (skipped without one): replays equal eager calls on an SDXL UNet with
random fp16 weights, a LoRA-like weight change drops the graphs, a lowvram load runs eagerly, FewStep
FreeU's σ window switches at the right calls inside one graph, ComfyUI's FreeU_V2 and a ControlNet-style
input work or fall back cleanly. Run with FEWSTEP_TEST_DEVICE=gpu (ComfyUI then picks the GPU)."""
import logging
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or os.environ.get("FEWSTEP_TEST_DEVICE", "cpu") == "cpu",
    reason="needs a CUDA GPU and FEWSTEP_TEST_DEVICE=gpu")
LOGGER = "FewStep.launch_free"
SIDE = 128  # 1024² latents


def pack_module(pack, name):
    return sys.modules[f"{pack.__name__}.{name}"]


@pytest.fixture(scope="module")
def sdxl(comfy):
    import comfy.model_management as mm
    patcher = random_unet.sdxl(dtype=torch.float16)
    mm.load_models_gpu([patcher])
    return patcher


@pytest.fixture
def bridge(comfy):
    return pack_module(comfy[1], "bridge.cuda_graph")


def conds(seed):
    return random_unet.random_conditioning(random_unet.SDXL_UNET, 1, seed=seed)


def launch_free(nodes, model, max_graphs=8):
    out = nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraph"].execute(model, max_graphs, True)
    return out.result[0]


def ksampler(nodes, model, cfg, steps=4, seed=0):
    latent = {"samples": torch.zeros(1, 4, SIDE, SIDE)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, cfg, "dpmpp_2m", "karras", conds(1), conds(2),
                                     latent)[0]["samples"]


def call(model, x, sigma, ctx, y, control=None, **options):
    import comfy.patcher_extension as pe
    opts = pe.copy_nested_dicts(model.model_options.get("transformer_options", {}))
    pe.merge_nested_dicts(opts.setdefault("wrappers", {}), model.wrappers, copy_dict1=False)
    opts.update(options)
    opts["sigmas"] = sigma
    with torch.inference_mode():
        return model.model.apply_model(x, sigma.repeat(x.shape[0]), c_crossattn=ctx, y=y, control=control,
                                       transformer_options=opts)


def inputs(batch, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(batch, 4, SIDE, SIDE, device="cuda", generator=gen) * 3
    ctx = torch.randn(batch, 77, 2048, device="cuda", generator=gen, dtype=torch.float16)
    y = torch.randn(batch, 2816, device="cuda", generator=gen, dtype=torch.float16)
    return x, ctx, y


def diff(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("batch", [1, 2])
def test_replay_equals_eager_on_sdxl(comfy, sdxl, bridge, batch):
    nodes, _ = comfy
    model = launch_free(nodes, sdxl)
    runner = bridge.find(model)
    for i, sigma in enumerate((14.6, 3.0, 0.3)):
        x, ctx, y = inputs(batch, i)
        s = torch.tensor([sigma], device="cuda")
        got = call(model, x, s, ctx, y)
        want = call(sdxl, x, s, ctx, y)
        assert torch.equal(got, want), f"σ {sigma}: max abs {diff(got, want)}"
    assert runner.counts["captures"] == 1 and runner.counts["replays"] == 2, runner.report()
    assert runner.counts["eager"] == 0 and runner.memory_bytes() > 0
    print(runner.report())


@pytest.mark.parametrize("cfg", [1.0, 5.5])
def test_sampling_run_equals_eager(comfy, sdxl, bridge, cfg):
    nodes, _ = comfy
    model = launch_free(nodes, sdxl)
    want = ksampler(nodes, sdxl, cfg)
    got = ksampler(nodes, model, cfg)
    assert torch.equal(got, want), diff(got, want)
    assert bridge.find(model).counts["replays"] == 3, bridge.find(model).report()


def test_lora_like_weight_change_invalidates(comfy, sdxl, bridge):
    nodes, _ = comfy
    model = launch_free(nodes, sdxl)
    runner = bridge.find(model)
    key = "diffusion_model.out.2.weight"
    w = sdxl.model_state_dict()[key]
    delta = torch.randn(w.shape, generator=torch.Generator().manual_seed(0)).to(w.dtype) * 0.05
    x, ctx, y = inputs(1, 5)
    s = torch.tensor([1.0], device="cuda")
    call(model, x, s, ctx, y)
    lora, plain_lora = model.clone(), sdxl.clone()
    lora.add_patches({key: (delta,)}, 1.0)
    plain_lora.add_patches({key: (delta,)}, 1.0)
    import comfy.model_management as mm
    mm.load_models_gpu([plain_lora])
    want = call(plain_lora, x, s, ctx, y)
    mm.load_models_gpu([lora])
    got = call(lora, x, s, ctx, y)
    assert torch.equal(got, want), diff(got, want)
    assert runner.counts["invalidations"] == 1 and runner.counts["captures"] == 2, runner.report()
    mm.load_models_gpu([sdxl])
    x2 = x * 0.5
    assert torch.equal(call(model, x2, s, ctx, y), call(sdxl, x2, s, ctx, y))
    assert runner.counts["invalidations"] == 2


def test_lowvram_falls_back(comfy, sdxl, bridge, caplog):
    import comfy.model_management as mm
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    model = launch_free(nodes, sdxl)
    x, ctx, y = inputs(1, 6)
    s = torch.tensor([2.0], device="cuda")
    mm.unload_all_models()
    model.model.current_patcher = model
    model.load(torch.device("cuda"), lowvram_model_memory=1 << 30)  # 1 GiB of 5: ComfyUI's partial load
    try:
        assert model.model.model_lowvram
        got = call(model, x, s, ctx, y)
        want = call(sdxl, x, s, ctx, y)
        assert torch.equal(got, want)
        assert "lowvram / partial loading" in bridge.find(model).last_fallback
        print(bridge.find(model).last_fallback)
    finally:
        model.unpatch_model(torch.device("cpu"))
        mm.load_models_gpu([sdxl])


def test_fewstep_freeu_window_switches_inside_the_graph(comfy, sdxl, bridge):
    """σ window [2, 0]: off for the first calls, on for the last; one graph per batch serves all of them
    (the fused kernel reads σ from the graph's static buffer)."""
    nodes, _ = comfy
    freeu = nodes.NODE_CLASS_MAPPINGS["FewStepFreeU"]()
    patched = freeu.patch(sdxl, "custom", 1.3, 1.4, 0.9, 0.2, "v2", 1, "sigma", 2.0, 0.0)[0]
    model = launch_free(nodes, patched)
    runner = bridge.find(model)
    x, ctx, y = inputs(1, 7)
    for sigma in (14.6, 5.0, 1.9, 0.5, 3.0, 0.1):
        s = torch.tensor([sigma], device="cuda")
        got = call(model, x, s, ctx, y)
        want = call(patched, x, s, ctx, y)
        off = call(sdxl, x, s, ctx, y)
        assert torch.equal(got, want), f"σ {sigma}: {diff(got, want)}"
        assert torch.equal(got, off) == (sigma > 2.0), sigma
    assert runner.counts["captures"] == 1 and runner.counts["eager"] == 0, runner.report()
    # and through a whole run (cond/uncond batch)
    assert torch.equal(ksampler(nodes, model, 5.5, steps=6), ksampler(nodes, patched, 5.5, steps=6))


def test_comfy_freeu_v2_works_or_falls_back_cleanly(comfy, sdxl, bridge):
    nodes, _ = comfy
    node = nodes.NODE_CLASS_MAPPINGS["FreeU_V2"]()
    out = (getattr(node, "patch", None) or node.execute)(sdxl, 1.3, 1.4, 0.9, 0.2)
    patched = out[0] if isinstance(out, tuple) else out.result[0]
    model = launch_free(nodes, patched)
    want = ksampler(nodes, patched, 5.5)
    got = ksampler(nodes, model, 5.5)
    runner = bridge.find(model)
    print("FreeU_V2:", runner.report())
    assert torch.equal(got, want), diff(got, want)


def test_controlnet_style_input(comfy, sdxl, bridge):
    nodes, _ = comfy
    model = launch_free(nodes, sdxl)
    runner = bridge.find(model)
    x, ctx, y = inputs(2, 8)
    s = torch.tensor([1.5], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(3):
        mid = torch.randn(2, 1280, 32, 32, device="cuda", generator=gen, dtype=torch.float16)
        got = call(model, x, s, ctx, y, control={"middle": [mid.clone()]})
        want = call(sdxl, x, s, ctx, y, control={"middle": [mid.clone()]})
        assert torch.equal(got, want), diff(got, want)
    print("control:", runner.report())
    assert runner.counts["replays"] + runner.counts["eager"] >= 2
