"""Launch-free UNet (FewStepCudaGraph) inside the real ComfyUI on CPU: a run with the node is bit-identical
to a run without it, with the reason for running eagerly logged once; signature keying, LRU eviction,
invalidation and every fallback through the stand-in capture backend (tests/support/standin_capture.py),
whose replays re-run the captured call on the wrapper's static buffers."""
import logging
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet
from tests.support.standin_capture import StandInCapture

LOGGER = "FewStep.launch_free"
torch.set_num_threads(1)  # tiny matrices on shared cores


def pack_module(pack, name):
    return sys.modules[f"{pack.__name__}.{name}"]


@pytest.fixture(scope="module")
def unet(comfy):
    return random_unet.tiny_sd15(device=torch.device("cpu"))


@pytest.fixture
def bridge(comfy):
    return pack_module(comfy[1], "bridge.cuda_graph")


def cond(seed, batch=1):
    return random_unet.random_conditioning(random_unet.TINY_SD15_UNET, batch, tokens=4, seed=seed)


def ksampler(nodes, model, cfg=5.5, steps=4, sampler="dpmpp_2m", seed=0, batch=1, side=8):
    latent = {"samples": torch.zeros(batch, 4, side, side)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, cfg, sampler, "karras", cond(1), cond(2), latent)[0]["samples"]


def launch_free(nodes, model, backend=None, max_graphs=8, verify=True, bridge=None):
    node = nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraph"]
    out = node.execute(model, max_graphs, verify)
    patched = out.result[0] if hasattr(out, "result") else out[0]
    if backend is not None:
        bridge.find(patched)._backend = backend
    return patched


def reasons(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and "running eagerly" in r.getMessage()]


def call(model, x, sigma, context, **options):
    """One BaseModel.apply_model call as the sampler makes it (wrappers from the patcher)."""
    import comfy.patcher_extension as pe
    opts = pe.copy_nested_dicts(model.model_options.get("transformer_options", {}))
    pe.merge_nested_dicts(opts.setdefault("wrappers", {}), model.wrappers, copy_dict1=False)
    opts.update(options)
    opts["sigmas"] = sigma
    with torch.inference_mode():
        return model.model.apply_model(x, sigma.repeat(x.shape[0]), c_crossattn=context, transformer_options=opts)


def test_nodes_are_registered_with_descriptions_and_tooltips(comfy):
    nodes, _ = comfy
    for name in ("FewStepCudaGraph", "FewStepCudaGraphReport"):
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        schema = cls.define_schema()
        assert schema.description and schema.category.startswith("FewStep/")
        assert all(i.tooltip for i in schema.inputs)
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS["FewStepCudaGraph"] == "Launch-free UNet (FewStep)"
    info = nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraph"].GET_NODE_INFO_V1()
    assert info["output"] == ["MODEL"]


def test_run_on_cpu_is_bit_identical_and_says_why_once(comfy, unet, caplog):
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    plain = ksampler(nodes, unet)
    with_node = ksampler(nodes, launch_free(nodes, unet))
    assert torch.equal(plain, with_node)
    assert reasons(caplog) == ["FewStep launch-free UNet: running eagerly: not a CUDA device (cpu)"]


@pytest.mark.parametrize("cfg", [1.0, 5.5])
def test_standin_replays_are_bit_identical_and_reused_across_runs(comfy, unet, bridge, cfg):
    nodes, _ = comfy
    backend = StandInCapture()
    plain = ksampler(nodes, unet, cfg=cfg, steps=5)
    model = launch_free(nodes, unet, backend, bridge=bridge)
    runner = bridge.find(model)
    first = ksampler(nodes, model, cfg=cfg, steps=5)
    second = ksampler(nodes, model, cfg=cfg, steps=5)
    assert torch.equal(plain, first) and torch.equal(plain, second)
    # one signature (CFG 1: the cond call alone; CFG 5.5: the cond/uncond pair in one batch)
    assert backend.captures == 1 and runner.counts["captures"] == 1
    assert runner.counts["replays"] == 2 * 5 - 1 and runner.counts["eager"] == 0
    assert runner.memory_bytes() > 0 and "graphs cached: 1 of 8" in runner.report()


