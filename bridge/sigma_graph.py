"""Server side of the σ-schedule graphs drawn in the editor (web/sigma_graph.js).

GET /fewstep/sigmas?node=FewStepKarrasSigmas&steps=8&rho=7&model=sd_discrete
    runs that node's own function on the widget values it is given, with a reference model (an
    exact-denoiser lab model, i.e. a real ComfyUI ModelPatcher whose model_sampling is the SD1.5/SDXL
    table or EDM's) for each MODEL input, and answers its SIGMAS with what the graph marks: the
    model's σ range, σ_stop (a schedule ending above 0), the FreeU window. So the graph shows exactly
    what the node gives when the prompt runs, and the maths lives only in samplers/schedules.py.
    Every parameter is checked strictly against the node's own INPUT_TYPES (known names only;
    numbers only for INT/FLOAT, finite and within the node's min/max; booleans; combo choices; steps
    at most MAX_STEPS) and a bad request gets HTTP 400 with {"error", "parameter"}; an error the node
    raises (a ValueError naming its parameter) is answered the same way.

GET /fewstep/sigma_graphs
    the nodes that carry a graph (with the inputs the browser must send), the reference models and
    the bounds, so the widget needs no per-node code.

A node opts in with one class attribute:
    SIGMA_GRAPH = {"live": True}                  # drawn live from its widgets through the route
    SIGMA_GRAPH = {"live": True,
                   "freeu": {"start": "freeu_start", "end": "freeu_end", "unit": "step"}}
                   # FreeU window from widgets, in the FreeU node's terms ("step": indices into
                   # the schedule, both ends inclusive, -1 = last; "sigma": σ bounds, start >= end);
                   # or "freeu": "method_name", a method (sigmas, **inputs) -> freeu.window.SigmaWindow
                   # or None, for nodes that derive the window themselves (e.g. a recipe preset)
    SIGMA_GRAPH = {"live": True, "function": "method_name"}
                   # the route calls this method (same inputs, same outputs) instead of FUNCTION:
                   # for nodes whose FUNCTION does more than the graph needs (the recipe patches
                   # the model with FreeU, which the reference model cannot take)
    SIGMA_GRAPH = {}                              # drawn after each run from its UI message
                   # {"ui": {"fewstep_sigmas": [...]}} (the Preview Sigmas node does this)
Routes are registered on ComfyUI's PromptServer at import when a server exists; importing the pack
without one (in-process tests, scripts) registers nothing and costs nothing."""
from __future__ import annotations

import functools
import logging
import math
import re
import sys

from ..freeu.window import SigmaWindow, window_from_sigma, window_from_steps

ROUTE = "/fewstep/sigmas"
SPEC_ROUTE = "/fewstep/sigma_graphs"
UI_KEY = "fewstep_sigmas"
MAX_SHOWN = 10000         # a schedule longer than this is refused by the preview, not truncated silently
MAX_STEPS = 1000          # largest `steps` the route computes (a graph, not a sampling run)
STEP_INPUTS = ("steps",)  # INT inputs capped at MAX_STEPS
WIDGET_TYPES = ("INT", "FLOAT", "BOOLEAN")

REFERENCE_MODELS = {
    "sd_discrete": "SD1.5 / SDXL eps: 1000 discrete σ, 0.0292-14.61",
    "edm": "continuous EDM: σ 0.002-80",
}


