"""Guidance Window (FewStep) and the CFG++ dropdown samplers inside the real ComfyUI (CPU, tiny
random SD1.5-layout UNet built from ComfyUI's own classes): plain CFG where the window covers every
σ, CFG 1 where it covers none, rows really dropped outside, patches applied once, the GUIDER twin,
CFG++ == its plain solver when cond == uncond and == ComfyUI's dpmpp_2m_cfg_pp, clear errors."""
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet


@pytest.fixture(scope="module")
def unet(comfy):
    return random_unet.tiny_sd15(device=torch.device("cpu"))


def conds(seed=0, same=False):
    gen = torch.Generator().manual_seed(seed)
    pos = [[torch.randn(1, 3, 16, generator=gen), {}]]
    neg = pos if same else [[torch.randn(1, 3, 16, generator=gen), {}]]
    return pos, neg


def counting(model):
    """A clone whose UNet calls append (σ, batch rows) to .calls."""
    m = model.clone()
    m.calls = []

    def wrapper(apply, args):
        m.calls.append((float(args["timestep"].reshape(-1)[0]), int(args["input"].shape[0])))
        return apply(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    return m


def window_node(comfy):
    return comfy[0].NODE_CLASS_MAPPINGS["FewStepGuidanceWindow"]


def windowed(comfy, model, window="sigma", start=10000.0, end=1.0, sigmas=None):
    out = window_node(comfy).execute(model, window, start, end, sigmas)
    return out.result[0] if hasattr(out, "result") else out.args[0]


def ksample(nodes, model, cfg, sampler="dpmpp_2m", scheduler="karras", steps=8, same=False, seed=3):
    pos, neg = conds(same=same)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, cfg, sampler, scheduler, pos, neg, latent)[0]["samples"]


def close(a, b, rel=1e-5):
    """Equal to float32 rounding at the latents' scale (the random UNet's latents reach ~300, and its
    cond/uncond rows of one batch differ by ~1e-5 even for equal conditioning on this CPU backend)."""
    torch.testing.assert_close(a, b, rtol=rel, atol=rel * float(b.abs().max()))


def test_nodes_are_registered(comfy):
    nodes, _ = comfy
    for name in ("FewStepGuidanceWindow", "FewStepGuidanceWindowGuider"):
        assert name in nodes.NODE_CLASS_MAPPINGS
    import comfy.samplers as cs
    for name in ("fewstep_dpmpp_2m_cfg_pp", "fewstep_dpmpp_3m_cfg_pp", "fewstep_deis_tab3_cfg_pp",
                 "fewstep_unipc_fs_cfg_pp", "fewstep_dpmpp_1s_cfg_pp"):
        assert name in cs.KSampler.SAMPLERS


@pytest.mark.parametrize("window,start,end", [("sigma", 1e4, 0.0), ("percent", 0.0, 1.0), ("sigma", 1e9, 0.0)])
def test_window_over_every_sigma_is_plain_cfg_bitwise(comfy, unet, window, start, end):
    nodes, _ = comfy
    plain = ksample(nodes, unet, 5.0)
    ours = ksample(nodes, windowed(comfy, unet, window, start, end), 5.0)
    assert torch.equal(plain, ours)


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler", "heun", "fewstep_dpmpp_3m"])
def test_empty_window_is_cfg_1_bitwise(comfy, unet, sampler):
    nodes, _ = comfy
    cfg1 = ksample(nodes, unet, 1.0, sampler=sampler)
    ours = ksample(nodes, windowed(comfy, unet, "sigma", 0.0, 0.0), 7.0, sampler=sampler)
    assert torch.equal(cfg1, ours)
    assert not torch.equal(cfg1, ksample(nodes, unet, 7.0, sampler=sampler))


def test_rows_evaluated_sdxl_8_steps(comfy, unet):
    """SD1.5 and SDXL share the scaled-linear σ table, so karras 8 steps is SDXL's schedule."""
    nodes, _ = comfy
    plain = counting(unet)
    ksample(nodes, plain, 5.0)
    assert sum(r for _, r in plain.calls) == 16
    from comfy_api.latest import io  # noqa: F401  (the node's defaults, read from its schema)
    defaults = {i.id: i.default for i in window_node(comfy).define_schema().inputs if i.id in ("window", "start", "end")}
    assert defaults == {"window": "sigma", "start": 10000.0, "end": 1.0}
    for start, end in ((defaults["start"], defaults["end"]), (5.42, 0.28)):  # ours and the paper's window
        ours = counting(windowed(comfy, unet, "sigma", start, end))
        ksample(nodes, ours, 5.0)
        assert sum(r for _, r in ours.calls) == 12
        for sigma, r in ours.calls:
            assert r == (2 if end <= sigma <= start else 1), (sigma, r)


