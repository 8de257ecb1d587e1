"""The F-scheduler recipe templates and the fine-tune example in example_workflows/: one graph
description per template, turned into the UI format (what ComfyUI's template browser loads) and its
API-format twin (for /prompt), plus the checks the tests run against a server's /object_info.

Regenerate after changing a node's inputs (starts a headless ComfyUI to read /object_info):
    python -m scripts.workflow_templates            # writes example_workflows/fewstep_*.json and api/ twins
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "example_workflows"

PROMPT = ("a red vintage bicycle leaning against a sunlit brick wall, potted flowers on the pavement, "
          "photograph, natural light, detailed")

# name -> setting. The paper's models: SD1.5 (512²) and DreamShaper XL 1.0 (1024²); the templates
# name the stock checkpoints most installs have; swap in DreamShaper XL to match the paper.
TEMPLATES = {
    "fewstep_sdxl_1024_6steps": dict(ckpt="sd_xl_base_1.0.safetensors", resolution="1024 (SDXL)", steps=6,
                                     cfg=7.5, size=1024),
    "fewstep_sdxl_1024_8steps": dict(ckpt="sd_xl_base_1.0.safetensors", resolution="1024 (SDXL)", steps=8,
                                     cfg=5.5, size=1024),
    "fewstep_sd15_512_5steps": dict(ckpt="v1-5-pruned-emaonly.safetensors", resolution="512 (SD1.5)", steps=5,
                                    cfg=5.5, size=512),
    "fewstep_sd15_512_6steps": dict(ckpt="v1-5-pruned-emaonly.safetensors", resolution="512 (SD1.5)", steps=6,
                                    cfg=5.5, size=512),
}
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # frontend-only nodes: not in /object_info, never executed


def note_text(name, s):
    return (f"F-scheduler recipe (Li & Bai, arXiv 2510.02390), {s['resolution'].split()[0]}², {s['steps']} model "
            f"calls, CFG {s['cfg']:g}, empty negative prompt, as in the paper.\n\n"
            "The recipe node builds the F-scheduler sigmas (they stop at a small sigma_stop > 0 and the latent "
            "goes straight to VAE Decode), the paper's UniPC sampler (with the analytic first step at 1024²) "
            "and FreeU gated to the paper's late window. Its 'recipe' output lists every value used; every "
            "value is overridable on the node.\n\n"
            f"Checkpoint: {s['ckpt']} here; the paper used "
            + ("DreamShaper XL 1.0 with the fp16-fix VAE." if s["size"] == 1024 else "Stable Diffusion v1.5.")
            + "\nPublished FIDs and what FewStep reproduces: see the FewStep README.")


def graph(name: str) -> dict:
    """API-format graph (node id -> class_type, inputs, title) for one template."""
    s = TEMPLATES[name]
    return {
        "1": dict(class_type="CheckpointLoaderSimple", title="Load Checkpoint", inputs={"ckpt_name": s["ckpt"]}),
        "2": dict(class_type="CLIPTextEncode", title="Positive prompt", inputs={"text": PROMPT, "clip": ["1", 1]}),
        "3": dict(class_type="CLIPTextEncode", title="Negative prompt (empty, as in the paper)",
                  inputs={"text": "", "clip": ["1", 1]}),
        "4": dict(class_type="FewStepFSchedulerRecipe", title="F-scheduler Recipe",
                  inputs={"model": ["1", 0], "resolution": s["resolution"], "steps": s["steps"], "solver": "unipc_fs",
                          "unipc_order": "auto", "analytic_first_step": "auto", "freeu": "auto",
                          "freeu_start_index": -1, "p1": 1.2, "p2": 0.0, "grid_points": 0, "stop_index": -1,
                          "b1": 1.1, "b2": 1.1, "s1": 0.9, "s2": 0.2}),
        "5": dict(class_type="CFGGuider", title="CFG Guider",
                  inputs={"model": ["4", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": s["cfg"]}),
        "6": dict(class_type="RandomNoise", title="Noise", inputs={"noise_seed": 42}),
        "7": dict(class_type="EmptyLatentImage", title="Empty Latent",
                  inputs={"width": s["size"], "height": s["size"], "batch_size": 1}),
        "8": dict(class_type="SamplerCustomAdvanced", title="Sample",
                  inputs={"noise": ["6", 0], "guider": ["5", 0], "sampler": ["4", 2], "sigmas": ["4", 1],
                          "latent_image": ["7", 0]}),
        "9": dict(class_type="VAEDecode", title="VAE Decode", inputs={"samples": ["8", 0], "vae": ["1", 2]}),
        "10": dict(class_type="SaveImage", title="Save Image", inputs={"images": ["9", 0], "filename_prefix": name}),
    }


LAYOUT = {"1": (0, 0), "2": (380, -160), "3": (380, 120), "4": (380, 330), "5": (800, -60), "6": (800, 140),
          "7": (800, 260), "8": (1120, 0), "9": (1440, 0), "10": (1700, 0)}
SIZES = {"1": (320, 100), "2": (380, 200), "3": (380, 120), "4": (360, 420), "5": (270, 110), "6": (270, 82),
         "7": (270, 110), "8": (270, 130), "9": (210, 50), "10": (420, 460)}


# ---- the fine-tune example (issue 21): Phase 1, then Phase 2 on a folder of images, tuned vs untuned ----

FINETUNE = "fewstep_finetune_sd15_512"
FINETUNE_FOLDER = "fewstep_training"  # a sub-folder of ComfyUI's input/ with the training images
FINETUNE_STEPS = 6
FINETUNE_CFG = 5.5  # the SD1.5 recipe templates' CFG: the fine-tune is trained at the CFG it is sampled at
FINETUNE_NEGATIVE = "blurry, low quality, deformed"


def finetune_graph() -> dict:
    """The docs' 'what to use today' setting: trajectory target, anchor 0.5 to the model, 2 rounds,
    only_on_schedule, trained at the CFG and negative both samplings use (FINETUNE_CFG)."""
    ckpt = TEMPLATES["fewstep_sd15_512_6steps"]["ckpt"]
    sampled = lambda guider: {
        "noise": ["9", 0], "guider": [guider, 0], "sampler": ["10", 0], "sigmas": ["6", 4], "latent_image": ["13", 0]}
    guided = lambda model: {"model": [model, 0], "positive": ["2", 0], "negative": ["20", 0], "cfg": FINETUNE_CFG}
    return {
        "1": dict(class_type="CheckpointLoaderSimple", title="Load Checkpoint", inputs={"ckpt_name": ckpt}),
        "2": dict(class_type="CLIPTextEncode", title="Caption of the training images",
                  inputs={"text": PROMPT, "clip": ["1", 1]}),
        "3": dict(class_type="LoadImageDataSetFromFolder", title="Training images (input/" + FINETUNE_FOLDER + ", one size)",
                  inputs={"folder": FINETUNE_FOLDER}),
        "4": dict(class_type="VAEEncode", title="VAE Encode (once per image)", inputs={"pixels": ["3", 0], "vae": ["1", 2]}),
        "5": dict(class_type="FewStepOptimizeSchedule", title="Phase 1: Optimise Schedule",
                  inputs={"model": ["1", 0], "positive": ["2", 0], "negative": ["20", 0], "cfg": FINETUNE_CFG, "width": 512,
                          "height": 512, "steps": FINETUNE_STEPS, "sampler": "dpmpp_2m", "mc_samples": 16, "seed": 0}),
        "6": dict(class_type="FewStepFinetune", title="Phase 2: Few-Step Fine-tune",
                  inputs={"model": ["1", 0], "latents": ["4", 0], "positive": ["2", 0], "steps": FINETUNE_STEPS,
                          "train_steps": 200, "batch_size": 4, "learning_rate": 1e-4, "rank": 8, "spread": 0.5,
                          "weighting": "importance", "anchor": 0.5, "rounds": 2, "seed": 0, "algorithm": "LoRA",
                          "optimizer": "AdamW", "training_dtype": "bf16", "lora_dtype": "bf16",
                          "gradient_checkpointing": True, "sigmas": ["5", 0], "phase1_sampler": "dpmpp_2m",
                          "target": "trajectory", "teacher_steps": 8, "trajectories": 64, "anchor_target": "model",
                          "only_on_schedule": True, "cfg": FINETUNE_CFG, "negative": ["20", 0]}),
        "7": dict(class_type="SaveLoRA", title="Save LoRA Weights",
                  inputs={"lora": ["6", 1], "prefix": "loras/fewstep_finetune", "steps": 400}),  # 2 rounds x 200
        "8": dict(class_type="PreviewImage", title="Loss curve", inputs={"images": ["6", 2]}),
        "9": dict(class_type="RandomNoise", title="Noise", inputs={"noise_seed": 42}),
        "10": dict(class_type="KSamplerSelect", title="Sampler (the one trained for)", inputs={"sampler_name": "dpmpp_2m"}),
        "11": dict(class_type="CFGGuider", title=f"Tuned model, CFG {FINETUNE_CFG:g}", inputs=guided("6")),
        "12": dict(class_type="SamplerCustomAdvanced", title="Sample: tuned", inputs=sampled("11")),
        "13": dict(class_type="EmptyLatentImage", title="Empty Latent", inputs={"width": 512, "height": 512, "batch_size": 1}),
        "14": dict(class_type="VAEDecode", title="VAE Decode", inputs={"samples": ["12", 0], "vae": ["1", 2]}),
        "15": dict(class_type="SaveImage", title="Tuned", inputs={"images": ["14", 0], "filename_prefix": FINETUNE + "_tuned"}),
        "16": dict(class_type="CFGGuider", title=f"Untuned model, CFG {FINETUNE_CFG:g}", inputs=guided("1")),
        "17": dict(class_type="SamplerCustomAdvanced", title="Sample: untuned", inputs=sampled("16")),
        "18": dict(class_type="VAEDecode", title="VAE Decode", inputs={"samples": ["17", 0], "vae": ["1", 2]}),
        "19": dict(class_type="SaveImage", title="Untuned (compare before keeping the LoRA)",
                   inputs={"images": ["18", 0], "filename_prefix": FINETUNE + "_untuned"}),
        "20": dict(class_type="CLIPTextEncode", title="Negative prompt (the one you sample with)",
                   inputs={"text": FINETUNE_NEGATIVE, "clip": ["1", 1]}),
    }


FINETUNE_LAYOUT = {"1": (0, 0), "2": (380, -220), "3": (0, 520), "4": (380, 560), "5": (380, 0), "6": (800, 0),
                   "7": (1240, -260), "8": (1240, -120), "9": (1240, 220), "10": (1240, 340), "11": (1240, 460),
                   "12": (1560, 220), "13": (1240, 580), "14": (1880, 220), "15": (2140, 0), "16": (1240, 720),
                   "17": (1560, 620), "18": (1880, 620), "19": (2140, 520), "20": (380, 280)}
FINETUNE_SIZES = {"1": (320, 100), "2": (380, 200), "3": (320, 60), "4": (210, 50), "5": (360, 300), "6": (380, 760),
                  "7": (320, 80), "8": (320, 240), "9": (270, 82), "10": (270, 60), "11": (270, 50), "12": (270, 130),
                  "13": (270, 110), "14": (210, 50), "15": (420, 460), "16": (270, 50), "17": (270, 130),
                  "18": (210, 50), "19": (420, 460), "20": (380, 160)}
FINETUNE_NOTE = (
    "Few-Step Fine-tune (Phase 2 of the few-step optimiser), experimental: a LoRA trained so that "
    f"dpmpp_2m's {FINETUNE_STEPS} steps on the optimised schedule land where the model's own many-step solve lands "
    "(target 'trajectory', anchored to the untuned model, 2 rounds of Phase 1 + 2, LoRA applied only on the "
    "trained schedule). Put same-size training images in ComfyUI/input/" + FINETUNE_FOLDER + " and a caption in "
    f"the text box. The LoRA is trained for the guided solve at CFG {FINETUNE_CFG:g} with the negative prompt (the "
    "node's cfg and negative inputs), so both samples use that CFG and negative: sampled otherwise it is off its "
    "target. The 'sigmas' output is the schedule the last round trained on. Compare the two images before keeping "
    "the LoRA. Each round costs 64 teacher solves of 48 guided model calls (two UNet passes each) plus 200 training "
    "steps: minutes on a datacentre GPU. "
    "Settings, measurements and limits: docs/finetune.md in the FewStep pack.")


def graph_of(name: str) -> dict:
    return finetune_graph() if name == FINETUNE else graph(name)


def api_prompt(name: str) -> dict:
    return {nid: {"class_type": n["class_type"], "_meta": {"title": n["title"]}, "inputs": dict(n["inputs"])}
            for nid, n in graph_of(name).items()}


# ---- reading /object_info ----------------------------------------------------------------------

def input_specs(info: dict) -> list:
    """[(name, spec, required)] in the node's declared order."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    out = []
    for section in ("required", "optional"):
        for key in order.get(section, []):
            out.append((key, info["input"][section][key], section == "required"))
    return out


