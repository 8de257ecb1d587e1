"""The σ-graph route (/fewstep/sigmas), its strict validation, the node opt-in declarations and the
Preview Sigmas node: in-process through the pack ComfyUI loaded, and over HTTP on a real server."""
import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LIVE_NODES = ("FewStepKarrasSigmas", "FewStepTimestepPowerSigmas", "FewStepFSchedulerSigmas")


@pytest.fixture(scope="module")
def sg(comfy):
    _, pack = comfy
    return pack.bridge.sigma_graph


def q(**kw):
    return {k: [str(v)] for k, v in kw.items()}


def get(server, path, **params):
    url = server.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def lab(comfy, schedule="sd_discrete"):
    nodes, _ = comfy
    return nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"].execute("gmm", 2, 0.1, 0, schedule)[0]


# --- the route runs the node itself: what the graph shows is what the run gives ------------------

@pytest.mark.parametrize("node_id, params, call", [
    ("FewStepKarrasSigmas", dict(steps=8, sigma_max=0, sigma_min=0, rho=7, model="sd_discrete"),
     dict(steps=8, sigma_max=0.0, sigma_min=0.0, rho=7.0, append_zero=True, denoise=1.0)),
    ("FewStepKarrasSigmas", dict(steps=5, sigma_max=80, sigma_min=0.002, rho=7, append_zero="false", denoise=0.5),
     dict(steps=5, sigma_max=80.0, sigma_min=0.002, rho=7.0, append_zero=False, denoise=0.5)),
    ("FewStepTimestepPowerSigmas", dict(steps=6, rho_t=1.2, model="sd_discrete"),
     dict(steps=6, rho_t=1.2, t_max=-1.0, t_min=-1.0, append_zero=True, interpolation="log_sigma", denoise=1.0)),
    ("FewStepFSchedulerSigmas", dict(preset="1024x6", model="sd_discrete"),
     dict(preset="1024x6", steps=6, p1=1.2, p2=5.0, grid_points=8, stop_index=6, t_max=-1.0,
          interpolation="auto", denoise=1.0)),
    ("FewStepFSchedulerSigmas", dict(preset="custom", steps=8, p2=7, grid_points=12, stop_index=9),
     dict(preset="custom", steps=8, p1=1.2, p2=7.0, grid_points=12, stop_index=9, t_max=-1.0,
          interpolation="auto", denoise=1.0)),
])
def test_route_answers_what_the_node_gives(sg, comfy, node_id, params, call):
    nodes, _ = comfy
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    out = sg.compute(q(node=node_id, **params))
    model = lab(comfy) if "model" in params or cls.INPUT_TYPES()["required"].get("model") else None
    want = getattr(cls(), cls.FUNCTION)(**call, **({"model": model} if model is not None else {}))[0]
    assert out["sigmas"] == [float(s) for s in want.double().tolist()]
    assert out["steps"] == want.numel() - 1
    assert out["sigma_stop"] == (out["sigmas"][-1] if want[-1] > 0 else None)
    if model is not None:
        assert out["model"]["name"] == "sd_discrete"
        assert out["model"]["sigma_min"] == pytest.approx(0.0291672, rel=1e-5)
        assert out["model"]["sigma_max"] == pytest.approx(14.614642, rel=1e-6)
    else:
        assert out["model"] is None


def test_fscheduler_graph_marks_sigma_stop(sg):
    out = sg.compute(q(node="FewStepFSchedulerSigmas", preset="1024x6"))
    assert out["sigmas"][-1] > 0 and out["sigma_stop"] == out["sigmas"][-1]
    assert [round(s, 4) for s in out["sigmas"]][:3] == [14.6146, 5.2124, 2.4311]


@pytest.mark.parametrize("resolution, steps, on", [("1024 (SDXL)", 8, [5, 6, 7]),
                                                   ("1024 (SDXL)", 6, [3, 4, 5]),
                                                   ("512 (SD1.5)", 6, [4, 5]),
                                                   ("512 (SD1.5)", 8, [])])