def test_inside_the_window_steps_equal_cfg_and_outside_equal_cond(comfy, unet):
    """Per step: the denoised output equals CFG's inside and the conditional prediction outside."""
    nodes, _ = comfy
    import comfy.samplers as cs
    ms = unet.get_model_object("model_sampling")
    sigmas = cs.calculate_sigmas(ms, "karras", 8)
    pos, neg = conds()
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    outs = {}
    for label, model, cfg in (("win", windowed(comfy, unet), 5.0), ("cfg", unet, 5.0), ("one", unet, 1.0)):
        seen = []

        def sampler(model_k, x0, sig, extra_args=None, callback=None, disable=None):
            for s in sig[:-1]:
                seen.append(model_k(x0, s * x0.new_ones([1]), **extra_args))
            return x0
        guider = cs.CFGGuider(model)
        guider.set_conds(pos, neg)
        guider.set_cfg(cfg)
        with torch.inference_mode():
            guider.sample(x, torch.zeros_like(x), cs.KSAMPLER(sampler), sigmas, seed=1)
        outs[label] = seen
    for i, s in enumerate(sigmas[:-1].tolist()):
        want = outs["cfg"][i] if 1.0 <= s else outs["one"][i]
        assert torch.equal(outs["win"][i], want), (i, s)


def test_post_cfg_patch_runs_once_per_step_and_sees_no_guidance_outside(comfy, unet):
    nodes, _ = comfy
    log = []

    def post(args):
        log.append((float(args["sigma"].reshape(-1)[0]), torch.equal(args["uncond_denoised"], args["cond_denoised"])))
        return args["denoised"]
    model = windowed(comfy, unet).clone()
    model.set_model_sampler_post_cfg_function(post)
    ksample(nodes, model, 5.0)
    assert len(log) == 8
    for sigma, same in log:
        assert same == (sigma < 1.0)


def test_rescale_cfg_inside_a_full_window_is_unchanged(comfy, unet):
    nodes, _ = comfy
    from comfy_extras import nodes_model_advanced as adv
    node = adv.RescaleCFG()
    out = (getattr(node, "patch", None) or node.execute)(unet, 0.7)
    rescaled = out[0] if isinstance(out, tuple) else out.args[0]
    plain = ksample(nodes, rescaled, 5.0)
    ours = ksample(nodes, windowed(comfy, rescaled, "percent", 0.0, 1.0), 5.0)
    assert torch.equal(plain, ours)


def test_guider_twin_equals_model_patch(comfy, unet):
    nodes, _ = comfy
    import comfy.samplers as cs
    pos, neg = conds()
    guider_node = nodes.NODE_CLASS_MAPPINGS["FewStepGuidanceWindowGuider"]
    out = guider_node.execute(unet, pos, neg, 5.0, "sigma", 10000.0, 1.0)
    guider = out.result[0] if hasattr(out, "result") else out.args[0]
    sigmas = cs.calculate_sigmas(unet.get_model_object("model_sampling"), "karras", 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sampler = cs.sampler_object("dpmpp_2m")
    with torch.inference_mode():
        a = guider.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=1)
        ref = cs.CFGGuider(windowed(comfy, unet))
        ref.set_conds(pos, neg)
        ref.set_cfg(5.0)
        b = ref.sample(noise, torch.zeros_like(noise), sampler, sigmas, seed=1)
    assert torch.equal(a, b)


def test_step_window_and_percent_window(comfy, unet):
    nodes, _ = comfy
    import comfy.samplers as cs
    sigmas = cs.calculate_sigmas(unet.get_model_object("model_sampling"), "karras", 8)
    model = counting(windowed(comfy, unet, "step", 2, 5, sigmas))
    ksample(nodes, model, 5.0)
    assert [r for _, r in model.calls] == [1, 1, 2, 2, 2, 2, 1, 1]
    model = counting(windowed(comfy, unet, "percent", 0.0, 1.0))
    ksample(nodes, model, 5.0)
    assert [r for _, r in model.calls] == [2] * 8


def flow_model(unet):
    import comfy.model_sampling as cms

    class Flow(cms.ModelSamplingDiscreteFlow, cms.CONST):
        pass
    m = unet.clone()
    m.add_object_patch("model_sampling", Flow(unet.model.model_config))
    return m


@pytest.mark.parametrize("window,start,end,sigmas,match", [
    ("sigma", 0.28, 5.42, None, r"start/end .*start_sigma .*must be >= end_sigma"),
    ("sigma", 5.0, -0.1, None, r"start/end .*end_sigma must be >= 0"),
    ("percent", 0.8, 0.2, None, r"start/end .*start_percent"),
    ("percent", -0.5, 0.2, None, r"start/end .*start_percent must be in \[0, 1\]"),
    ("step", 5, 2, "karras", r"start/end .*start_step"),
    ("step", 1, 4, None, r"window 'step' needs .*sigmas"),
    ("sigma", 5.0, 0.2, "karras", r"sigmas is connected"),
    ("bogus", 5.0, 0.2, None, r"window must be one of"),
])
def test_bad_window_inputs_name_the_parameter(comfy, unet, window, start, end, sigmas, match):
    import comfy.samplers as cs
    if sigmas is not None:
        sigmas = cs.calculate_sigmas(unet.get_model_object("model_sampling"), sigmas, 8)
    with pytest.raises(ValueError, match=match):
        windowed(comfy, unet, window, start, end, sigmas)


