"""Sweeps over node inputs: parsing `NODE.INPUT=v1,v2` specs and sweep files, typing and checking the
values against the server's /object_info, and expanding the axes into jobs."""
from __future__ import annotations

import difflib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .workflow import InputError, apply_values, job_key, resolve_node, title_of

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


@dataclass
class Target:
    label: str        # as the user wrote it, e.g. "KSampler.steps"; the manifest keys params by it
    node_ref: str
    input: str
    node_id: str = ""


@dataclass
class Axis:
    """Targets swept together (zipped): value i of every target goes into job slice i."""
    targets: list
    values: list      # one list per target, all the same length


@dataclass
class Plan:
    fixed: list = field(default_factory=list)   # [(Target, value)] from --set
    axes: list = field(default_factory=list)    # [Axis], crossed in order (first is outermost)
    typed_fixed: dict = field(default_factory=dict)  # label -> checked value, filled by expand()


@dataclass
class Job:
    index: int
    key: str
    name: str
    params: dict
    prompt: dict
    attach: tuple | None = None   # (server url, prompt id) of an earlier run's submission to adopt
    drops: int = 0                # times a server dropped while holding this job
    prompt_id: str | None = None  # chosen by a driver that journals the submission itself (Ray engine)


def parse_target(label: str) -> Target:
    node_ref, dot, name = label.strip().rpartition(".")
    if not dot or not node_ref or not name:
        raise InputError(f"sweep target {label!r} must be NODE.INPUT, the node by id or title "
                         f"(e.g. 'KSampler.steps' or '4.steps')")
    return Target(label.strip(), node_ref.strip(), name.strip())


def split_assignment(spec: str):
    label, eq, raw = spec.partition("=")
    if not eq or not raw.strip():
        raise InputError(f"{spec!r} must be NODE.INPUT=VALUES, e.g. 'KSampler.steps=4,6,8', "
                         f"'KSampler.seed=0..9' or 'Save.filename_prefix=[\"a,b\",\"c\"]'")
    return parse_target(label), raw.strip()


def raw_values(raw) -> list:
    """A value list from a CLI string ('a,b', 'lo..hi', a JSON list) or a sweep file (a list, or a string
    in the CLI syntax). Strings stay strings here; typing happens against /object_info."""
    if isinstance(raw, list):
        return list(raw)
    if not isinstance(raw, str):
        return [raw]
    text = raw.strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError as e:
            raise InputError(f"values {text!r} start with '[' but are not a JSON list: {e}") from None
        return list(values)
    out = []
    for token in (t.strip() for t in text.split(",")):
        if token == "":
            raise InputError(f"empty value in {text!r}")
        m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", token)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo or hi - lo > 100000:
                raise InputError(f"range {token!r} must go up (lo..hi, both included) and hold at most 100001 values")
            out.extend(range(lo, hi + 1))
        else:
            out.append(token)
    return out


def plan_from_cli(sets=(), axes_specs=()) -> Plan:
    """`sets`: ['NODE.INPUT=VALUE']; `axes_specs`: [('sweep'|'zip', 'NODE.INPUT=VALUES')] in CLI order,
    where a 'zip' joins the axis before it."""
    plan = Plan()
    for spec in sets:
        target, raw = split_assignment(spec)
        values = raw_values(raw)
        if len(values) != 1:
            raise InputError(f"--set {spec!r} must give exactly one value (use --sweep for several)")
        plan.fixed.append((target, values[0]))
    for kind, spec in axes_specs:
        target, raw = split_assignment(spec)
        values = raw_values(raw)
        if kind == "zip":
            if not plan.axes:
                raise InputError(f"--zip {spec!r} needs a --sweep before it to be zipped with")
            plan.axes[-1].targets.append(target)
            plan.axes[-1].values.append(values)
        else:
            plan.axes.append(Axis([target], [values]))
    return plan