def test_report_node_reads_the_cache(comfy, unet, bridge):
    nodes, _ = comfy
    model = launch_free(nodes, unet, StandInCapture(), bridge=bridge)
    samples = ksampler(nodes, model, steps=3)
    report = nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraphReport"].execute(model, {"samples": samples})
    text = report.result[0]
    assert "graphs cached: 1 of 8" in text and "2 replayed, 1 captured, 0 eager" in text
    with pytest.raises(ValueError, match="model: no Launch-free UNet"):
        nodes.NODE_CLASS_MAPPINGS["FewStepCudaGraphReport"].execute(unet, {"samples": samples})


def test_signatures_key_shape_dtype_batch_and_patch_identity(comfy, unet, bridge):
    nodes, _ = comfy
    backend = StandInCapture()
    model = launch_free(nodes, unet, backend, bridge=bridge)
    runner = bridge.find(model)
    gen = torch.Generator().manual_seed(3)
    x8 = torch.randn(1, 4, 8, 8, generator=gen)
    ctx = cond(4)[0][0]
    s1, s2 = torch.tensor([2.0]), torch.tensor([0.5])
    a = call(model, x8, s1, ctx)
    b = call(model, x8 * 0.5, s2, ctx * 2)              # same signature, new contents: a replay
    assert backend.captures == 1 and runner.counts["replays"] == 1
    assert torch.equal(b, call(unet, x8 * 0.5, s2, ctx * 2))
    assert torch.equal(a, call(unet, x8, s1, ctx))
    call(model, torch.randn(2, 4, 8, 8, generator=gen), s1, ctx.repeat(2, 1, 1))   # batch
    call(model, torch.randn(1, 4, 16, 8, generator=gen), s1, ctx)                  # shape
    call(model, x8.double(), s1, ctx)                                             # dtype
    call(model, x8, s1, ctx[:, :3])                                               # conditioning
    assert backend.captures == 5
    # a patch is keyed by identity: another object (even an equal one) is another graph
    patch_a, patch_b = (lambda h, hsp, opts: (h, hsp)), (lambda h, hsp, opts: (h, hsp))
    call(model, x8, s1, ctx, patches={"output_block_patch": [patch_a]})
    call(model, x8, s1, ctx, patches={"output_block_patch": [patch_a]})
    call(model, x8, s1, ctx, patches={"output_block_patch": [patch_b]})
    assert backend.captures == 7
    # per-run bookkeeping (uuids) is not part of a signature: the first graph again
    replays = runner.counts["replays"]
    call(model, x8, s1, ctx, uuids=["a"])
    call(model, x8, s1, ctx, uuids=["b"])
    assert backend.captures == 7 and runner.counts["replays"] == replays + 2


def test_lru_cache_is_bounded(comfy, unet, bridge, caplog):
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    backend = StandInCapture()
    model = launch_free(nodes, unet, backend, max_graphs=2, bridge=bridge)
    runner = bridge.find(model)
    ctx = cond(4)[0][0]
    xs = [torch.randn(1, 4, 8, 8 + 2 * i) for i in range(3)]
    s = torch.tensor([1.0])
    for x in xs + [xs[2], xs[0]]:
        call(model, x, s, ctx)
    assert len(runner.entries) == 2 and backend.captures == 4  # xs[0] evicted by xs[2], captured again
    assert any("evicted" in r.getMessage() for r in caplog.records if r.name == LOGGER)
    assert any("captured" in r.getMessage() and "MiB" in r.getMessage() for r in caplog.records)


