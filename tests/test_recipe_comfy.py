"""The F-scheduler recipe node inside the real ComfyUI.

Model calls are counted through ComfyUI's own UNet-wrapper hook on the exact-denoiser lab model.
The lab model has no UNet blocks, so FreeU is checked on a tiny randomly initialised SD1.5-layout
UNet built through ComfyUI's own model classes (tests/support/random_unet.py): every model call records
the gate decision of the recipe's FreeU patch and its sigma."""
import sys

import pytest
import torch

from tests.support.comfy_host import recording

from tests.test_recipe_math import PUBLISHED_FREEU, PUBLISHED_SIGMAS

RES = {"1024": "1024 (SDXL)", "512": "512 (SD1.5)"}


def lab(nodes):
    return nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("shapes", 8, 0.05, 0, "sd_discrete")[0]


def recipe(nodes, model, res, steps, solver="unipc_fs", **kw):
    return nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"].execute(model, RES.get(res, res), steps, solver, **kw)




def run(model, sampler, sigmas, cond, shape=(1, 4, 8, 8), cfg=1.0, seed=0):
    import comfy.sample
    latent = torch.zeros(shape)
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, cond, cond, latent, seed=seed)


@pytest.mark.parametrize("key", list(PUBLISHED_SIGMAS))
def test_recipe_node_outputs_and_model_calls(comfy, key):
    """SIGMAS equal the published list; N model calls with AFS at 1024² (first at the AFS point)."""
    nodes, pack = comfy
    res, n = key
    model, sigmas, sampler, text = recipe(nodes, lab(nodes), res, n, freeu="off")
    assert [round(float(s), 4) for s in sigmas] == PUBLISHED_SIGMAS[key]
    m = recording(model)
    cond = nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0]
    out = run(m, sampler, sigmas, cond)
    assert torch.isfinite(out).all()
    assert len(m.seen) == n, m.seen
    if res == "1024":
        unipc = sys.modules[pack.__name__ + ".samplers.unipc"]
        assert sigmas[1] < m.seen[0] < sigmas[0]
        assert m.seen[0] == pytest.approx(unipc.timestep_midpoint(float(sigmas[0]), float(sigmas[1]),
                                          model.get_model_object("model_sampling").sigmas.double()), rel=1e-5)
        assert m.seen[1:] == pytest.approx(sigmas[1:-1].tolist(), rel=1e-5)
    else:
        assert m.seen == pytest.approx(sigmas[:-1].tolist(), rel=1e-5)
    assert f"model calls: {n}" in text and "sigmas: " + ", ".join(f"{s:.4f}" for s in PUBLISHED_SIGMAS[key]) in text


@pytest.mark.parametrize("solver", ["dpmpp_1s", "dpmpp_2m"])
def test_recipe_with_dpmpp_solvers(comfy, solver):
    nodes, _ = comfy
    model, sigmas, sampler, text = recipe(nodes, lab(nodes), "512", 8, solver, freeu="off")
    m = recording(model)
    out = run(m, sampler, sigmas, nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0])
    assert torch.isfinite(out).all() and len(m.seen) == 8
    assert "analytic first step: off" in text


def test_unipc_order_one_predictor_matches_dpmpp_1s_through_comfy(comfy):
    """UniP-1 without corrector is DDIM, as is DPM-Solver++(1S): same latent through ComfyUI."""
    nodes, pack = comfy
    model, sigmas, _, _ = recipe(nodes, lab(nodes), "512", 6, freeu="off")
    cond = nodes.NODE_CLASS_MAPPINGS["FewStepLabConditioning"].execute()[0]
    unipc = nodes.NODE_CLASS_MAPPINGS["FewStepSamplerUniPC"].execute("1", False, True, False, 1.0)[0]
    ddim = recipe(nodes, model, "512", 6, "dpmpp_1s", freeu="off")[2]
    a, b = run(model, unipc, sigmas, cond), run(model, ddim, sigmas, cond)
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