def test_recipe_graph_shows_published_schedule_and_freeu_window(sg, comfy, resolution, steps, on):
    """The recipe's graph runs its `graph` method (no FreeU patch on the reference model) and shades
    the calls whose sigma passes the recipe's gate: the paper's start indices (fscheduler.md §2)."""
    nodes, _ = comfy
    out = sg.compute(q(node="FewStepFSchedulerRecipe", resolution=resolution, steps=steps, solver="unipc_fs"))
    lab_model = lab(comfy)
    want = nodes.NODE_CLASS_MAPPINGS["FewStepFSchedulerRecipe"].execute(lab_model, resolution, steps, "unipc_fs",
                                                                        freeu="off")[1]
    assert out["sigmas"] == pytest.approx([float(s) for s in want], abs=1e-6)
    assert out["sigma_stop"] == pytest.approx(float(want[-1]))
    assert (out["freeu"] or {"steps": []})["steps"] == on


def test_reference_models_are_lab_model_sampling(sg, comfy):
    for name, lo, hi in (("sd_discrete", 0.0291672, 14.614642), ("edm", 0.002, 80.0)):
        ms = sg.reference_model(name).get_model_object("model_sampling")
        assert type(ms).__bases__ == type(lab(comfy, name).get_model_object("model_sampling")).__bases__
        assert sg.model_range(name) == pytest.approx((lo, hi), rel=1e-5)


# --- strict validation: clear 400s naming the parameter ----------------------------------------

KARRAS = dict(node="FewStepKarrasSigmas", steps=8, sigma_min=0.03, sigma_max=14.6)


@pytest.mark.parametrize("change, parameter, phrase", [
    (dict(steps="abc"), "steps", "integer"),
    (dict(steps="8.5"), "steps", "integer"),
    (dict(steps="0"), "steps", ">= 1"),
    (dict(steps="1001"), "steps", "<= 1000"),          # the route's cap, below the node's 10000
    (dict(steps="1" * 20), "steps", "integer"),
    (dict(sigma_max="nan"), "sigma_max", "finite"),
    (dict(sigma_max="inf"), "sigma_max", "finite"),
    (dict(sigma_max="1e999"), "sigma_max", "finite"),
    (dict(sigma_max="0x10"), "sigma_max", "finite"),
    (dict(sigma_max=""), "sigma_max", "finite"),
    (dict(sigma_max="1,5"), "sigma_max", "finite"),
    (dict(sigma_max="6000"), "sigma_max", "<= 5000"),  # the node's own max
    (dict(sigma_min="-1"), "sigma_min", ">= 0"),
    (dict(rho="0"), "rho", ">= 0.01"),
    (dict(append_zero="maybe"), "append_zero", "true or false"),
    (dict(sigma_min="20"), "sigma_min", "sigma_min"),     # σ_min >= σ_max: the schedule's own check
    (dict(model="flux"), "model", "one of"),
    (dict(bogus="1"), "bogus", "unknown parameter"),
    (dict(node="KSampler"), "node", "one of"),
    (dict(node="FewStepPreviewSigmas"), "node", "one of"),  # after-run graphs are not computed
    (dict(node="FewStepFSchedulerSigmas", preset="4096x3"), "preset", "one of"),
    (dict(node="FewStepFSchedulerSigmas", stop_index="9", grid_points="8"), "stop_index", "grid_points"),
    (dict(node="FewStepTimestepPowerSigmas", model="edm"), "model", "EDM"),
])
def test_bad_parameters_are_refused_by_name(sg, change, parameter, phrase):
    params = {**KARRAS, **change}
    if params["node"] != "FewStepKarrasSigmas":
        params = {k: v for k, v in params.items() if k not in ("sigma_min", "sigma_max", "steps") or k in change}
    with pytest.raises(sg.RouteError) as e:
        sg.compute(q(**params))
    assert e.value.parameter == parameter, str(e.value)
    assert phrase in str(e.value)