def test_weight_change_reload_and_move_invalidate(comfy, unet, bridge, caplog):
    import comfy.model_management as mm
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    backend = StandInCapture()
    model = launch_free(nodes, unet, backend, bridge=bridge)
    runner = bridge.find(model)
    ksampler(nodes, model, steps=3)
    assert backend.captures == 1
    # a LoRA-like weight patch on a clone (the same runner): the result follows the new weights
    key = next(k for k in unet.model_state_dict() if k.endswith("out.2.weight"))
    w = unet.model_state_dict()[key]
    lora = model.clone()
    lora.add_patches({key: (torch.full_like(w, 0.05),)}, 1.0)
    plain_lora = unet.clone()
    plain_lora.add_patches({key: (torch.full_like(w, 0.05),)}, 1.0)
    want = ksampler(nodes, plain_lora, steps=3)
    got = ksampler(nodes, lora, steps=3)
    assert torch.equal(want, got)
    assert backend.captures == 2 and runner.counts["invalidations"] >= 1
    # back to the model without the patch: the weights change again
    assert torch.equal(ksampler(nodes, unet, steps=3), ksampler(nodes, model, steps=3))
    assert backend.captures == 3
    # an unload and reload (ModelPatcher callbacks): graphs dropped
    before = runner.counts["invalidations"]
    mm.unload_all_models()
    assert torch.equal(ksampler(nodes, unet, steps=3), ksampler(nodes, model, steps=3))
    assert runner.counts["invalidations"] == before + 1 and backend.captures == 4
    assert any("dropped" in r.getMessage() for r in caplog.records if r.name == LOGGER)


def test_fallback_reasons(comfy, unet, bridge, caplog):
    import comfy.patcher_extension as pe
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ctx = cond(4)[0][0]
    s = torch.tensor([1.5])
    want = call(unet, x, s, ctx)

    def check(model, match, **options):
        caplog.clear()
        assert torch.equal(call(model, x, s, ctx, **options), want)
        assert torch.equal(call(model, x, s, ctx, **options), want)
        got = reasons(caplog)
        assert len(got) <= 1 and (got or [bridge.find(model).last_fallback])[0] is not None
        assert match in bridge.find(model).last_fallback, bridge.find(model).last_fallback

    # not CUDA (the real backend on CPU)
    check(launch_free(nodes, unet), "not a CUDA device")
    # a capture error (what a host read such as .item() inside a patch causes under capture)
    err = RuntimeError("CUDA error: operation not permitted when stream is capturing")
    check(launch_free(nodes, unet, StandInCapture(fail_with=err), bridge=bridge), "operation not permitted")
    # the first replay differs from the eager call
    check(launch_free(nodes, unet, StandInCapture(perturb=1e-3), bridge=bridge), "differs from the eager call")
    # a large tensor outside the capture device among the inputs
    model = launch_free(nodes, unet, StandInCapture(), bridge=bridge)
    check(model, "neither on the model's device", extra_host=torch.empty(1000, device="meta"))
    # autograd
    with torch.enable_grad():
        out = model.model.apply_model(x, s, c_crossattn=ctx, transformer_options={
            "sigmas": s, "wrappers": {pe.WrappersMP.APPLY_MODEL: {"k": [bridge.find(model)]}}})
    assert torch.equal(out.detach(), want) and "autograd" in bridge.find(model).last_fallback


def test_lowvram_load_falls_back(comfy, bridge, caplog):
    import comfy.model_management as mm
    nodes, _ = comfy
    caplog.set_level(logging.INFO, logger=LOGGER)
    net = random_unet.tiny_sd15(device=torch.device("cpu"), seed=7)
    model = launch_free(nodes, net, StandInCapture(), bridge=bridge)
    x = torch.randn(1, 4, 8, 8)
    ctx = cond(4)[0][0]
    s = torch.tensor([1.0])
    want = call(net, x, s, ctx)
    mm.unload_all_models()
    model.model.current_patcher = model
    model.load(torch.device("cpu"), lowvram_model_memory=1)  # ComfyUI's partial (lowvram) load
    try:
        assert model.model.model_lowvram
        assert torch.equal(call(model, x, s, ctx), want)
        assert "lowvram / partial loading" in bridge.find(model).last_fallback
        assert any("lowvram" in m for m in reasons(caplog))
    finally:
        model.unpatch_model()


