"""Saved graphs keep working: frozen copies of the example workflows and API prompts as the pack
shipped them before its nodes moved to ComfyUI's v3 node API (tests/data/frozen_workflows/), and
a snapshot of /object_info for every FewStep node taken from the v1 classes
(tests/data/object_info_fewstep.json), checked against a running headless ComfyUI.

The snapshot is rewritten only on purpose: FEWSTEP_WRITE_OBJECT_INFO=1 with this file."""
import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FROZEN = REPO / "tests" / "data" / "frozen_workflows"
SNAPSHOT = REPO / "tests" / "data" / "object_info_fewstep.json"
from scripts import workflow_templates as wt
from tests.test_templates import lab_stand_in

UI_GRAPHS = sorted(p.name for p in FROZEN.glob("*.json"))
API_PROMPTS = sorted(p.name for p in (FROZEN / "api").glob("*.json"))
# What a node's /object_info entry promises a saved graph; the rest (python_module, v3-only flags)
# may differ between the two node APIs without a graph noticing.
# What a saved workflow or API prompt depends on. Help text (description, tooltips) may be improved
# without breaking one, so it is not frozen.
KEYS = ("input", "input_order", "output", "output_is_list", "output_name", "name", "display_name", "category",
        "output_node")
CHECKPOINT_NODES = {"CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode"}
# Choices that follow the host or the user directory (ComfyUI's sampler/scheduler lists, dropdown
# entries other packs or FewStep add, cached schedule files): a saved graph needs its old choice to
# still be there, so these may grow but not lose an entry.
GROWING_COMBOS = {("FewStepLoadOptimizedSchedule", "schedule"), ("FewStepOptimizeSchedule", "sampler"),
                  ("FewStepKSamplerAdvanced", "sampler_name"), ("FewStepKSamplerAdvanced", "scheduler"),
                  ("FewStepLabAccuracy", "scheduler")}


def _spec(spec, name=""):
    """One input's (type, options) in one spelling: a list of choices -> ("COMBO", {options});
    the v3 API's explicit `multiselect: False` is the v1 default. An INT named seed has a control
    widget in the editor whether it asks for one or not, so asking (control_after_generate) changes
    no saved graph, only the control's mode on a new node."""
    kind, opts = spec[0], dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, list):
        kind, opts = "COMBO", {**opts, "options": kind}
    if opts.get("multiselect") is False:
        del opts["multiselect"]
    opts.pop("tooltip", None)
    if kind == "INT" and name in wt.SEED_WIDGETS:
        opts.pop("control_after_generate", None)
    return [kind, opts]


def comparable(entry: dict) -> dict:
    out = {k: entry.get(k) for k in KEYS}
    out["input"] = {section: {name: _spec(spec, name) for name, spec in entry["input"].get(section, {}).items()}
                    for section in ("required", "optional") if entry["input"].get(section)}
    out["input_order"] = {s: v for s, v in (entry.get("input_order") or {}).items() if s in out["input"]}
    out["output"] = list(entry["output"])
    out["output_name"] = list(entry["output_name"])
    out["output_is_list"] = list(entry["output_is_list"])
    out["output_node"] = bool(entry.get("output_node"))
    return out


def pack_nodes(info: dict) -> dict:
    return {name: entry for name, entry in info.items() if name.startswith("FewStep")}


@pytest.fixture(scope="module")
def object_info(server):
    ckpts = server.base / "models" / "checkpoints"
    ckpts.mkdir(parents=True, exist_ok=True)
    for spec in wt.TEMPLATES.values():
        (ckpts / spec["ckpt"]).touch()  # the recipe graphs name stock checkpoints
    return server.get("/object_info")


def test_object_info_of_every_pack_node_is_unchanged(object_info):
    mine = pack_nodes(object_info)
    if os.environ.get("FEWSTEP_WRITE_OBJECT_INFO") == "1":
        SNAPSHOT.write_text(json.dumps(dict(sorted(mine.items())), indent=1, ensure_ascii=False) + "\n")
    frozen = json.loads(SNAPSHOT.read_text())
    gone = sorted(set(frozen) - set(mine))
    assert not gone, f"FewStep nodes a saved workflow may use are gone: {gone}"  # new nodes may be added
    for name, entry in frozen.items():
        want, got = comparable(entry), comparable(mine[name])
        for section, inputs in want["input"].items():
            for key, (_, opts) in inputs.items():
                if (name, key) in GROWING_COMBOS:
                    have = got["input"].get(section, {}).get(key, [None, {}])[1].pop("options", [])
                    missing = [o for o in opts.pop("options") if o not in have]
                    assert not missing, f"{name}.{key} lost the choices {missing}"
        for key in KEYS:
            assert got[key] == want[key], f"{name}.{key}: {got[key]!r} != snapshot {want[key]!r}"
        # hidden inputs the node had stay (the v3 API may add prompt/extra_pnginfo to output nodes)
        for hidden in entry["input"].get("hidden", {}):
            assert hidden in mine[name]["input"].get("hidden", {}), (name, hidden)


def test_every_pack_node_is_on_the_v3_node_api(comfy):
    from comfy_api.latest import io
    _, pack = comfy
    old_style = [name for name, cls in pack.NODE_CLASS_MAPPINGS.items() if not issubclass(cls, io.ComfyNode)]
    assert not old_style, f"nodes still on the v1 API: {old_style}"


@pytest.mark.parametrize("name", UI_GRAPHS)
def test_frozen_ui_graph_validates(object_info, name):
    # the validator knows the editor's seed controls (workflow_templates.has_control)
    assert wt.validate_ui(json.loads((FROZEN / name).read_text()), object_info) == []


@pytest.mark.parametrize("name", API_PROMPTS)
def test_frozen_api_prompt_validates_and_runs(server, object_info, name):
    prompt = json.loads((FROZEN / "api" / name).read_text())
    assert wt.validate_api(prompt, object_info) == []
    if CHECKPOINT_NODES & {n["class_type"] for n in prompt.values()}:
        prompt = lab_stand_in(prompt)  # no checkpoint here: the lab model stands in, the FewStep part is as saved
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert entry["outputs"], f"{name} ran but produced no output"