def test_missing_and_repeated_parameters(sg):
    with pytest.raises(sg.RouteError, match="node is required"):
        sg.compute(q(steps=8))
    with pytest.raises(sg.RouteError, match="more than once") as e:
        sg.compute({**q(**KARRAS), "steps": ["8", "9"]})
    assert e.value.parameter == "steps"
    # an optional MODEL left open stays open: the node's own error, as in the run
    with pytest.raises(sg.RouteError, match="connect a MODEL") as e:
        sg.compute(q(node="FewStepKarrasSigmas"))
    assert e.value.parameter == "sigma_min"


def test_freeu_window_by_step_and_by_sigma(sg):
    """Declared windows mean what the FreeU node's window means (freeu/window.py): steps inclusive
    with -1 the last point, σ bounds with start >= end; the graph shades the calls made inside."""
    sig = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]
    shaded = lambda *a: sg.freeu_steps(sig, sg.window_from_declaration(sig, *a))  # noqa: E731
    assert sg.window_from_declaration(sig, None, None, "step") is None and sg.freeu_steps(sig, None) is None
    assert shaded(2, None, "step")["steps"] == [2, 3, 4]
    assert shaded(1, 3, "step") == {"start_step": 1, "end_step": 4, "steps": [1, 2, 3]}
    assert shaded(2.0, 0.6, "sigma")["steps"] == [2, 3]   # calls made at σ in [0.6, 2]
    assert shaded(100, 50, "sigma")["steps"] == []
    with pytest.raises(ValueError, match="start_sigma"):
        shaded(0.5, 2.0, "sigma")


def test_freeu_window_from_a_declaration(sg, comfy, monkeypatch):
    """Both declaration forms reach the answer: widget/constant bounds, and a node method that
    returns the pack's one window type."""
    nodes, pack = comfy
    cls = nodes.NODE_CLASS_MAPPINGS["FewStepKarrasSigmas"]
    monkeypatch.setattr(cls, "SIGMA_GRAPH", {"live": True, "freeu": {"start": "rho", "end": 6}})
    out = sg.compute(q(**KARRAS, rho=3))
    assert out["freeu"] == {"start_step": 3, "end_step": 7, "steps": [3, 4, 5, 6]}
    window = pack.freeu.window.SigmaWindow
    monkeypatch.setattr(cls, "window", classmethod(lambda c, sigmas, **inputs: window(high=sigmas[2] + 1e-9, low=0.0)),
                        raising=False)
    monkeypatch.setattr(cls, "SIGMA_GRAPH", {"live": True, "freeu": "window"})
    assert sg.compute(q(**KARRAS))["freeu"]["steps"] == [2, 3, 4, 5, 6, 7]


# --- node opt-in declarations ------------------------------------------------------------------

def test_every_pack_sigmas_node_declares_a_graph(sg, comfy):
    """Every pack node with a SIGMAS output carries a graph; a new one adds SIGMA_GRAPH to its class
    (nodes/sigma_graph.py says how)."""
    _, pack = comfy
    specs = sg.graph_specs()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        if "SIGMAS" in getattr(cls, "RETURN_TYPES", ()):
            assert node_id in specs, f"{node_id} returns SIGMAS but declares no SIGMA_GRAPH"
    assert specs["FewStepPreviewSigmas"] == {"live": False}
    for node_id in LIVE_NODES:
        assert specs[node_id]["live"] and "steps" in specs[node_id]["widgets"]
        assert list(specs[node_id]["models"]) == ["model"]


class _Node:
    RETURN_TYPES = ("SIGMAS",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {}), "kind": (["a", "b"], {}), "model": ("MODEL", {})},
                "optional": {"latent": ("LATENT", {})}}


class _NeedsLatent(_Node):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {}), "latent": ("LATENT", {})}}


