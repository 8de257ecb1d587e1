"""The σ-graph route (/fewstep/sigmas), its strict validation, the node opt-in declarations and the
Preview Sigmas node: in-process through the pack ComfyUI loaded, and over HTTP on a real server."""
import importlib
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


@pytest.fixture(scope="module")
def sg(comfy):
    _, pack = comfy
    return sys.modules[pack.__name__ + ".nodes.sigma_graph"]


@pytest.fixture(scope="module")
def schedules(comfy):
    _, pack = comfy
    return importlib.import_module(pack.__name__ + ".samplers.schedules")


def q(**kw):
    return {k: [str(v)] for k, v in kw.items()}


def get(server, path, **params):
    url = server.url + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


# --- route maths: the pack's own schedules, nothing recomputed --------------------------------

def test_karras_route_equals_the_schedule_function(sg, schedules):
    out = sg.compute(q(schedule="karras", steps=8, sigma_min=0.03, sigma_max=14.6, rho=7))
    want = schedules.karras_sigmas(8, 0.03, 14.6, rho=7.0)
    assert out["sigmas"] == [float(s) for s in want.tolist()]
    assert out["steps"] == 8 and out["sigmas"][-1] == 0.0 and out["sigma_stop"] is None
    assert out["model"]["name"] == "sd_discrete"
    assert abs(out["model"]["sigma_min"] - 0.029167) < 1e-4 and abs(out["model"]["sigma_max"] - 14.6146) < 1e-3


def test_reference_models_are_comfyui_model_sampling(sg, comfy):
    """The marked σ range comes from ComfyUI's own model_sampling, like the lab model's."""
    nodes, _ = comfy
    for name in ("sd_discrete", "edm"):
        lab = nodes.NODE_CLASS_MAPPINGS["FewStepLabModel"]().build("gmm", 2, 0.1, 0, name)[0]
        ms = lab.get_model_object("model_sampling")
        assert torch.equal(sg.model_table(name), ms.sigmas.cpu())
    assert sg.model_range("edm") == pytest.approx((0.002, 80.0), rel=1e-5)


# --- strict validation: clear 400s naming the parameter ----------------------------------------

GOOD = dict(schedule="karras", steps=8, sigma_min=0.03, sigma_max=14.6)


@pytest.mark.parametrize("change, parameter, phrase", [
    (dict(steps="abc"), "steps", "integer"),
    (dict(steps="8.5"), "steps", "integer"),
    (dict(steps="0"), "steps", ">= 1"),
    (dict(steps="1001"), "steps", "<= 1000"),
    (dict(steps="1" * 12), "steps", "integer"),
    (dict(sigma_max="nan"), "sigma_max", "finite"),
    (dict(sigma_max="inf"), "sigma_max", "finite"),
    (dict(sigma_max="1e999"), "sigma_max", "finite"),
    (dict(sigma_max="0x10"), "sigma_max", "finite"),
    (dict(sigma_max=""), "sigma_max", "finite"),
    (dict(sigma_max="1e5"), "sigma_max", "<= 10000"),
    (dict(sigma_min="0"), "sigma_min", "> 0"),
    (dict(sigma_min="-1"), "sigma_min", "> 0"),
    (dict(rho="0"), "rho", "> 0"),
    (dict(sigma_min="20"), "sigma_min", "sigma_min"),     # σ_min >= σ_max: the schedule's own check
    (dict(schedule="nope"), "schedule", "one of"),
    (dict(model="flux"), "model", "one of"),
    (dict(bogus="1"), "bogus", "unknown parameter"),
    (dict(freeu_unit="percent"), "freeu_unit", "one of"),
    (dict(freeu_start="-1"), "freeu_start", ">= 0"),
])
def test_bad_parameters_are_refused_by_name(sg, change, parameter, phrase):
    with pytest.raises(sg.RouteError) as e:
        sg.compute(q(**{**GOOD, **change}))
    assert e.value.parameter == parameter, str(e.value)
    assert phrase in str(e.value)


def test_missing_and_repeated_parameters(sg):
    with pytest.raises(sg.RouteError, match="schedule is required"):
        sg.compute(q(steps=8))
    with pytest.raises(sg.RouteError, match="sigma_max is required"):
        sg.compute(q(schedule="karras", steps=8, sigma_min=0.1))
    with pytest.raises(sg.RouteError, match="more than once") as e:
        sg.compute({**q(**GOOD), "steps": ["8", "9"]})
    assert e.value.parameter == "steps"


def test_freeu_window_by_step_and_by_sigma(sg):
    sig = [10.0, 5.0, 2.0, 1.0, 0.5, 0.0]
    assert sg.freeu_window(sig, None, None, "step") is None
    assert sg.freeu_window(sig, 2, None, "step")["steps"] == [2, 3, 4]
    assert sg.freeu_window(sig, 1, 3, "step") == {"start_step": 1, "end_step": 3, "steps": [1, 2]}
    # σ window: the model calls made at σ within [end, start]
    assert sg.freeu_window(sig, 2.0, 0.6, "sigma")["steps"] == [2, 3]
    assert sg.freeu_window(sig, 100, 50, "sigma")["steps"] == []
    out = sg.compute(q(**GOOD, freeu_start=5, freeu_unit="step"))
    assert out["freeu"]["steps"] == [5, 6, 7]


