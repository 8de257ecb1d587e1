"""Samplers and schedules through a running headless ComfyUI, driven over HTTP."""
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _dropdown_names(comfy):
    _, pack = comfy
    dd = pack.bridge.dropdowns
    return list(dd.DROPDOWN_SAMPLERS), list(dd.DROPDOWN_SCHEDULERS)


def _options(entry):
    """Combo choices in /object_info: [[...]] for V1 nodes, ["COMBO", {"options": [...]}] for V3 nodes."""
    return entry[0] if isinstance(entry[0], list) else entry[1]["options"]


def test_every_dropdown_name_is_in_object_info(server, comfy):
    samplers, schedulers = _dropdown_names(comfy)
    assert samplers and schedulers
    info = server.get("/object_info")
    for node in ("KSampler", "KSamplerAdvanced", "FewStepKSamplerAdvanced"):
        req = info[node]["input"]["required"]
        assert set(samplers) <= set(_options(req["sampler_name"])), node
        assert set(schedulers) <= set(_options(req["scheduler"])), node
    assert set(samplers) <= set(_options(info["KSamplerSelect"]["input"]["required"]["sampler_name"]))
    assert set(schedulers) <= set(_options(info["BasicScheduler"]["input"]["required"]["scheduler"]))


def test_samplers_page_lists_every_dropdown_name(comfy):
    page = (REPO / "docs" / "samplers.md").read_text()
    for name in sum(_dropdown_names(comfy), []):
        assert f"`{name}`" in page, name


def _load_latent(server, entry, node):
    from safetensors.torch import load_file
    item = entry["outputs"][node]["latents"][0]
    return load_file(str(server.base / "output" / item.get("subfolder", "") / item["filename"]))["latent_tensor"]


def test_fscheduler_split_workflow_over_http(server):
    """The example workflow: F-scheduler SIGMAS + DPM++ 1S SAMPLER into FewStep KSampler Advanced, once
    in one node and once split at end_at_step into two chained nodes: the same latent."""
    prompt = json.loads((REPO / "example_workflows" / "api" / "fewstep_fscheduler_split_api.json").read_text())
    entry = server.run_prompt(prompt)
    full, split = _load_latent(server, entry, "9"), _load_latent(server, entry, "10")
    assert full.shape == (2, 4, 8, 8) and torch.isfinite(full).all()
    assert (full - split).abs().max().item() < 1e-5
    assert len(entry["outputs"]["12"]["images"]) == 2


@pytest.mark.parametrize("sampler, scheduler", [("fewstep_deis_tab3", "fewstep_fscheduler_1024"),
                                                ("fewstep_edm_stochastic", "fewstep_timestep_power")])
def test_ksampler_with_fewstep_dropdown_names_over_http(server, sampler, scheduler):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_ksampler_api.json").read_text())
    prompt["3"]["inputs"].update(width=64, height=64, batch_size=1)
    prompt["4"]["inputs"].update(sampler_name=sampler, scheduler=scheduler, steps=6)
    entry = server.run_prompt(prompt)
    assert len(entry["outputs"]["6"]["images"]) == 1


def test_refused_schedule_reports_a_clear_error_over_http(server):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_ksampler_api.json").read_text())
    prompt["1"]["inputs"]["schedule"] = "edm"
    prompt["3"]["inputs"].update(width=64, height=64, batch_size=1)
    prompt["4"]["inputs"].update(scheduler="fewstep_fscheduler_512", steps=6)
    with pytest.raises(AssertionError, match="timestep space") as err:
        server.run_prompt(prompt)
    assert "ValueError" in str(err.value)
