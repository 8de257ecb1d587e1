"""Server side of the σ-schedule graphs drawn in the editor (web/sigma_graph.js).

GET /fewstep/sigmas?schedule=karras&steps=8&...  computes a schedule with the pack's own maths
(samplers/schedules.py: the only place schedules are computed) and returns it with what the graph
marks: the reference model's σ range, σ_stop, the FreeU window. Every parameter is checked strictly
(known names only, numbers only, finite, bounded) and a bad request gets a 400 with a JSON error
naming the parameter.

GET /fewstep/sigma_graphs  lists the nodes that carry a graph and how their widgets map to route
parameters. A node opts in with a class attribute (see `SIGMA_GRAPH` below), so adding a graph to
a new node is one entry on its own class.

The routes are registered on ComfyUI's PromptServer at import when a server exists; importing the
pack without one (in-process tests, scripts) registers nothing and costs nothing."""
from __future__ import annotations

import functools
import math
import re
import sys
from dataclasses import dataclass, field

ROUTE = "/fewstep/sigmas"
SPEC_ROUTE = "/fewstep/sigma_graphs"
MAX_STEPS = 1000
_REQUIRED = object()

# A node class opts in with
#   SIGMA_GRAPH = {
#       "schedule": "karras",            # a ROUTE_SCHEDULES key, or {"widget": "name"} to read it
#                                        # from a combo; omit it for a graph drawn after the run only
#       "params": {"rho": "rho_widget"}, # route parameter -> widget name or a constant; a route
#                                        # parameter with a widget of the same name needs no entry
#       "model_input": "model",          # MODEL input whose lab-model source picks the σ table
#       "freeu": {"start": "freeu_start", "end": "freeu_end", "unit": "step"},  # optional window
#   }
# Nodes that compute SIGMAS only at run time return {"ui": {UI_KEY: [...]}} and declare a graph
# without "schedule"; the widget then draws after every run, like the preview node.
UI_KEY = "fewstep_sigmas"


class RouteError(ValueError):
    """A bad request: answered with HTTP 400 and {"error": message, "parameter": name}."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class Param:
    kind: str                      # "int", "float", "bool" or "choice"
    default: object = _REQUIRED
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False          # lo itself is not allowed
    choices: tuple = ()
    help: str = ""

    def describe(self) -> dict:
        out = {"kind": self.kind, "help": self.help}
        if self.default is not _REQUIRED:
            out["default"] = self.default
        for key in ("lo", "hi"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.lo_open:
            out["lo_open"] = True
        if self.choices:
            out["choices"] = list(self.choices)
        return out


_INT = re.compile(r"[+-]?\d{1,9}")
_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?")
_BOOL = {"true": True, "1": True, "false": False, "0": False}


def parse_value(name: str, raw: str, p: Param):
    """One query-string value -> a checked Python value, or RouteError naming `name`."""
    if not isinstance(raw, str) or len(raw) > 40:
        raise RouteError(f"{name}: value too long or not text", name)
    text = raw.strip()
    if p.kind == "choice":
        if text not in p.choices:
            raise RouteError(f"{name} must be one of {list(p.choices)}, got {raw!r}", name)
        return text
    if p.kind == "bool":
        if text.lower() not in _BOOL:
            raise RouteError(f"{name} must be true or false, got {raw!r}", name)
        return _BOOL[text.lower()]
    if p.kind == "int":
        if not _INT.fullmatch(text):
            raise RouteError(f"{name} must be an integer, got {raw!r}", name)
        value = int(text)
    else:
        if not _FLOAT.fullmatch(text):
            raise RouteError(f"{name} must be a finite number, got {raw!r}", name)
        value = float(text)
        if not math.isfinite(value):
            raise RouteError(f"{name} must be a finite number, got {raw!r}", name)
    if p.lo is not None and (value < p.lo or (p.lo_open and value == p.lo)):
        raise RouteError(f"{name} must be {'>' if p.lo_open else '>='} {p.lo}, got {value}", name)
    if p.hi is not None and value > p.hi:
        raise RouteError(f"{name} must be <= {p.hi}, got {value}", name)
    return value


# --- reference models: the σ table a model-based schedule maps through, and the range marked ----
# Built with ComfyUI's own model_sampling classes and the lab model's settings, so the table is the
# one a node gets from model.get_model_object("model_sampling").sigmas for such a model.

REFERENCE_MODELS = {
    "sd_discrete": "SD1.5 / SDXL eps (1000 discrete σ, 0.0292-14.61)",
    "edm": "continuous EDM (σ 0.002-80)",
}
_REFERENCE_SETTINGS = {
    "sd_discrete": ("EPS", {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012}),
    "edm": ("EDM", {"sigma_min": 0.002, "sigma_max": 80.0, "sigma_data": 0.5}),
}


@functools.lru_cache(maxsize=None)
def reference_sampling(model: str):
    """ComfyUI's model_sampling object of a reference model (built once, at first use)."""
    import comfy.model_base
    kind, settings = _REFERENCE_SETTINGS[model]

    class _Config:
        sampling_settings = settings
    return comfy.model_base.model_sampling(_Config(), getattr(comfy.model_base.ModelType, kind))