def test_gated_freeu_reads_each_calls_sigma_through_the_static_buffer(comfy, unet, bridge):
    """FewStep FreeU with a σ window on a captured model: the run equals the uncaptured one, so the
    window switched at the right calls although one signature serves every call."""
    nodes, _ = comfy
    freeu = nodes.NODE_CLASS_MAPPINGS["FewStepFreeU"]
    patched = freeu.execute(unet, "custom", 1.3, 1.4, 0.9, 0.2, "v1", 1, "sigma", 2.0, 0.0)[0]
    no_freeu = ksampler(nodes, unet, steps=6)
    plain = ksampler(nodes, patched, steps=6)
    assert not torch.equal(plain, no_freeu)
    backend = StandInCapture()
    model = launch_free(nodes, patched, backend, bridge=bridge)
    assert torch.equal(plain, ksampler(nodes, model, steps=6))
    assert backend.captures == 1 and bridge.find(model).counts["replays"] == 5


def test_controlnet_style_input_is_a_graph_input(comfy, unet, bridge):
    """A ControlNet's per-call residuals reach the UNet as the `control` argument (lists the UNet pops
    from): they are static buffers of the graph, refilled at every replay."""
    import comfy.patcher_extension as pe
    nodes, _ = comfy
    backend = StandInCapture()
    model = launch_free(nodes, unet, backend, bridge=bridge)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(1, 4, 8, 8, generator=gen)
    ctx = cond(4)[0][0]
    s = torch.tensor([1.2])
    for _ in range(3):
        residual = torch.randn(1, 128, 2, 2, generator=gen)  # the middle block's features
        opts = {"sigmas": s, "wrappers": {pe.WrappersMP.APPLY_MODEL: {"k": [bridge.find(model)]}}}
        with torch.inference_mode():
            got = model.model.apply_model(x, s, c_crossattn=ctx, control={"middle": [residual.clone()]},
                                          transformer_options=opts)
            want = unet.model.apply_model(x, s, c_crossattn=ctx, control={"middle": [residual.clone()]},
                                          transformer_options={"sigmas": s})
            plain = unet.model.apply_model(x, s, c_crossattn=ctx, transformer_options={"sigmas": s})
        assert torch.equal(got, want) and not torch.equal(got, plain)
    assert backend.captures == 1 and bridge.find(model).counts["replays"] == 2


def test_weight_hooks_fall_back(comfy, unet, bridge):
    """Conditioning with a weight hook (ComfyUI's hook LoRA): the hooked weights are patched per
    keyframe while sampling, so the calls run eagerly."""
    import comfy.hooks as comfy_hooks
    nodes, _ = comfy
    key = next(k for k in unet.model_state_dict() if k.endswith("out.2.weight"))
    weights = {key: unet.model_state_dict()[key] * 1.5}
    hooks = comfy_hooks.create_hook_model_as_lora(weights, None, 1.0, 1.0)
    pos = comfy_hooks.set_hooks_for_conditioning(cond(1), hooks)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}

    def run(model):
        with torch.inference_mode():
            return nodes.common_ksampler(model, 0, 3, 5.5, "dpmpp_2m", "karras", pos, cond(2), latent)[0]["samples"]
    want = run(unet)
    model = launch_free(nodes, unet, StandInCapture(), bridge=bridge)
    assert torch.equal(run(model), want)
    assert not torch.equal(want, ksampler(nodes, unet, steps=3))  # the hook changed the result
    assert "weight hooks" in bridge.find(model).last_fallback


def test_freeu_buffers_dropped_from_its_caches_stay_alive(comfy):
    """A graph captured around FewStep FreeU's fused blocks holds the addresses of its filter factors
    and counters: the caches keep what they drop referenced."""
    fused = pack_module(comfy[1], "freeu.fused")
    before = len(fused._retired)
    first = fused._factors(8, 8, 1, 0.5, torch.device("cpu"))
    for i in range(fused._FACTOR_CACHE_MAX):
        fused._factors(8, 8 + i + 1, 1, 0.5, torch.device("cpu"))
    assert any(entry is first for entry in fused._retired[before:])
    small = fused._tile_counters(torch.device("cpu"), 8)
    fused._tile_counters(torch.device("cpu"), small.numel() + 1)
    assert any(buf is small for buf in fused._retired)