def test_flow_model_sigma_bounds_refused_percent_accepted(comfy, unet):
    flow = flow_model(unet)
    with pytest.raises(ValueError, match=r"window 'sigma' is refused on a flow-matching model"):
        windowed(comfy, flow, "sigma", 5.42, 0.28)
    assert windowed(comfy, flow, "percent", 0.1, 0.8) is not None


# --- CFG++ -------------------------------------------------------------------------------------

PAIRS = [("fewstep_dpmpp_2m_cfg_pp", "fewstep_dpmpp_2m"), ("fewstep_dpmpp_3m_cfg_pp", "fewstep_dpmpp_3m"),
         ("fewstep_deis_tab2_cfg_pp", "fewstep_deis_tab2"), ("fewstep_deis_tab3_cfg_pp", "fewstep_deis_tab3"),
         ("fewstep_unipc_fs_cfg_pp", "fewstep_unipc_fs")]


@pytest.mark.parametrize("cfg_pp,plain", PAIRS)
def test_cfg_pp_with_cond_equal_uncond_is_the_plain_solver(comfy, unet, cfg_pp, plain):
    """Equal to rounding: the UNet evaluates cond and uncond as two rows of one batch, which a CPU
    backend need not compute bit-identically; with bit-identical estimates the forms are equal bit for
    bit (tests/test_guidance_math.py, and the empty-window case below)."""
    nodes, _ = comfy
    a = ksample(nodes, unet, 0.7, sampler=cfg_pp, same=True)
    b = ksample(nodes, unet, 0.7, sampler=plain, same=True)
    close(a, b)
    assert not torch.equal(a, ksample(nodes, unet, 0.7, sampler=cfg_pp))


def test_cfg_pp_1s_with_cond_equal_uncond_is_ddim(comfy, unet):
    """DPM++ 1S is DDIM = Euler in σ (another arithmetic: compared to rounding)."""
    nodes, _ = comfy
    a = ksample(nodes, unet, 0.7, sampler="fewstep_dpmpp_1s_cfg_pp", same=True)
    b = ksample(nodes, unet, 0.7, sampler="euler", same=True)
    close(a, b)


@pytest.mark.parametrize("cfg", [0.6, 1.0, 1.5])
def test_dpmpp_2m_cfg_pp_matches_comfyui(comfy, unet, cfg):
    nodes, _ = comfy
    a = ksample(nodes, unet, cfg, sampler="fewstep_dpmpp_2m_cfg_pp")
    b = ksample(nodes, unet, cfg, sampler="dpmpp_2m_cfg_pp")
    close(a, b)
    assert not torch.allclose(a, ksample(nodes, unet, cfg, sampler="fewstep_dpmpp_2m"), rtol=1e-3, atol=1e-3)


def test_dpmpp_1s_cfg_pp_matches_comfyui_euler_cfg_pp(comfy, unet):
    nodes, _ = comfy
    a = ksample(nodes, unet, 0.8, sampler="fewstep_dpmpp_1s_cfg_pp")
    b = ksample(nodes, unet, 0.8, sampler="euler_cfg_pp")
    close(a, b)


@pytest.mark.parametrize("sampler", [p[0] for p in PAIRS] + ["dpmpp_2m_cfg_pp"])
def test_cfg_pp_inside_the_window_takes_no_uncond_pass_outside(comfy, unet, sampler):
    nodes, _ = comfy
    model = counting(windowed(comfy, unet))
    ksample(nodes, model, 0.7, sampler=sampler)
    assert model.calls
    for sigma, rows in model.calls:
        assert rows == (2 if sigma >= 1.0 else 1), (sigma, rows)
    # outside the window the CFG++ step is the plain step: an empty window gives the plain solver
    if sampler in dict(PAIRS):
        a = ksample(nodes, windowed(comfy, unet, "sigma", 0.0, 0.0), 0.7, sampler=sampler)
        b = ksample(nodes, unet, 1.0, sampler=dict(PAIRS)[sampler])
        assert torch.equal(a, b)


def test_cfg_pp_refuses_flow_models(comfy, unet):
    nodes, _ = comfy
    with pytest.raises(Exception, match=r"sampler_name fewstep_dpmpp_2m_cfg_pp: .*flow-matching"):
        ksample(nodes, flow_model(unet), 0.7, sampler="fewstep_dpmpp_2m_cfg_pp", steps=4)


def test_window_under_fewstep_freeu_gate(comfy, unet):
    """FewStep FreeU gates by the σ of each call; the 1-row calls outside the guidance window pass
    its batch check, and a window over every σ leaves FreeU's result untouched."""
    nodes, _ = comfy
    freeu = nodes.NODE_CLASS_MAPPINGS["FewStepFreeU"]
    model = freeu.execute(unet, "custom", 1.3, 1.4, 0.9, 0.2, "v2", 1, "percent", 0.5, 1.0)[0]
    plain = ksample(nodes, model, 5.0)
    assert torch.equal(plain, ksample(nodes, windowed(comfy, model, "percent", 0.0, 1.0), 5.0))
    ours = counting(windowed(comfy, model))
    out = ksample(nodes, ours, 5.0)
    assert torch.isfinite(out).all() and sum(r for _, r in ours.calls) == 12