def combo_options(spec):
    kind = spec[0]
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return (spec[1] if len(spec) > 1 else {}).get("options", [])
    return None


def is_widget(spec) -> bool:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return combo_options(spec) is not None or kind in ("INT", "FLOAT", "STRING", "BOOLEAN")


CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
SEED_WIDGETS = ("seed", "noise_seed")  # INTs the editor gives a control widget, asked for or not


def has_control(key: str, spec) -> bool:
    """Whether the editor gives this widget a control_after_generate widget of its own (one more
    value in widgets_values): when the input asks for it, and for any INT named seed or noise_seed."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return spec[0] == "INT" and key in SEED_WIDGETS


def socket_type(spec) -> str:
    return "COMBO" if combo_options(spec) is not None else spec[0]


# ---- UI format ---------------------------------------------------------------------------------

def ui_workflow(name: str, object_info: dict) -> dict:
    if name == FINETUNE:
        return ui_graph(finetune_graph(), FINETUNE_LAYOUT, FINETUNE_SIZES, FINETUNE_NOTE, object_info)
    return ui_graph(graph(name), LAYOUT, SIZES, note_text(name, TEMPLATES[name]), object_info)


def ui_graph(g: dict, layout: dict, sizes: dict, note: str, object_info: dict) -> dict:
    ids = {nid: int(nid) for nid in g}
    order = _topological(g)
    links, outputs_links = [], {}
    nodes = []
    for nid, n in g.items():
        info = object_info[n["class_type"]]
        inputs, widgets = [], []
        for key, spec, _ in input_specs(info):
            value = n["inputs"].get(key)
            if isinstance(value, list):
                link_id = len(links) + 1
                src, slot = value
                ltype = object_info[g[src]["class_type"]]["output"][slot]
                links.append([link_id, ids[src], slot, ids[nid], len(inputs), ltype])
                outputs_links.setdefault((src, slot), []).append(link_id)
                inputs.append({"name": key, "type": socket_type(spec), "link": link_id})
            elif is_widget(spec):
                widgets.append(_default(spec) if value is None else value)
                if has_control(key, spec):
                    widgets.append("fixed")
        nodes.append({"id": ids[nid], "type": n["class_type"], "pos": list(layout[nid]), "size": list(sizes[nid]),
                      "flags": {}, "order": order.index(nid), "mode": 0, "inputs": inputs, "outputs": [],
                      "title": n["title"], "properties": {"Node name for S&R": n["class_type"]},
                      "widgets_values": widgets})
    for node, (nid, n) in zip(nodes, g.items()):
        info = object_info[n["class_type"]]
        names = info.get("output_name") or info["output"]
        node["outputs"] = [{"name": names[i], "type": t, "links": outputs_links.get((nid, i), []), "slot_index": i}
                           for i, t in enumerate(info["output"])]
    note_id = max(ids.values()) + 1
    nodes.append({"id": note_id, "type": "Note", "pos": [0, 160], "size": [340, 320], "flags": {},
                  "order": len(nodes), "mode": 0, "inputs": [], "outputs": [], "title": "About this template",
                  "properties": {}, "widgets_values": [note],
                  "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 260]}}, "version": 0.4}


def _default(spec):
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "default" in opts:
        return opts["default"]
    choices = combo_options(spec)
    return choices[0] if choices else None


def _topological(g: dict) -> list:
    done, out = set(), []

    def visit(nid):
        if nid in done:
            return
        for v in g[nid]["inputs"].values():
            if isinstance(v, list):
                visit(v[0])
        done.add(nid)
        out.append(nid)
    for nid in g:
        visit(nid)
    return out


# ---- validation against /object_info -----------------------------------------------------------

def check_value(node_type: str, key: str, spec, value) -> list:
    """Problems with one widget value, the way ComfyUI's validate_inputs sees them."""
    where = f"{node_type}.{key}={value!r}"
    choices = combo_options(spec)
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if choices is not None:
        return [] if value in choices else [f"{where}: not one of {choices[:8]}..."]
    kind = spec[0]
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: not an INT"]
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return [f"{where}: not a FLOAT"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: not a BOOLEAN"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: not a STRING"]
    else:
        return [f"{where}: a {kind} input needs a link, got a value"]
    bad = []
    if "min" in opts and value < opts["min"]:
        bad.append(f"{where}: below min {opts['min']}")
    if "max" in opts and value > opts["max"]:
        bad.append(f"{where}: above max {opts['max']}")
    return bad