class RouteError(ValueError):
    """A bad request: answered with HTTP 400 and {"error": message, "parameter": name}."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


# --- declarations ------------------------------------------------------------------------------

_NODES: dict = {}  # node id -> class, given by the pack at import (this layer does not import nodes/)


def use_nodes(node_classes: dict) -> None:
    """The node classes whose SIGMA_GRAPH declarations the routes serve."""
    _NODES.clear()
    _NODES.update(node_classes)


def _pack_nodes() -> dict:
    return _NODES


def input_kind(spec) -> str | None:
    """'INT', 'FLOAT', 'BOOLEAN', 'COMBO', 'MODEL' or None (an input the route cannot supply)."""
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return "COMBO"
    if kind == "COMBO":  # newer ComfyUI spells combos as ("COMBO", {"options": [...]})
        return "COMBO"
    if kind in WIDGET_TYPES or kind == "MODEL":
        return kind
    return None


def combo_choices(spec) -> list:
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    return list((spec[1] if len(spec) > 1 else {}).get("options", []))


def node_inputs(cls) -> dict:
    """name -> (kind, options, required) of the inputs the route can supply."""
    types = cls.INPUT_TYPES()
    out = {}
    for section, required in (("required", True), ("optional", False)):
        for name, spec in (types.get(section) or {}).items():
            spec = tuple(spec) if isinstance(spec, (list, tuple)) else (spec,)
            kind = input_kind(spec)
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if kind == "COMBO":
                options = {**options, "__choices__": combo_choices(spec)}
            out[name] = (kind, options, required)
    return out


def check_spec(node_id: str, cls, spec) -> dict:
    """A node's SIGMA_GRAPH, checked, with what the browser needs to send. ValueError naming the
    node for a declaration that cannot work."""
    allowed = {"live", "freeu", "function"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        raise ValueError(f"{node_id}.SIGMA_GRAPH must be a dict with keys from {sorted(allowed)}")
    if not spec.get("live"):
        if "freeu" in spec or "function" in spec:
            raise ValueError(f"{node_id}.SIGMA_GRAPH: freeu and function need live=True")
        return {"live": False}
    if "SIGMAS" not in getattr(cls, "RETURN_TYPES", ()):
        raise ValueError(f"{node_id}.SIGMA_GRAPH: live graphs need a SIGMAS output")
    inputs = node_inputs(cls)
    for name, (kind, _, required) in inputs.items():
        if kind is None and required:
            raise ValueError(f"{node_id}.SIGMA_GRAPH: required input {name!r} is neither a number, "
                             f"boolean, combo nor MODEL, so the route cannot run the node")
    out = {
        "live": True,
        "widgets": [n for n, (k, _, _) in inputs.items() if k in WIDGET_TYPES + ("COMBO",)],
        "models": {n: req for n, (k, _, req) in inputs.items() if k == "MODEL"},
    }
    if "function" in spec and not callable(getattr(cls, spec["function"], None)):
        raise ValueError(f"{node_id}.SIGMA_GRAPH function {spec['function']!r} does not exist")
    freeu = spec.get("freeu")
    if isinstance(freeu, str):
        if not callable(getattr(cls, freeu, None)):
            raise ValueError(f"{node_id}.SIGMA_GRAPH freeu method {freeu!r} does not exist")
    elif freeu is not None:
        if not isinstance(freeu, dict) or set(freeu) - {"start", "end", "unit"}:
            raise ValueError(f"{node_id}.SIGMA_GRAPH freeu must be a method name or a dict of start/end/unit")
        for end in ("start", "end"):
            if isinstance(freeu.get(end), str) and freeu[end] not in out["widgets"]:
                raise ValueError(f"{node_id}.SIGMA_GRAPH freeu {end} widget {freeu[end]!r} is not an input")
        if freeu.get("unit", "step") not in ("step", "sigma"):
            raise ValueError(f"{node_id}.SIGMA_GRAPH freeu unit must be 'step' or 'sigma'")
    return out


def graph_specs() -> dict:
    """Node id -> checked declaration of every pack node that carries a graph."""
    specs = {}
    for node_id, cls in _pack_nodes().items():
        spec = getattr(cls, "SIGMA_GRAPH", None)
        if spec is not None:
            specs[node_id] = check_spec(node_id, cls, spec)
    return specs


# --- parameter parsing -------------------------------------------------------------------------

_INT = re.compile(r"[+-]?\d{1,15}")
_FLOAT = re.compile(r"[+-]?(\d{1,30}(\.\d{0,30})?|\.\d{1,30})([eE][+-]?\d{1,3})?")
_BOOL = {"true": True, "false": False, "1": True, "0": False}


def parse_value(name: str, raw, kind: str, options: dict):
    """One query-string value -> a checked Python value for the node, or RouteError naming `name`."""
    if not isinstance(raw, str) or len(raw) > 64:
        raise RouteError(f"{name}: value missing or too long", name)
    text = raw.strip()
    if kind == "BOOLEAN":
        if text.lower() not in _BOOL:
            raise RouteError(f"{name} must be true or false, got {raw!r}", name)
        return _BOOL[text.lower()]
    if kind == "COMBO":
        choices = options.get("__choices__", [])
        for choice in choices:
            if text == str(choice):
                return choice
        raise RouteError(f"{name} must be one of {[str(c) for c in choices]}, got {raw!r}", name)
    if kind == "INT":
        if not _INT.fullmatch(text):
            raise RouteError(f"{name} must be an integer, got {raw!r}", name)
        value = int(text)
    else:
        if not _FLOAT.fullmatch(text):
            raise RouteError(f"{name} must be a finite number, got {raw!r}", name)
        value = float(text)
        if not math.isfinite(value):
            raise RouteError(f"{name} must be a finite number, got {raw!r}", name)
    lo, hi = options.get("min"), options.get("max")
    if name in STEP_INPUTS and kind == "INT":
        hi = MAX_STEPS if hi is None else min(hi, MAX_STEPS)
    if lo is not None and value < lo:
        raise RouteError(f"{name} must be >= {lo}, got {value}", name)
    if hi is not None and value > hi:
        raise RouteError(f"{name} must be <= {hi}, got {value}", name)
    return value


def _single_values(query) -> dict:
    items = {}
    for key in query.keys():
        values = query.getall(key) if hasattr(query, "getall") else query[key]
        values = [values] if isinstance(values, str) else list(values)
        if len(values) != 1 or key in items:
            raise RouteError(f"{key} given more than once", key)
        items[key] = values[0]
    return items


def parse_query(query):
    """(node id, node class, keyword arguments for its function). Raises RouteError."""
    items = _single_values(query)
    node_id = items.pop("node", None)
    nodes = _pack_nodes()
    live = sorted(n for n, c in nodes.items() if (getattr(c, "SIGMA_GRAPH", None) or {}).get("live"))
    if node_id is None:
        raise RouteError(f"node is required: one of {live}", "node")
    if node_id not in live:
        raise RouteError(f"node must be one of {live}, got {node_id!r}", "node")
    cls = nodes[node_id]
    inputs = node_inputs(cls)
    unknown = sorted(k for k in items if inputs.get(k, (None,))[0] is None)
    if unknown:
        allowed = sorted(k for k, v in inputs.items() if v[0] is not None)
        raise RouteError(f"unknown parameter {unknown[0]!r} for {node_id}; allowed: {allowed}", unknown[0])
    kwargs = {}
    for name, (kind, options, required) in inputs.items():
        if kind is None:
            continue
        if kind == "MODEL":
            if name in items:
                choice = items[name]
                if choice not in REFERENCE_MODELS:
                    raise RouteError(f"{name} must be one of {list(REFERENCE_MODELS)}, got {choice!r}", name)
                kwargs[name] = choice
            elif required:
                kwargs[name] = "sd_discrete"
            continue
        if name in items:
            kwargs[name] = parse_value(name, items[name], kind, options)
        elif "default" in options:
            kwargs[name] = parse_value(name, str(options["default"]).lower() if kind == "BOOLEAN"
                                       else str(options["default"]), kind, options)
        elif kind == "COMBO" and options["__choices__"]:
            kwargs[name] = options["__choices__"][0]
        elif required:
            raise RouteError(f"{name} is required for {node_id}", name)
    return node_id, cls, kwargs


def sigma_ui(sigmas) -> dict:
    """A node's UI message for the graph drawn after a run: the values (web/sigma_graph.js) and a
    text line per value."""
    values = [float(s) for s in sigmas.detach().reshape(-1).cpu().double().tolist()]
    if not values:
        raise ValueError("sigmas is empty: nothing to preview")
    if len(values) > MAX_SHOWN:
        raise ValueError(f"sigmas has {len(values)} values; the preview shows at most {MAX_SHOWN}")
    text = "\n".join(f"{i:>3}  {s:.6g}" for i, s in enumerate(values))
    return {UI_KEY: [v if math.isfinite(v) else None for v in values], "text": [text]}


# --- reference models ----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def reference_model(name: str):
    """A real ModelPatcher (the exact-denoiser lab) with the reference model's model_sampling."""
    from .lab_model import build_lab_model
    return build_lab_model("gmm", 1, 0.1, 0, name)