def model_table(model: str):
    """The ascending σ table, as a node gets it from model_sampling.sigmas (float32)."""
    return reference_sampling(model).sigmas.detach().to("cpu")


def model_range(model: str) -> tuple[float, float]:
    table = model_table(model)
    return float(table[0]), float(table[-1])


# --- the schedules the route computes --------------------------------------------------------

STEPS = Param("int", lo=1, hi=MAX_STEPS, help="number of sampling steps")
MODEL = Param("choice", "sd_discrete", choices=tuple(REFERENCE_MODELS),
              help="reference model: its σ range is marked and model-based schedules map through it")


@dataclass(frozen=True)
class RouteSchedule:
    build: object                  # build(values: dict) -> 1-D tensor of sigmas
    params: dict = field(default_factory=dict)
    help: str = ""


def _build_karras(v):
    from ..samplers.schedules import karras_sigmas
    return karras_sigmas(v["steps"], v["sigma_min"], v["sigma_max"], rho=v["rho"])


ROUTE_SCHEDULES: dict[str, RouteSchedule] = {
    "karras": RouteSchedule(_build_karras, {
        "steps": STEPS,
        "sigma_min": Param("float", lo=0.0, lo_open=True, hi=1e4, help="lowest non-zero σ"),
        "sigma_max": Param("float", lo=0.0, lo_open=True, hi=1e4, help="first σ"),
        "rho": Param("float", 7.0, lo=0.0, lo_open=True, hi=100.0, help="Karras ρ"),
        "model": MODEL,
    }, "Karras et al. (2022) σ-space power law with a trailing zero"),
}

COMMON_PARAMS = {
    "freeu_start": Param("float", lo=0.0, hi=1e4, help="FreeU window start (unit: freeu_unit)"),
    "freeu_end": Param("float", lo=0.0, hi=1e4, help="FreeU window end (unit: freeu_unit)"),
    "freeu_unit": Param("choice", "step", choices=("step", "sigma"),
                        help="step: indices into the schedule, end exclusive; sigma: σ bounds"),
}


def freeu_window(sigmas: list[float], start, end, unit: str):
    """The steps whose model call has FreeU on: step i (σ_i -> σ_i+1) is inside when its σ_i is in
    the σ window, or when start <= i < end for a step window. None when no window is given."""
    if start is None and end is None:
        return None
    calls = len(sigmas) - 1
    if unit == "step":
        lo = 0 if start is None else int(math.ceil(start))
        hi = calls if end is None else int(math.ceil(end))
        inside = [i for i in range(calls) if lo <= i < hi]
    else:
        s_hi = math.inf if start is None else start
        s_lo = 0.0 if end is None else end
        if s_lo > s_hi:
            s_lo, s_hi = s_hi, s_lo
        inside = [i for i in range(calls) if s_lo <= sigmas[i] <= s_hi]
    if not inside:
        return {"start_step": None, "end_step": None, "steps": []}
    return {"start_step": inside[0], "end_step": inside[-1] + 1, "steps": inside}


def parse_query(query) -> dict:
    """Mapping of name -> list of raw strings (aiohttp MultiDict or dict of lists) -> checked
    values, defaults filled in. Raises RouteError."""
    items = {}
    for key in query.keys():
        values = query.getall(key) if hasattr(query, "getall") else query[key]
        values = [values] if isinstance(values, str) else list(values)
        if len(values) != 1 or key in items:
            raise RouteError(f"{key} given more than once", key)
        items[key] = values[0]
    name = items.pop("schedule", None)
    if name is None:
        raise RouteError(f"schedule is required: one of {sorted(ROUTE_SCHEDULES)}", "schedule")
    if name not in ROUTE_SCHEDULES:
        raise RouteError(f"schedule must be one of {sorted(ROUTE_SCHEDULES)}, got {name!r}", "schedule")
    table = {**ROUTE_SCHEDULES[name].params, **COMMON_PARAMS}
    unknown = sorted(set(items) - set(table))
    if unknown:
        raise RouteError(f"unknown parameter {unknown[0]!r} for schedule {name!r}; "
                         f"allowed: {sorted(table)}", unknown[0])
    values = {"schedule": name}
    for key, p in table.items():
        if key in items:
            values[key] = parse_value(key, items[key], p)
        elif p.default is _REQUIRED and key not in COMMON_PARAMS:
            raise RouteError(f"{key} is required for schedule {name!r}", key)
        else:
            values[key] = None if p.default is _REQUIRED else p.default
    return values


