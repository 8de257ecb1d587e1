"""Distilled Timesteps (FewStep) inside the real ComfyUI: preset timesteps exact on the model's own
table, the far-step warning, clear errors (unknown preset, bad trained_steps, flow model)."""
import logging
import sys
from pathlib import Path

import pytest
import torch

from tests.support import random_unet


@pytest.fixture(scope="module")
def unet(comfy):
    return random_unet.tiny_sd15(device=torch.device("cpu"))


def run(comfy, model, preset, steps, trained_steps=4, sigmas=None):
    node = comfy[0].NODE_CLASS_MAPPINGS["FewStepDistilledTimesteps"]
    out = node.execute(model, preset, steps, trained_steps, sigmas)
    return out.result[0] if hasattr(out, "result") else out.args[0]


PUBLISHED = [  # (preset, steps, timesteps) as the cards / schedulers give them
    ("sdxl_lightning", 4, [999, 749, 499, 249]),
    ("sdxl_lightning", 8, [999, 874, 749, 624, 499, 374, 249, 124]),
    ("sdxl_lightning", 2, [999, 499]),
    ("dmd2", 4, [999, 749, 499, 249]),
    ("dmd2", 1, [399]),
    ("hyper_sd", 8, [999, 874, 749, 624, 499, 374, 249, 124]),
    ("hyper_sdxl_1step_unet", 1, [800]),
    ("lcm", 4, [999, 759, 499, 259]),
    ("tcd", 8, [999, 879, 759, 639, 499, 379, 259, 139]),
    ("sdxl_turbo", 4, [999, 899, 799, 699]),
]


@pytest.mark.parametrize("preset,steps,timesteps", PUBLISHED)
def test_preset_timesteps_are_exact_on_the_models_table(comfy, unet, preset, steps, timesteps):
    ms = unet.get_model_object("model_sampling")
    sigmas = run(comfy, unet, preset, steps)
    assert sigmas.shape == (steps + 1,) and float(sigmas[-1]) == 0.0
    want = ms.sigmas[torch.tensor(timesteps)].float().cpu()
    assert torch.equal(sigmas[:-1], want)
    back = ms.timestep(sigmas[:-1]).reshape(-1).tolist()
    assert [round(t) for t in back] == timesteps


def test_simple_scheduler_lands_on_lightning_4_karras_does_not(comfy, unet, caplog):
    import comfy.samplers as cs
    ms = unet.get_model_object("model_sampling")
    with caplog.at_level(logging.WARNING):
        run(comfy, unet, "sdxl_lightning", 4, 4, cs.calculate_sigmas(ms, "simple", 4))
    assert "far from every timestep" not in caplog.text
    with caplog.at_level(logging.WARNING):
        out = run(comfy, unet, "sdxl_lightning", 4, 4, cs.calculate_sigmas(ms, "karras", 4))
    assert "far from every timestep SDXL-Lightning was trained at" in caplog.text
    assert "t=146" in caplog.text or "t=147" in caplog.text
    assert out.shape == (5,)


def test_other_step_counts_follow_the_rule_and_warn(comfy, unet, caplog):
    with caplog.at_level(logging.WARNING):
        sig = run(comfy, unet, "sdxl_lightning", 6, 4)
    assert len(sig) == 7 and "far from every timestep" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run(comfy, unet, "lcm", 6, 4)
    assert "far from every timestep" not in caplog.text  # every LCM step is on its 50-point grid


@pytest.mark.parametrize("preset,steps,trained,match", [
    ("lightning", 4, 4, r"preset must be one of"),
    ("sdxl_lightning", 4, 3, r"trained_steps must be one of \[1, 2, 4, 8\]"),
    ("lcm", 51, 4, r"steps must be <= 50"),
    ("sdxl_lightning", 0, 4, r"steps must be >= 1"),
])
def test_bad_inputs_name_the_parameter(comfy, unet, preset, steps, trained, match):
    with pytest.raises(ValueError, match=match):
        run(comfy, unet, preset, steps, trained)


def test_flow_model_is_refused(comfy, unet):
    import comfy.model_sampling as cms

    class Flow(cms.ModelSamplingDiscreteFlow, cms.CONST):
        pass
    m = unet.clone()
    m.add_object_patch("model_sampling", Flow(unet.model.model_config))
    with pytest.raises(ValueError, match=r"model: the distilled-model presets .*flow matching"):
        run(comfy, m, "sdxl_lightning", 4)


def ui_of(comfy, model, preset, steps, trained_steps=4, sigmas=None):
    node = comfy[0].NODE_CLASS_MAPPINGS["FewStepDistilledTimesteps"]
    return node.execute(model, preset, steps, trained_steps, sigmas).ui


def test_ui_carries_trained_sigmas_and_far_steps(comfy, unet):
    import comfy.samplers as cs
    ms = unet.get_model_object("model_sampling")
    want = [float(s) for s in ms.sigma(torch.tensor([999.0, 749.0, 499.0, 249.0])).reshape(-1)]
    ui = ui_of(comfy, unet, "sdxl_lightning", 4)
    assert ui["fewstep_trained_sigmas"] == want
    assert ui["fewstep_far_steps"] == [] and len(ui["fewstep_sigmas"]) == 5
    ui = ui_of(comfy, unet, "sdxl_lightning", 4, 4, cs.calculate_sigmas(ms, "karras", 4))
    assert ui["fewstep_far_steps"] == [2, 3] and ui["fewstep_trained_sigmas"] == want
    ui = ui_of(comfy, unet, "sdxl_lightning", 4, 4, cs.calculate_sigmas(ms, "simple", 4))
    assert ui["fewstep_far_steps"] == []