def model_range(name: str) -> tuple[float, float]:
    ms = reference_model(name).get_model_object("model_sampling")
    return float(ms.sigma_min), float(ms.sigma_max)


# --- the answer ----------------------------------------------------------------------------------

def window_from_declaration(sigmas: list[float], start, end, unit: str) -> SigmaWindow | None:
    """A widget-declared FreeU window, in the FreeU node's own terms: "step" = indices into the
    schedule, both ends inclusive, -1 = the last point (window_from_steps); "sigma" = σ bounds with
    start >= end (window_from_sigma). A missing end is open. None when neither end is given."""
    if start is None and end is None:
        return None
    if unit == "step":
        return window_from_steps(sigmas, 0 if start is None else start, -1 if end is None else end)
    return window_from_sigma(math.inf if start is None else start, 0.0 if end is None else end)


def freeu_steps(sigmas: list[float], window: SigmaWindow | None) -> dict | None:
    """What web/sigma_graph.js shades: the steps i (σ_i -> σ_i+1) whose model call, at σ_i, is inside
    the window, with the first and one past the last of them. None when there is no window."""
    if window is None:
        return None
    inside = window.calls_inside(sigmas[:-1])
    if not inside:
        return {"start_step": None, "end_step": None, "steps": []}
    return {"start_step": inside[0], "end_step": inside[-1] + 1, "steps": inside}