# --- node opt-in declarations ------------------------------------------------------------------

def test_every_pack_sigmas_node_declares_a_graph(sg, comfy):
    """Every pack node with a SIGMAS output (and the preview node) carries a graph; a new one must
    add SIGMA_GRAPH to its class (see nodes/sigma_graph.py)."""
    _, pack = comfy
    specs = sg.graph_specs()
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        if "SIGMAS" in getattr(cls, "RETURN_TYPES", ()):
            assert node_id in specs, f"{node_id} returns SIGMAS but declares no SIGMA_GRAPH"
    assert specs["FewStepPreviewSigmas"] == {"schedule": None, "params": {}}
    for node_id, spec in specs.items():
        if spec["schedule"]:
            # a live graph must be able to ask for every required route parameter
            names = ([spec["schedule"]] if isinstance(spec["schedule"], str) else [])
            for name in names:
                required = [k for k, p in sg.ROUTE_SCHEDULES[name].params.items()
                            if p.default is sg._REQUIRED]
                assert set(required) <= set(spec["params"]), (node_id, required, spec["params"])


class _Node:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {}), "lo": ("FLOAT", {}), "hi": ("FLOAT", {}),
                             "kind": (["karras"], {}), "start": ("INT", {})}}


def test_spec_check_fills_names_and_refuses_mistakes(sg):
    spec = sg.check_spec("N", _Node, {"schedule": "karras", "params": {"sigma_min": "lo", "sigma_max": "hi"},
                                      "freeu": {"start": "start"}})
    assert spec["params"] == {"sigma_min": "lo", "sigma_max": "hi", "steps": "steps"}
    assert spec["freeu"] == {"start": "start", "unit": "step"}
    assert sg.check_spec("N", _Node, {"schedule": {"widget": "kind"}})["schedule"] == {"widget": "kind"}
    for bad, phrase in [({"schedule": "nope"}, "unknown schedule"),
                        ({"schedule": "karras", "params": {"sigma_min": "missing"}}, "not an input"),
                        ({"schedule": "karras", "params": {"nope": "lo"}}, "unknown route parameter"),
                        ({"schedule": "karras", "freeu": {"start": "missing"}}, "not an input"),
                        ({"schedule": "karras", "freeu": {"unit": "percent"}}, "unit"),
                        ({"scheduel": "karras"}, "keys")]:
        with pytest.raises(ValueError, match=phrase):
            sg.check_spec("N", _Node, bad)


# --- preview node ------------------------------------------------------------------------------

def test_preview_node_returns_the_values_for_the_ui(comfy):
    nodes, _ = comfy
    node = nodes.NODE_CLASS_MAPPINGS["FewStepPreviewSigmas"]()
    sigmas = torch.tensor([14.6146, 3.0, 0.5, 0.0])
    ui = node.preview(sigmas)["ui"]
    assert ui["fewstep_sigmas"] == pytest.approx([14.6146, 3.0, 0.5, 0.0], rel=1e-6)
    assert ui["text"][0].splitlines()[1].split() == ["1", "3"]
    nan = node.preview(torch.tensor([1.0, float("nan")]))["ui"]["fewstep_sigmas"]
    assert nan[1] is None and json.dumps(nan)  # JSON-safe for the websocket
    with pytest.raises(ValueError, match="empty"):
        node.preview(torch.tensor([]))


# --- over HTTP on a running server -------------------------------------------------------------

def test_route_over_http(server):
    status, body = get(server, "/fewstep/sigmas", **GOOD)
    assert status == 200 and len(body["sigmas"]) == 9
    status2, body2 = get(server, "/api/fewstep/sigmas", **GOOD)  # the frontend's api.fetchApi path
    assert status2 == 200 and body2 == body
    status, body = get(server, "/fewstep/sigmas", **{**GOOD, "steps": "many"})
    assert status == 400 and body["parameter"] == "steps" and "integer" in body["error"]
    status, body = get(server, "/fewstep/sigmas", **{**GOOD, "sigma_min": "30"})
    assert status == 400 and body["parameter"] == "sigma_min"
    status, spec = get(server, "/fewstep/sigma_graphs")
    assert status == 200 and "FewStepPreviewSigmas" in spec["nodes"] and "karras" in spec["schedules"]
    assert spec["schedules"]["karras"]["params"]["steps"]["hi"] == 1000


def test_preview_workflow_over_http_shows_core_sigmas(server, comfy):
    """A core scheduler's SIGMAS reach the preview node's UI output (and /history) unchanged."""
    import comfy.k_diffusion.sampling as kds
    prompt = json.loads((REPO / "example_workflows" / "sigma_preview_api.json").read_text())
    entry = server.run_prompt(prompt)
    values = entry["outputs"]["3"]["fewstep_sigmas"]
    want = kds.get_sigmas_karras(8, 0.0291675, 14.614642).tolist()
    assert values == pytest.approx(want, rel=1e-4)
    assert values[-1] == 0 and all(math.isfinite(v) for v in values)