def plan_from_file(path) -> Plan:
    """A JSON sweep file: {"set": {T: v}, "sweep": {T: [values]}, "zip": [{T1: [...], T2: [...]}]};
    each "sweep" entry is its own axis, each "zip" object one axis of zipped targets."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"sweep file {str(path)!r} does not exist") from None
    except ValueError as e:
        raise InputError(f"sweep file {str(path)!r} is not valid JSON: {e}") from None
    unknown = set(data) - {"set", "sweep", "zip"} if isinstance(data, dict) else {"(not an object)"}
    if unknown:
        raise InputError(f"sweep file {str(path)!r}: unknown keys {sorted(unknown)}; use 'set', 'sweep', 'zip'")
    plan = Plan()
    for label, value in (data.get("set") or {}).items():
        plan.fixed.append((parse_target(label), value))
    for label, values in (data.get("sweep") or {}).items():
        plan.axes.append(Axis([parse_target(label)], [raw_values(values)]))
    for group in data.get("zip") or []:
        if not isinstance(group, dict) or not group:
            raise InputError(f"sweep file {str(path)!r}: each 'zip' entry must be an object of target -> values")
        plan.axes.append(Axis([parse_target(t) for t in group], [raw_values(v) for v in group.values()]))
    return plan


def merge_plans(*plans: Plan) -> Plan:
    out = Plan()
    for p in plans:
        out.fixed += p.fixed
        out.axes += p.axes
    return out


# --- typing and checks against /object_info -------------------------------------------------------

def input_spec(object_info: dict, class_type: str, name: str):
    info = object_info.get(class_type) or {}
    for section in ("required", "optional"):
        spec = (info.get("input") or {}).get(section, {}).get(name)
        if spec is not None:
            return spec
    return None


def widget_inputs(object_info: dict, class_type: str) -> list:
    info = (object_info.get(class_type) or {}).get("input") or {}
    names = []
    for section in ("required", "optional"):
        for name, spec in (info.get(section) or {}).items():
            if _kind(spec)[0] != "LINK":
                names.append(name)
    return names


def _kind(spec):
    """('COMBO', options|None) | ('INT'|'FLOAT', opts) | ('STRING'|'BOOLEAN', opts) | ('LINK', type)."""
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        return "COMBO", list(kind), opts
    if kind == "COMBO":
        options = opts.get("options")
        return "COMBO", (list(options) if isinstance(options, (list, tuple)) else None), opts
    if kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return kind, None, opts
    return "LINK", kind, opts


def _guess(text):
    """Typing without /object_info (--skip-checks): JSON literal if it is one, else the string."""
    if not isinstance(text, str):
        return text
    try:
        value = json.loads(text)
        return value if isinstance(value, (int, float, bool)) else text
    except ValueError:
        return text


def coerce(label: str, spec, value):
    """`value` typed for `spec`, or an InputError saying exactly what is wrong."""
    kind, options, opts = _kind(spec)
    if kind == "INT":
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise InputError(f"{label}: {value!r} is not an INT") from None
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise InputError(f"{label}: {value!r} is not an INT")
    elif kind == "FLOAT":
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise InputError(f"{label}: {value!r} is not a FLOAT") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{label}: {value!r} is not a FLOAT")
        value = float(value)
    elif kind == "BOOLEAN":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise InputError(f"{label}: {value!r} is not a BOOLEAN (true/false)")
            value = lowered in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise InputError(f"{label}: {value!r} is not a BOOLEAN (true/false)")
    elif kind == "STRING":
        if not isinstance(value, str):
            raise InputError(f"{label}: {value!r} is not a STRING")
    elif kind == "COMBO":
        if options is not None and value not in options:
            shown = ", ".join(map(str, options[:30])) + (f", ... ({len(options)} in all)" if len(options) > 30 else "")
            near = difflib.get_close_matches(str(value), [str(o) for o in options], n=3)
            hint = f" Did you mean {', '.join(map(repr, near))}?" if near else ""
            raise InputError(f"{label}: {value!r} is not an allowed value.{hint} Allowed: {shown}")
    if kind in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            raise InputError(f"{label}: {value!r} is below the minimum {opts['min']}")
        if "max" in opts and value > opts["max"]:
            raise InputError(f"{label}: {value!r} is above the maximum {opts['max']}")
    return value


def resolve_target(workflow: dict, target: Target, object_info: dict | None):
    target.node_id = resolve_node(workflow, target.node_ref)
    node = workflow[target.node_id]
    title = title_of(node)
    where = f"{target.label} (node {target.node_id}{f' {title!r}' if title and title != node['class_type'] else ''}, " \
            f"class {node['class_type']})"
    if object_info is None:
        return None
    if node["class_type"] not in object_info:
        raise InputError(f"{where}: the server does not know the node class {node['class_type']!r}; "
                         f"is its node pack installed there?")
    spec = input_spec(object_info, node["class_type"], target.input)
    if spec is None:
        names = widget_inputs(object_info, node["class_type"])
        near = difflib.get_close_matches(target.input, names, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise InputError(f"{where}: node has no input {target.input!r}.{hint} Its value inputs: {', '.join(names)}")
    kind, link_type, _ = _kind(spec)
    if kind == "LINK":
        raise InputError(f"{where}: input {target.input!r} is a connection ({link_type}), not a value; sweep one "
                         f"of its value inputs: {', '.join(widget_inputs(object_info, node['class_type']))}")
    return spec


def check_classes(workflow: dict, object_info: dict, server: str):
    missing = sorted({n["class_type"] for n in workflow.values() if n["class_type"] not in object_info})
    if missing:
        raise InputError(f"the server {server} does not know the node classes {missing} used by the workflow; "
                         f"install their node packs there (or drop that server)")


def expand(workflow: dict, plan: Plan, object_info: dict | None) -> list:
    """Every job of the plan, values typed and checked; raises InputError on the first problem."""
    seen = {}
    fixed = {}
    for target, value in plan.fixed:
        spec = resolve_target(workflow, target, object_info)
        fixed[(target.node_id, target.input)] = coerce(target.label, spec, value) if spec else _guess(value)
        plan.typed_fixed[target.label] = fixed[(target.node_id, target.input)]
    typed_axes = []
    for axis in plan.axes:
        lengths = {len(v) for v in axis.values}
        if len(lengths) != 1:
            labels = ", ".join(f"{t.label} ({len(v)})" for t, v in zip(axis.targets, axis.values))
            raise InputError(f"zipped targets need the same number of values: {labels}")
        if 0 in lengths:
            raise InputError(f"{axis.targets[0].label}: no values to sweep")
        columns = []
        for target, values in zip(axis.targets, axis.values):
            spec = resolve_target(workflow, target, object_info)
            slot = (target.node_id, target.input)
            if slot in seen or slot in fixed:
                raise InputError(f"{target.label}: input {target.input!r} of node {target.node_id} is set twice "
                                 f"(also as {seen.get(slot, 'a --set')})")
            seen[slot] = target.label
            columns.append([coerce(target.label, spec, v) if spec else _guess(v) for v in values])
        typed_axes.append((axis.targets, list(zip(*columns))))

    base = apply_values(workflow, fixed)
    jobs, keys = [], set()
    for combo in itertools.product(*[rows for _, rows in typed_axes]):
        params, values = {}, {}
        for (targets, _), row in zip(typed_axes, combo):
            for target, value in zip(targets, row):
                params[target.label] = value
                values[(target.node_id, target.input)] = value
        prompt = apply_values(base, values)
        key = job_key(prompt)
        if key in keys:
            continue  # the same prompt twice (a value listed twice): it runs once
        keys.add(key)
        jobs.append(Job(len(jobs), key, job_dir_name(params, key), params, tag_outputs(prompt, key)))
    return jobs


def tag_outputs(prompt: dict, key: str) -> dict:
    """Appends the job id to every filename_prefix. Servers sharing one ComfyUI folder (one per GPU)
    pick their file counters independently and could otherwise write the same name at the same time."""
    for node in prompt.values():
        inputs = node.get("inputs", {})
        if isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = f"{inputs['filename_prefix']}_{key[:8]}"
    return prompt


def job_dir_name(params: dict, key: str) -> str:
    parts = [f"{label.rpartition('.')[2]}-{value}" for label, value in params.items()]
    slug = re.sub(r"[^A-Za-z0-9._+-]+", "_", "_".join(parts)).strip("._")[:60] or "job"
    return f"{slug}__{key[:8]}"