def _named_parameter(message: str, names) -> str | None:
    # The pack's checks start their message with the parameter's name ("rho must be > 0, ...").
    head = re.split(r"[\s:/]", message.strip(), maxsplit=1)[0]
    if head in names:
        return head
    for name in sorted(names, key=len, reverse=True):
        if re.search(rf"\b{re.escape(name)}\b", message):
            return name
    return None


def compute(query) -> dict:
    """The route's answer (see the module doc); RouteError for bad input."""
    node_id, cls, kwargs = parse_query(query)
    spec = cls.SIGMA_GRAPH
    models = {k: v for k, v in kwargs.items() if node_inputs(cls)[k][0] == "MODEL"}
    call = {k: (reference_model(v) if k in models else v) for k, v in kwargs.items()}
    node = cls()
    try:
        result = getattr(node, spec.get("function", cls.FUNCTION))(**call)
    except ValueError as e:
        raise RouteError(str(e), _named_parameter(str(e), list(kwargs))) from None
    if isinstance(result, dict):
        result = result.get("result", ())
    result = getattr(result, "args", result)  # a v3 node's io.NodeOutput
    sigmas = result[list(cls.RETURN_TYPES).index("SIGMAS")]
    sigmas = [float(s) for s in sigmas.detach().reshape(-1).cpu().double().tolist()]
    if not sigmas or not all(math.isfinite(s) for s in sigmas):
        raise RouteError(f"{node_id} produced non-finite sigmas for these parameters")
    model = next(iter(models.values()), None)
    out = {
        "node": node_id,
        "sigmas": sigmas,
        "steps": len(sigmas) - 1,
        "model": None,
        "sigma_stop": sigmas[-1] if sigmas[-1] > 0 else None,
        "freeu": None,
    }
    if model is not None:
        lo, hi = model_range(model)
        out["model"] = {"name": model, "label": REFERENCE_MODELS[model], "sigma_min": lo, "sigma_max": hi}
    freeu = spec.get("freeu")
    if isinstance(freeu, str):
        window = getattr(node, freeu)(sigmas, **call)
        if window is not None and not isinstance(window, SigmaWindow):
            raise TypeError(f"{node_id}.{freeu} must return a SigmaWindow or None, got {type(window).__name__}")
        out["freeu"] = freeu_steps(sigmas, window)
    elif freeu:
        value = lambda key: kwargs.get(freeu[key]) if isinstance(freeu.get(key), str) else freeu.get(key)  # noqa: E731
        try:
            window = window_from_declaration(sigmas, value("start"), value("end"), freeu.get("unit", "step"))
        except ValueError as e:
            names = [freeu[k] for k in ("start", "end") if isinstance(freeu.get(k), str)]
            raise RouteError(f"FreeU window: {e}", names[0] if len(names) == 1 else None) from None
        out["freeu"] = freeu_steps(sigmas, window)
    return out


def describe() -> dict:
    return {"nodes": graph_specs(), "models": REFERENCE_MODELS, "max_steps": MAX_STEPS, "ui_key": UI_KEY}


# --- aiohttp glue --------------------------------------------------------------------------------

async def _sigmas_handler(request):
    from aiohttp import web
    try:
        return web.json_response(compute(request.query))
    except RouteError as e:
        return web.json_response({"error": str(e), "parameter": e.parameter}, status=400)
    except Exception as e:  # a node bug: say so in JSON (the graph shows it) and log the trace
        logging.exception("FewStep %s failed", ROUTE)
        return web.json_response({"error": f"{type(e).__name__}: {e}", "parameter": None}, status=500)


async def _spec_handler(request):
    from aiohttp import web
    return web.json_response(describe())


def register_routes():
    """Registers the routes on a running ComfyUI server, once. Without a server (ComfyUI's `server`
    module not imported, or no PromptServer instance yet) it does nothing."""
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    routes = getattr(prompt_server, "routes", None)
    if routes is None or getattr(prompt_server, "_fewstep_sigma_routes", False):
        return
    routes.get(ROUTE)(_sigmas_handler)
    routes.get(SPEC_ROUTE)(_spec_handler)
    prompt_server._fewstep_sigma_routes = True

