"""The guidance example workflow (Guidance Window on KSampler; the GUIDER twin with a CFG++ sampler
and Distilled Timesteps on SamplerCustomAdvanced) run over HTTP by a headless ComfyUI, as users run
it; a bad window is refused with the parameter named; the v3 nodes' schemas reach /object_info."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
API = REPO / "example_workflows" / "api" / "fewstep_guidance_window_api.json"
UI = REPO / "example_workflows" / "fewstep_guidance_window.json"


def test_guidance_example_runs_over_http(server):
    entry = server.run_prompt(json.loads(API.read_text()))
    for node in ("7", "14"):
        images = entry["outputs"][node]["images"]
        assert len(images) == 2
        for im in images:
            arr = np.asarray(Image.open(server.base / "output" / im.get("subfolder", "") / im["filename"])).astype(float)
            assert arr.shape == (256, 256, 3) and arr.std() > 10


def test_ui_twin_has_the_same_nodes(server):
    ui = json.loads(UI.read_text())
    api = json.loads(API.read_text())
    assert {n["type"] for n in ui["nodes"] if n["type"] != "Note"} == {n["class_type"] for n in api.values()}


@pytest.mark.parametrize("node,key,value,match", [
    ("4", "start", 0.5, r"start/end .*start_sigma"),
    ("9", "preset", "lightning", "preset"),
])
def test_bad_inputs_are_refused_naming_the_parameter(server, node, key, value, match):
    prompt = json.loads(API.read_text())
    prompt[node]["inputs"][key] = value
    with pytest.raises(AssertionError, match=match):
        server.run_prompt(prompt)


def test_object_info_has_the_guidance_nodes(server):
    info = server.get("/object_info")
    for name in ("FewStepGuidanceWindow", "FewStepGuidanceWindowGuider", "FewStepDistilledTimesteps"):
        assert info[name]["description"] and info[name]["category"].startswith("FewStep/")
        for section in info[name]["input"].values():
            for key, spec in section.items():
                assert len(spec) > 1 and spec[1].get("tooltip"), (name, key)
    assert "fewstep_dpmpp_2m_cfg_pp" in info["KSampler"]["input"]["required"]["sampler_name"][0]