def compute(query) -> dict:
    """The route's answer for a query (see parse_query); RouteError for bad input, including the
    schedule's own ValueError (e.g. sigma_min >= sigma_max), which names the parameter."""
    values = parse_query(query)
    schedule = ROUTE_SCHEDULES[values["schedule"]]
    try:
        sigmas = schedule.build(values)
    except ValueError as e:
        raise RouteError(str(e), _named_parameter(str(e), schedule.params)) from None
    sigmas = [float(s) for s in sigmas.reshape(-1).tolist()]
    if not sigmas or not all(math.isfinite(s) for s in sigmas):
        raise RouteError("the schedule produced non-finite sigmas for these parameters")
    model = values.get("model") or "sd_discrete"
    lo, hi = model_range(model)
    return {
        "schedule": values["schedule"],
        "sigmas": sigmas,
        "steps": len(sigmas) - 1,
        "model": {"name": model, "label": REFERENCE_MODELS[model], "sigma_min": lo, "sigma_max": hi},
        "sigma_stop": sigmas[-1] if sigmas[-1] > 0 else None,
        "freeu": freeu_window(sigmas, values["freeu_start"], values["freeu_end"], values["freeu_unit"]),
    }


def _named_parameter(message: str, params: dict):
    for key in sorted(params, key=len, reverse=True):
        if re.search(rf"\b{re.escape(key)}\b", message):
            return key
    return None


def graph_specs() -> dict:
    """Node id -> SIGMA_GRAPH declaration of every pack node carrying a graph, checked."""
    from . import NODE_CLASS_MAPPINGS
    specs = {}
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        spec = getattr(cls, "SIGMA_GRAPH", None)
        if spec is not None:
            specs[node_id] = check_spec(node_id, cls, spec)
    return specs


def check_spec(node_id: str, cls, spec: dict) -> dict:
    """A node's SIGMA_GRAPH with defaults filled in; ValueError naming the node when it refers to
    an unknown schedule, route parameter or widget."""
    allowed = {"schedule", "params", "model_input", "freeu"}
    if not isinstance(spec, dict) or set(spec) - allowed:
        raise ValueError(f"{node_id}.SIGMA_GRAPH must be a dict with keys from {sorted(allowed)}")
    inputs = cls.INPUT_TYPES()
    widgets = {**inputs.get("required", {}), **inputs.get("optional", {})}
    schedule = spec.get("schedule")
    if isinstance(schedule, dict):
        src = schedule.get("widget")
        if src not in widgets:
            raise ValueError(f"{node_id}.SIGMA_GRAPH schedule widget {src!r} is not an input")
        names = [schedule.get("map", {}).get(c, c) for c in widgets[src][0]]
    else:
        names = [] if schedule is None else [schedule]
    for name in names:
        if name not in ROUTE_SCHEDULES:
            raise ValueError(f"{node_id}.SIGMA_GRAPH names unknown schedule {name!r}")
    params = dict(spec.get("params", {}))
    route_params = {k for n in names for k in ROUTE_SCHEDULES[n].params}
    for key, source in params.items():
        if key not in route_params:
            raise ValueError(f"{node_id}.SIGMA_GRAPH maps unknown route parameter {key!r}")
        if isinstance(source, str) and source not in widgets:
            raise ValueError(f"{node_id}.SIGMA_GRAPH maps {key!r} to {source!r}, not an input")
    for key in sorted(route_params - set(params)):
        if key in widgets:
            params[key] = key
    out = {"schedule": schedule, "params": params}
    if spec.get("model_input"):
        out["model_input"] = spec["model_input"]
    if spec.get("freeu"):
        freeu = dict(spec["freeu"])
        for end in ("start", "end"):
            if isinstance(freeu.get(end), str) and freeu[end] not in widgets:
                raise ValueError(f"{node_id}.SIGMA_GRAPH freeu {end} widget {freeu[end]!r} is not an input")
        freeu.setdefault("unit", "step")
        if freeu["unit"] not in ("step", "sigma"):
            raise ValueError(f"{node_id}.SIGMA_GRAPH freeu unit must be step or sigma")
        out["freeu"] = freeu
    return out


def describe() -> dict:
    return {
        "nodes": graph_specs(),
        "schedules": {name: {"help": s.help, "params": {k: p.describe() for k, p in s.params.items()}}
                      for name, s in ROUTE_SCHEDULES.items()},
        "common": {k: p.describe() for k, p in COMMON_PARAMS.items()},
        "models": REFERENCE_MODELS,
        "max_steps": MAX_STEPS,
        "ui_key": UI_KEY,
    }


# --- aiohttp glue ----------------------------------------------------------------------------

async def _sigmas_handler(request):
    from aiohttp import web
    try:
        return web.json_response(compute(request.query))
    except RouteError as e:
        return web.json_response({"error": str(e), "parameter": e.parameter}, status=400)


async def _spec_handler(request):
    from aiohttp import web
    return web.json_response(describe())


def setup():
    """Registers the routes on a running ComfyUI server, once. Without a server (the `server`
    module never imported, or no PromptServer instance yet) it does nothing."""
    server = sys.modules.get("server")
    prompt_server = getattr(getattr(server, "PromptServer", None), "instance", None)
    routes = getattr(prompt_server, "routes", None)
    if routes is None or getattr(prompt_server, "_fewstep_sigma_routes", False):
        return
    routes.get(ROUTE)(_sigmas_handler)
    routes.get(SPEC_ROUTE)(_spec_handler)
    prompt_server._fewstep_sigma_routes = True


NODE_CLASS_MAPPINGS = {}