def validate_api(prompt: dict, object_info: dict) -> list:
    problems = []
    for nid, node in prompt.items():
        ctype = node.get("class_type")
        if ctype not in object_info:
            problems.append(f"node {nid}: unknown type {ctype}")
            continue
        info = object_info[ctype]
        specs = {k: (spec, req) for k, spec, req in input_specs(info)}
        for key in node["inputs"]:
            if key not in specs:
                problems.append(f"node {nid} {ctype}: unknown input {key}")
        for key, (spec, required) in specs.items():
            if key not in node["inputs"]:
                if required:
                    problems.append(f"node {nid} {ctype}: required input {key} missing")
                continue
            value = node["inputs"][key]
            if isinstance(value, list):
                src, slot = value
                if src not in prompt:
                    problems.append(f"node {nid}.{key}: link from missing node {src}")
                    continue
                if prompt[src].get("class_type") not in object_info:
                    continue  # reported on that node
                out_types = object_info[prompt[src]["class_type"]]["output"]
                if not 0 <= slot < len(out_types):
                    problems.append(f"node {nid}.{key}: output slot {slot} does not exist on {src}")
                elif out_types[slot] != socket_type(spec) and socket_type(spec) != "*":
                    problems.append(f"node {nid}.{key}: {out_types[slot]} linked into {socket_type(spec)}")
            else:
                problems += [f"node {nid}: {p}" for p in check_value(ctype, key, spec, value)]
    return problems


