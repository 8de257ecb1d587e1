"""The recipe templates in example_workflows/ against a running headless ComfyUI: listed by the
template browser's route, served, valid for /object_info (types, values, links), in step with their
generator, and the recipe part of each graph runs end to end with the lab model standing in for the
checkpoint (CLIP and VAE nodes replaced by the lab conditioning and decode nodes; FreeU off because
the lab model has no UNet blocks, FreeU is covered on a tiny real UNet in test_recipe_comfy.py)."""
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
from scripts import workflow_templates as wt
NAMES = list(wt.TEMPLATES)


@pytest.fixture(scope="module")
def object_info(server):
    # The templates name stock checkpoints; put empty placeholders where ComfyUI lists checkpoints
    # so the checkpoint combo has them, as on a machine that has the weights.
    ckpts = server.base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for s in wt.TEMPLATES.values():
        (ckpts / s["ckpt"]).touch()
    (server.base / "input" / wt.FINETUNE_FOLDER).mkdir(parents=True, exist_ok=True)  # the example's image folder
    return server.get("/object_info")


def load(name):
    # UI templates sit in example_workflows/ (the template browser lists them); API twins in api/
    folder = REPO / "example_workflows" / ("api" if name.endswith("_api") else "")
    return json.loads((folder / f"{name}.json").read_text())


def test_template_browser_lists_the_templates(server):
    listed = server.get("/workflow_templates")
    print("\n/workflow_templates ->", json.dumps(listed, indent=1))
    mine = listed.get("ComfyUI-FewStep")
    assert mine is not None, listed
    for name in NAMES:
        assert name in mine
    # only UI graphs are offered: the browser loads templates as graphs, API twins live in api/
    assert not [n for n in mine if n.endswith("_api")], mine
    for name in NAMES:  # the browser fetches them from this route
        with urllib.request.urlopen(f"{server.url}/api/workflow_templates/ComfyUI-FewStep/{name}.json") as r:
            assert json.loads(r.read()) == load(name)


@pytest.mark.parametrize("name", NAMES)
def test_ui_template_is_valid_for_object_info(object_info, name):
    workflow = load(name)
    assert wt.validate_ui(workflow, object_info) == []
    types = [n["type"] for n in workflow["nodes"]]
    for needed in ("CheckpointLoaderSimple", "CLIPTextEncode", "FewStepFSchedulerRecipe", "SamplerCustomAdvanced",
                   "VAEDecode", "SaveImage"):
        assert needed in types


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_valid_for_object_info(object_info, name):
    assert wt.validate_api(load(f"{name}_api"), object_info) == []


def test_validators_catch_bad_graphs(object_info):
    api = load(f"{NAMES[0]}_api")
    api["4"]["inputs"]["solver"] = "nope"
    api["4"]["inputs"]["steps"] = 0
    api["5"]["inputs"]["model"] = ["4", 1]
    api["9"]["class_type"] = "NoSuchNode"
    problems = " | ".join(wt.validate_api(api, object_info))
    assert "nope" in problems and "below min" in problems and "SIGMAS linked into MODEL" in problems
    assert "NoSuchNode" in problems
    ui = load(NAMES[0])
    ui["links"][0][5] = "MODEL"
    ui["nodes"][3]["widgets_values"].append(1)
    problems = " | ".join(wt.validate_ui(ui, object_info))
    assert "declared MODEL" in problems and "left over" in problems


def host_added_outputs(committed: dict, generated: dict) -> dict:
    """The generated graph with the output slots that only this host's node definitions add (a
    newer ComfyUI's SaveImage returns its IMAGE) cut back to the committed ones, where those extra
    slots are unlinked: the frontend adds them from the definition when it loads the template, so the
    committed file stays right for every host. Nothing else is forgiven."""
    out = json.loads(json.dumps(generated))
    mine = {n["id"]: n for n in committed["nodes"]}
    for node in out["nodes"]:
        have = mine.get(node["id"], {}).get("outputs", [])
        extra = node["outputs"][len(have):]
        if (not node["type"].startswith("FewStep") and node["outputs"][:len(have)] == have
                and not any(o["links"] for o in extra)):
            node["outputs"] = have
    return out