def test_spec_check_lists_inputs_and_refuses_mistakes(sg):
    spec = sg.check_spec("N", _Node, {"live": True, "freeu": {"start": "steps", "unit": "sigma"}})
    assert spec == {"live": True, "widgets": ["steps", "kind"], "models": {"model": True}}
    assert sg.check_spec("N", _Node, {}) == {"live": False}
    for cls, bad, phrase in [(_Node, {"live": True, "freeu": {"start": "missing"}}, "not an input"),
                             (_Node, {"live": True, "freeu": {"unit": "percent"}}, "unit"),
                             (_Node, {"live": True, "freeu": "no_such_method"}, "does not exist"),
                             (_Node, {"freeu": {"start": "steps"}}, "live"),
                             (_Node, {"liv": True}, "keys"),
                             (_NeedsLatent, {"live": True}, "latent")]:
        with pytest.raises(ValueError, match=phrase):
            sg.check_spec("N", cls, bad)


# --- preview node ------------------------------------------------------------------------------

def test_preview_node_returns_the_values_for_the_ui(comfy):
    nodes, _ = comfy
    node = nodes.NODE_CLASS_MAPPINGS["FewStepPreviewSigmas"]
    ui = node.execute(torch.tensor([14.6146, 3.0, 0.5, 0.0])).ui
    assert ui["fewstep_sigmas"] == pytest.approx([14.6146, 3.0, 0.5, 0.0], rel=1e-6)
    assert ui["text"][0].splitlines()[1].split() == ["1", "3"]
    nan = node.execute(torch.tensor([1.0, float("nan")])).ui["fewstep_sigmas"]
    assert nan[1] is None and json.dumps(nan)  # JSON-safe for the websocket
    with pytest.raises(ValueError, match="empty"):
        node.execute(torch.tensor([]))


# --- over HTTP on a running server -------------------------------------------------------------

def test_route_over_http(server):
    status, body = get(server, "/fewstep/sigmas", **KARRAS)
    assert status == 200 and len(body["sigmas"]) == 9
    status2, body2 = get(server, "/api/fewstep/sigmas", **KARRAS)  # the frontend's api.fetchApi path
    assert status2 == 200 and body2 == body
    status, body = get(server, "/fewstep/sigmas", **{**KARRAS, "steps": "many"})
    assert status == 400 and body["parameter"] == "steps" and "integer" in body["error"]
    status, body = get(server, "/fewstep/sigmas", **{**KARRAS, "sigma_min": "30"})
    assert status == 400 and body["parameter"] == "sigma_min"
    status, spec = get(server, "/fewstep/sigma_graphs")
    assert status == 200 and spec["max_steps"] == 1000
    assert spec["nodes"]["FewStepPreviewSigmas"] == {"live": False}
    assert all(spec["nodes"][n]["live"] for n in LIVE_NODES)


def test_graph_equals_the_run_over_http(server):
    """The live graph's numbers (route) equal the SIGMAS the prompt computes, shown by the preview
    node; and a core scheduler's SIGMAS reach the preview unchanged."""
    import comfy.k_diffusion.sampling as kds
    prompt = json.loads((REPO / "example_workflows" / "api" / "sigma_graphs_api.json").read_text())
    entry = server.run_prompt(prompt)
    node = prompt["3"]
    params = {k: str(v).lower() if isinstance(v, bool) else str(v)
              for k, v in node["inputs"].items() if not isinstance(v, list)}
    status, body = get(server, "/fewstep/sigmas", node=node["class_type"], model="sd_discrete", **params)
    assert status == 200, body
    assert entry["outputs"]["4"]["fewstep_sigmas"] == pytest.approx(body["sigmas"], rel=1e-6)
    assert body["sigma_stop"] is not None

    core = json.loads((REPO / "example_workflows" / "api" / "sigma_preview_api.json").read_text())
    values = server.run_prompt(core)["outputs"]["3"]["fewstep_sigmas"]
    assert values == pytest.approx(kds.get_sigmas_karras(8, 0.0291675, 14.614642).tolist(), rel=1e-4)
    assert values[-1] == 0 and all(math.isfinite(v) for v in values)