def test_description_lists_the_published_settings(comfy):
    nodes, pack = comfy
    recipe_math = sys.modules[pack.__name__ + ".samplers.recipe"]
    cls = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"]
    assert recipe_math.preset_table_text() in cls.DESCRIPTION
    for spec in cls.INPUT_TYPES()["required"].values():
        assert len(spec) < 2 or spec[1].get("tooltip")
    assert all(spec[1].get("tooltip") for spec in cls.INPUT_TYPES()["optional"].values())


def test_recipe_grid_rule_matches_the_fscheduler_dropdowns(comfy):
    nodes, pack = comfy
    dropdowns = pack.bridge.dropdowns
    recipe_math = sys.modules[pack.__name__ + ".samplers.recipe"]
    presets = sys.modules[pack.__name__ + ".samplers.schedules"].FSCHEDULER_PRESETS
    for res in ("512", "1024"):
        for n in range(1, 13):
            name, _ = recipe_math.grid_preset(res, n)
            want = {k: v for k, v in presets[name].items() if k != "steps"}
            assert dropdowns.fscheduler_for_steps(int(res), n) == want, (res, n)


def test_freeu_on_a_model_without_unet_is_refused_clearly(comfy):
    nodes, _ = comfy
    with pytest.raises(ValueError, match="freeu"):
        recipe(nodes, lab(nodes), "1024", 8)
    with pytest.raises(ValueError, match="p2"):
        recipe(nodes, lab(nodes), "custom", 8, freeu="off")


@pytest.fixture(scope="module")
def tiny_unet(comfy):
    from tests.support.random_unet import tiny_sd15
    import comfy.model_management
    return tiny_sd15(device=comfy.model_management.get_torch_device())


@pytest.mark.parametrize("key", list(PUBLISHED_FREEU))
def test_freeu_window_on_a_real_unet(comfy, tiny_unet, key):
    """FreeU is on exactly for the model calls at the published sigmas (grid index >= t_aug)."""
    nodes, _ = comfy
    start, sigmas_on, _ = PUBLISHED_FREEU[key]
    model, sigmas, sampler, text = recipe(nodes, tiny_unet, *key)
    patches = model.model_options["transformer_options"]["patches"]["output_block_patch"]
    assert len(patches) == 1
    freeu = patches[0]
    decisions = []
    gate = freeu.gate

    def spy(options, batch):
        on = gate(options, batch)
        decisions.append((float(options["sigmas"].reshape(-1)[0]), bool(on)))
        return on
    freeu.gate = spy
    try:
        m = recording(model)
        cond = [[torch.zeros(1, 1, 16), {}]]
        out = run(m, sampler, sigmas, cond)
    finally:
        del freeu.gate
    assert torch.isfinite(out).all()
    assert len(m.seen) == key[1]
    per_call = {}
    for s, on in decisions:  # the gate runs once per decoder block: one decision per call
        per_call.setdefault(s, set()).add(on)
    assert all(len(v) == 1 for v in per_call.values())
    on_sigmas = sorted((round(s, 4) for s, v in per_call.items() if True in v), reverse=True)
    assert on_sigmas == sigmas_on
    assert sorted(per_call) == sorted(m.seen)
    assert f"FreeU from grid index {start}" in text


def test_freeu_changes_the_result_only_inside_the_window(comfy, tiny_unet):
    nodes, _ = comfy
    cond = [[torch.zeros(1, 1, 16), {}]]
    on = recipe(nodes, tiny_unet, "512", 5)
    off = recipe(nodes, tiny_unet, "512", 5, freeu="off")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for sigma, differs in ((1.0010, False), (0.5015, True)):
        s = torch.tensor([sigma])
        a = on[0].model.apply_model(x, s, c_crossattn=cond[0][0],
                                    transformer_options=dict(on[0].model_options["transformer_options"], sigmas=s))
        b = off[0].model.apply_model(x, s, c_crossattn=cond[0][0], transformer_options={"sigmas": s})
        assert (not torch.equal(a, b)) == differs, sigma
    assert not torch.equal(run(on[0], on[2], on[1], cond), run(off[0], off[2], off[1], cond))