def test_templates_match_their_generator(object_info):
    for name in [*NAMES, wt.FINETUNE]:
        committed, generated = load(name), json.loads(json.dumps(wt.ui_workflow(name, object_info)))
        assert committed == host_added_outputs(committed, generated), name
        assert load(f"{name}_api") == wt.api_prompt(name), name


def lab_stand_in(prompt: dict) -> dict:
    """The template with the lab model in place of checkpoint, CLIP and VAE; FreeU off; 64² pixels."""
    p = json.loads(json.dumps(prompt))
    p["1"] = {"class_type": "FewStepLabModel", "inputs": {"dataset": "shapes", "components": 16, "spread": 0.05,
                                                          "seed": 0, "schedule": "sd_discrete"}}
    p["2"] = {"class_type": "FewStepLabConditioning", "inputs": {}}
    p["3"] = {"class_type": "FewStepLabConditioning", "inputs": {}}
    p["9"] = {"class_type": "FewStepLabDecode", "inputs": {"samples": ["8", 0], "scale": 8}}
    p["4"]["inputs"]["freeu"] = "off"
    p["7"]["inputs"].update(width=64, height=64)
    return p


@pytest.mark.parametrize("name", NAMES)
def test_recipe_part_runs_end_to_end(server, name):
    prompt = load(f"{name}_api")
    entry = server.run_prompt(lab_stand_in(prompt))
    images = entry["outputs"]["10"]["images"]
    assert len(images) == 1
    arr = np.asarray(Image.open(server.base / "output" / images[0].get("subfolder", "") / images[0]["filename"]))
    assert arr.shape == (64, 64, 3) and arr.astype(float).std() > 10
    # the untouched recipe part: same node, same inputs as the template
    assert prompt["4"]["inputs"]["steps"] == wt.TEMPLATES[name]["steps"]


def test_finetune_example_is_valid_and_wired_as_the_docs_advise(server, object_info):
    """The fine-tune example: listed by the template browser, valid for /object_info in both formats,
    the setting docs/finetune.md advises, and both samplings on the schedule the fine-tune outputs."""
    assert wt.FINETUNE in server.get("/workflow_templates")["ComfyUI-FewStep"]
    ui, api = load(wt.FINETUNE), load(f"{wt.FINETUNE}_api")
    assert wt.validate_ui(ui, object_info) == [] and wt.validate_api(api, object_info) == []
    tune = api["6"]["inputs"]
    assert api["6"]["class_type"] == "FewStepFinetune" and tune["latents"] == ["4", 0] and tune["sigmas"] == ["5", 0]
    assert (tune["target"], tune["anchor"], tune["anchor_target"], tune["rounds"], tune["only_on_schedule"]) == \
        ("trajectory", 0.5, "model", 2, True)
    samplers = [n for n in api.values() if n["class_type"] == "SamplerCustomAdvanced"]
    assert len(samplers) == 2 and all(n["inputs"]["sigmas"] == ["6", 4] for n in samplers)
    assert object_info["FewStepFinetune"]["output"][4] == "SIGMAS"
    guiders = [api[n["inputs"]["guider"][0]]["inputs"] for n in samplers]
    assert {g["model"][0] for g in guiders} == {"6", "1"}  # tuned and untuned, side by side
    # trained at the CFG and negative both samples use, and Phase 1 optimised at them too
    assert tune["cfg"] == wt.FINETUNE_CFG > 1 and api[tune["negative"][0]]["class_type"] == "CLIPTextEncode"
    for inputs in [*guiders, api["5"]["inputs"]]:
        assert (inputs["cfg"], inputs["negative"], inputs["positive"]) == (tune["cfg"], tune["negative"], tune["positive"])


def test_every_example_ui_workflow_is_valid_for_object_info(object_info):
    """Hand-made or saved from the editor, every UI graph in example_workflows/ gives each widget its
    value, each seed its control_after_generate value included (the editor adds one to any INT named
    seed, asked for or not, and reads the following value into it)."""
    for path in sorted((REPO / "example_workflows").glob("*.json")):
        assert wt.validate_ui(json.loads(path.read_text()), object_info) == [], path.name