def validate_ui(workflow: dict, object_info: dict) -> list:
    problems = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for n in workflow["nodes"]:
        if n["type"] in VIRTUAL_NODES:
            continue
        if n["type"] not in object_info:
            problems.append(f"node {n['id']}: unknown type {n['type']}")
            continue
        info = object_info[n["type"]]
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        values = list(n.get("widgets_values", []))
        for key, spec, required in input_specs(info):
            if key in linked:
                continue
            if not is_widget(spec):
                if required:
                    problems.append(f"node {n['id']} {n['type']}: required input {key} not linked")
                continue
            if not values:
                problems.append(f"node {n['id']} {n['type']}: no widget value for {key}")
                continue
            problems += [f"node {n['id']}: {p}" for p in check_value(n["type"], key, spec, values.pop(0))]
            if has_control(key, spec):  # the editor reads the next value as the control widget's
                control = values.pop(0) if values else None
                if control not in CONTROL_MODES:
                    problems.append(f"node {n['id']} {n['type']}: {key} needs its control_after_generate value "
                                    f"(one of {', '.join(CONTROL_MODES)}) next, got {control!r}")
        if values:
            problems.append(f"node {n['id']} {n['type']}: {len(values)} widget values left over: {values}")
    for link in workflow["links"]:
        lid, src, sslot, dst, dslot, ltype = link
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: joins a missing node")
            continue
        s_info, d_info = object_info.get(nodes[src]["type"]), object_info.get(nodes[dst]["type"])
        if s_info is None or d_info is None:
            continue
        out_type = s_info["output"][sslot] if sslot < len(s_info["output"]) else None
        d_inputs = nodes[dst].get("inputs", [])
        if dslot >= len(d_inputs) or d_inputs[dslot].get("link") != lid:
            problems.append(f"link {lid}: target slot {dslot} of node {dst} does not hold this link")
            continue
        name = d_inputs[dslot]["name"]
        specs = {k: spec for k, spec, _ in input_specs(d_info)}
        in_type = socket_type(specs[name]) if name in specs else None
        if not (out_type == ltype == in_type):
            problems.append(f"link {lid}: {nodes[src]['type']}[{sslot}] {out_type} -> "
                            f"{nodes[dst]['type']}.{name} {in_type} (declared {ltype})")
        if lid not in (nodes[src]["outputs"][sslot].get("links") or []):
            problems.append(f"link {lid}: not listed on the output of node {src}")
    return problems


def write_all(object_info: dict, out_dir: Path = OUT_DIR) -> list:
    written = []
    for name in [*TEMPLATES, FINETUNE]:
        for suffix, data in (("", ui_workflow(name, object_info)), ("_api", api_prompt(name))):
            # API twins go to api/: the template browser lists example_workflows/*.json as UI graphs
            path = (out_dir / "api" if suffix else out_dir) / f"{name}{suffix}.json"
            path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
            written.append(path)
    return written


def main():
    from tests.support.comfy_server import ComfyServer
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp))
        try:
            server.start()
            info = server.get("/object_info")
        finally:
            server.stop()
    for path in write_all(info):
        print(path.relative_to(REPO))


if __name__ == "__main__":
    main()
