"""Cache of optimised schedules: identity fingerprints, JSON files in the ComfyUI user directory, and
the lookup the `fewstep_optimized` dropdown entry uses.

What a schedule depends on, and how each part is identified (all hashed into the cache key):
* the model: its classes and model type, its architecture config (unet_config), its model_sampling
  (class, sigma table, shift-like scalars), and its weights — a fixed strided sample of every
  tensor in the state dict (the original value where ComfyUI holds a backup of an in-place patched
  weight, so a loaded-and-patched model hashes like the unloaded one);
* its patches: weight patches (LoRA etc.: key, strengths, offset, sampled patch tensors), object
  patches and model_options (model function wrappers, CFG functions, transformer patches such as
  FreeU: function names plus their closure / default values);
* the conditioning (tensor contents and option values), the latent shape, CFG, the sampler and
  every optimiser setting. The step count N is not in the key: a file holds the DP paths for every
  N and the sampler-selected schedule for each N that was asked for.

The dropdown handler only receives model_sampling, so it finds the schedule in two ways, in order:
1. an attribute on the model_sampling object: the optimise / load nodes output a MODEL whose
   model_sampling is an object-patched copy carrying the schedule (exact: that graph's model);
2. a weak registry keyed by model_sampling object identity, filled whenever those nodes run: a
   KSampler fed by the same loaded checkpoint (clones share model_sampling; LoRA loaders do not
   replace it) finds the schedule last produced for that checkpoint in this session. Identity,
   not the sigma table, is the key on purpose: every SDXL checkpoint has the same table, so the
   table cannot tell a user's models apart.
Otherwise the handler raises and says how to create one."""
from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import types
import weakref

import copy

import torch

from .model_time import describe

FORMAT = "fewstep-schedule"
VERSION = 1
SUBDIR = ("fewstep", "schedules")
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")


class ScheduleCacheError(ValueError):
    """A cache file that cannot be used (corrupt, another format, or for another model)."""


# ---------------------------------------------------------------------------------------------
# Fingerprints

def _tensor_sample(t: torch.Tensor, count: int = 16) -> torch.Tensor:
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return torch.zeros(0)
    idx = torch.linspace(0, n - 1, min(n, count), dtype=torch.float64).round().long().to(flat.device)
    return flat[idx].to(torch.float32)


def _hash_tensor(h, t: torch.Tensor, exact: bool):
    h.update(f"T{tuple(t.shape)}{t.dtype}".encode())
    try:
        if exact and t.numel() <= (1 << 22):
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        else:
            h.update(_tensor_sample(t, 64).cpu().numpy().tobytes())
    except Exception:  # exotic tensor subclasses (quantised weights): shape and dtype only
        h.update(b"?")


def _update(h, obj, depth: int = 0, seen=None, exact: bool = True):
    """Stable, content-based hash of nested Python / torch objects (depth-limited)."""
    seen = set() if seen is None else seen
    if obj is None or isinstance(obj, (bool, int, str)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
        return
    if isinstance(obj, float):
        h.update(f"f:{obj!r};".encode())
        return
    if torch.is_tensor(obj):
        _hash_tensor(h, obj, exact)
        return
    if isinstance(obj, (torch.dtype, torch.device)):
        h.update(f"{obj};".encode())
        return
    if depth > 5 or id(obj) in seen:
        h.update(f"<{type(obj).__name__}>".encode())
        return
    seen.add(id(obj))
    if isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=lambda k: repr(k)):
            h.update(_ADDR.sub("", repr(k)).encode())
            _update(h, obj[k], depth + 1, seen, exact)
        h.update(b"}")
    elif isinstance(obj, (list, tuple, set, frozenset)):
        h.update(f"{type(obj).__name__}[".encode())
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        for v in items:
            _update(h, v, depth + 1, seen, exact)
        h.update(b"]")
    elif isinstance(obj, type):
        h.update(f"cls:{obj.__module__}.{obj.__qualname__};".encode())
    elif isinstance(obj, functools.partial):
        h.update(b"partial:")
        _update(h, (obj.func, obj.args, obj.keywords), depth + 1, seen, exact)
    elif isinstance(obj, (types.FunctionType, types.MethodType, types.BuiltinFunctionType)) or callable(obj) and hasattr(obj, "__code__"):
        fn = getattr(obj, "__func__", obj)
        h.update(f"fn:{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)};".encode())
        _update(h, getattr(fn, "__defaults__", None), depth + 1, seen, exact)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                _update(h, cell.cell_contents, depth + 1, seen, exact)
            except ValueError:  # empty cell
                h.update(b"<empty>")
        if isinstance(obj, types.MethodType):
            _update(h, obj.__self__, depth + 1, seen, exact)
    elif isinstance(obj, torch.nn.Module):
        _module_update(h, obj, exact=False)
    else:
        h.update(f"obj:{type(obj).__module__}.{type(obj).__qualname__};".encode())
        if hasattr(obj, "__dict__"):
            _update(h, {k: v for k, v in vars(obj).items() if not k.startswith("_fewstep")}, depth + 1, seen, exact)
        elif hasattr(obj, "_asdict"):
            _update(h, obj._asdict(), depth + 1, seen, exact)
        else:
            h.update(_ADDR.sub("", repr(obj)).encode())


def _module_update(h, module: torch.nn.Module, exact: bool = False):
    """Class, simple scalar attributes and state dict (sampled unless small) of a module."""
    h.update(f"mod:{type(module).__module__}.{type(module).__qualname__};".encode())
    for k, v in sorted(vars(module).items()):
        if not k.startswith("_") and isinstance(v, (bool, int, float, str)):
            h.update(f"{k}={v!r};".encode())
    for k, t in sorted(module.state_dict().items()):
        h.update(k.encode())
        _hash_tensor(h, t, exact and t.numel() <= 4096)


def model_sampling_fingerprint(model_sampling) -> str:
    h = hashlib.sha256()
    _module_update(h, model_sampling, exact=True) if isinstance(model_sampling, torch.nn.Module) else _update(h, model_sampling)
    return h.hexdigest()[:32]


def _weights_update(h, patcher):
    """A strided sample of every state-dict tensor, originals of in-place patched weights."""
    sd = patcher.model.state_dict()
    backup = getattr(patcher, "backup", {}) or {}
    samples = {}
    for k in sorted(sd):
        t = sd[k]
        bk = backup.get(k)
        if bk is not None:
            t = getattr(bk, "weight", bk[0] if isinstance(bk, tuple) else t)
        h.update(f"{k}{tuple(t.shape)}{t.dtype};".encode())
        try:
            samples.setdefault(str(t.device), []).append(_tensor_sample(t))
        except Exception:
            h.update(b"?")
    for dev in sorted(samples):  # one transfer per device, not one per tensor
        h.update(torch.cat(samples[dev]).cpu().numpy().tobytes())


def model_fingerprint(patcher) -> str:
    """Identity of a ModelPatcher: model, weights and every patch that changes its output."""
    h = hashlib.sha256()
    base = patcher.model
    cfg = getattr(base, "model_config", None)
    h.update(f"{type(base).__module__}.{type(base).__qualname__};{type(cfg).__qualname__};"
             f"{getattr(getattr(base, 'model_type', None), 'name', None)};".encode())
    _update(h, getattr(cfg, "unet_config", None))
    h.update(model_sampling_fingerprint(patcher.get_model_object("model_sampling")).encode())
    _weights_update(h, patcher)
    patches = getattr(patcher, "patches", {}) or {}
    for key in sorted(patches):
        h.update(f"patch:{key};".encode())
        for entry in patches[key]:
            _update(h, tuple(entry), 0, None, exact=False)
    _update(h, {k: v for k, v in (getattr(patcher, "object_patches", {}) or {}).items() if k != "model_sampling"},
            0, None, exact=False)
    _update(h, getattr(patcher, "model_options", {}), 0, None, exact=False)
    return h.hexdigest()[:32]


def conditioning_fingerprint(cond) -> str:
    h = hashlib.sha256()
    _update(h, cond, 0, None, exact=True)
    return h.hexdigest()[:32]


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------------------------
# Files

def cache_dir(user_dir: str) -> str:
    return os.path.join(user_dir, *SUBDIR)


def sanitize(name: str, limit: int = 48) -> str:
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", str(name)).strip("-_.")
    return (clean or "model")[:limit]


def file_name(label: str, key: dict) -> str:
    return f"{sanitize(label)}_{key_hash(key)}.json"


def list_files(user_dir: str) -> list:
    d = cache_dir(user_dir)
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f.endswith(".json") and sanitize(f[:-5], 200) == f[:-5])


def resolve(user_dir: str, name: str) -> str:
    """Path of a cache file given by name; refuses anything that is not a plain file name there."""
    if not isinstance(name, str) or name != os.path.basename(name) or not name.endswith(".json") \
            or sanitize(name[:-5], 200) != name[:-5]:
        raise ScheduleCacheError(f"schedule_file: {name!r} is not a FewStep schedule file name")
    return os.path.join(cache_dir(user_dir), name)


def _fail(path, why):
    raise ScheduleCacheError(
        f"optimised schedule file {path} {why}. Delete it (or run 'Optimise Schedule (FewStep)' with "
        f"use_cache off) to create a fresh one.")


def _decreasing(values, path, what, end_zero):
    if not isinstance(values, list) or len(values) < (2 if end_zero else 1) or \
            not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        _fail(path, f"has an invalid {what}")
    if end_zero and values[-1] != 0:
        _fail(path, f"has a {what} that does not end with 0")
    pos = values[:-1] if end_zero else values
    if any(v <= 0 for v in pos) or any(b >= a for a, b in zip(values, values[1:])):
        _fail(path, f"has a {what} that is not strictly decreasing and positive")


def validate(record, path="(record)") -> dict:
    """Checks a parsed cache record; raises ScheduleCacheError with the reason."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        _fail(path, "is not a FewStep schedule file")
    if record.get("version") != VERSION:
        _fail(path, f"has format version {record.get('version')!r}, this FewStep reads version {VERSION}")
    key = record.get("key")
    if not isinstance(key, dict) or record.get("key_hash") != key_hash(key):
        _fail(path, "has a key that does not match its hash (edited or damaged)")
    grid = record.get("grid")
    _decreasing(grid, path, "candidate grid", end_zero=False)
    dp = record.get("dp")
    if not isinstance(dp, dict) or not dp or record.get("default_variant") not in dp:
        _fail(path, "has no DP result")
    for name, res in dp.items():
        paths = res.get("paths") if isinstance(res, dict) else None
        if not isinstance(paths, dict):
            _fail(path, f"has an invalid DP result {name!r}")
        for n, p in paths.items():
            if not (str(n).isdigit() and isinstance(p, list) and len(p) == int(n) and p and p[0] == 0
                    and all(isinstance(i, int) and 0 <= i < len(grid) for i in p)
                    and all(b > a for a, b in zip(p, p[1:]))):
                _fail(path, f"has an invalid {n}-step path in DP result {name!r}")
    sel = record.get("selected", {})
    if not isinstance(sel, dict):
        _fail(path, "has an invalid 'selected' section")
    for n, entry in sel.items():
        if not str(n).isdigit() or not isinstance(entry, dict):
            _fail(path, f"has an invalid selected schedule {n!r}")
        _decreasing(entry.get("sigmas"), path, f"{n}-step schedule", end_zero=True)
        if len(entry["sigmas"]) != int(n) + 1:
            _fail(path, f"has a {n}-step schedule of the wrong length")
    return record


def read(path: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            record = json.load(f)
    except FileNotFoundError:
        raise ScheduleCacheError(f"optimised schedule file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _fail(path, f"cannot be read as JSON ({type(e).__name__}: {e})")
    return validate(record, path)


def write(path: str, record: dict):
    """Atomic: a reader (or a crash at any moment) sees the old file or the new one, never a part.
    The temporary file is unique per call (two threads of one server may write at once), flushed
    to disk before the rename, and removed when the write fails; its name does not end in .json,
    so a temporary left by a killed process is never listed or read as a schedule."""
    validate(record, path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def schedule_from(record: dict, steps: int) -> tuple:
    """(sigmas as a list ending with 0, how it was made) for `steps` from a validated record."""
    steps = int(steps)
    sel = record.get("selected", {}).get(str(steps))
    if sel is not None:
        return list(sel["sigmas"]), f"selected ({sel.get('chosen', '?')})"
    variant = record["default_variant"]
    path = record["dp"][variant]["paths"].get(str(steps))
    if path is None:
        have = sorted(int(n) for n in record["dp"][variant]["paths"])
        raise ValueError(f"steps={steps}: the optimised schedule covers {have[0]}..{have[-1]} steps; run "
                         f"'Optimise Schedule (FewStep)' with steps={steps} (and a grid of at least {steps})")
    return [record["grid"][i] for i in path] + [0.0], f"DP path ({variant})"


def latest_for_model(user_dir: str, fingerprint: str):
    """(path, record) of the newest valid file for this model fingerprint, or (None, None).
    Unreadable files are skipped with a warning here (a file picked by name raises instead)."""
    best = (None, None)
    for name in list_files(user_dir):
        path = os.path.join(cache_dir(user_dir), name)
        try:
            rec = read(path)
        except ScheduleCacheError as e:
            logging.warning("FewStep: skipping %s", e)
            continue
        if rec["key"].get("model") == fingerprint and (best[1] is None or rec.get("created", "") > best[1].get("created", "")):
            best = (path, rec)
    return best


# ---------------------------------------------------------------------------------------------
# In-session registry for the dropdown entry

ATTR = "_fewstep_schedule"
_REGISTRY: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register(model_sampling, record: dict, path: str):
    try:
        _REGISTRY[model_sampling] = (record, path)
    except TypeError:  # not weak-referenceable: only the attached copy will work
        pass


def lookup(model_sampling):
    found = getattr(model_sampling, ATTR, None)
    if found is not None:
        return found
    try:
        return _REGISTRY.get(model_sampling)
    except TypeError:
        return None


# ---------------------------------------------------------------------------------------------
# Records: what an optimiser run writes, how it reads back as text, and how a MODEL carries it

def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def make_record(key, result, model, seconds, lo, hi, old=None):
    """The file record of an optimiser result (merged into `old`, the file for the same key, when given)."""
    dp = {name: {"paths": {str(n): p for n, p in res.paths.items()},
                 "values": {str(n): _finite(v) for n, v in res.values.items()}}
          for name, res in result.dp.items()}
    sel = {
        "sigmas": [float(v) for v in result.sigmas.tolist()],
        "chosen": result.chosen,
        "train_errors": {k: _finite(v) for k, v in result.train_errors.items()},
        "holdout_errors": {k: _finite(v) for k, v in result.holdout_errors.items()},
        "calls": result.calls, "planned_calls": result.planned.total, "seconds": round(seconds, 3),
    }
    if result.guard:
        sel["guard"] = {k: (_finite(v) if isinstance(v, float) else v) for k, v in result.guard.items()
                        if k != "refined"}
    if result.refinement is not None:
        sel["refine_history"] = {"train": [round(v, 6) for v in result.refinement.train_error],
                                 "holdout": [round(v, 6) for v in result.refinement.holdout_error],
                                 "start": result.refined_from}
    record = old if old is not None else {
        "format": FORMAT, "version": VERSION, "key": key, "key_hash": key_hash(key),
        "model_label": type(model.model).__name__,
        "model_sampling": {"type": describe(model.get_model_object("model_sampling")), "sigma_max": hi, "sigma_min": lo},
        "grid": [float(v) for v in result.grid.tolist()], "cost_rule": result.rule,
        "rule_exact": result.rule_exact, "dp": dp,
        "default_variant": result.chosen if result.chosen in dp else next(iter(dp)), "selected": {},
    }
    record["selected"][str(result.steps)] = sel
    record["created"] = now()
    return record


def report(record, steps, path, how, seconds=None):
    """The node's text report of the schedule for `steps` steps."""
    lines = [f"FewStep optimised schedule, {steps} steps ({how}), sampler {record['key']['sampler']} "
             f"(cost rule {record.get('cost_rule')}{'' if record.get('rule_exact') else ', proxy'})"]
    sig, _ = schedule_from(record, steps)
    lines.append("sigmas: " + ", ".join(f"{v:.4f}" for v in sig))
    sel = record.get("selected", {}).get(str(steps))
    if sel:
        for name, e in sel.get("train_errors", {}).items():
            h = sel.get("holdout_errors", {}).get(name)
            lines.append(f"  {name:>8}: train error {e:.4g}" + (f", held-out {h:.4g}" if h is not None else ""))
        guard = sel.get("guard")
        if guard:
            verdict = f"{guard['candidate']} replaces it" if guard.get("kept") else f"{guard['against']} kept"
            num = lambda v: "n/a" if v is None else f"{v:.3g}"  # noqa: E731  (None: not finite, e.g. one noise)
            lines.append(f"  test against {guard['against']} on the {guard['on']} noises: mean log error ratio "
                         f"{num(guard['mean_log_ratio'])} (se {num(guard['se'])}) -> {verdict}")
        if sel.get("refine_history"):
            hist = sel["refine_history"]
            lines.append((f"  refined from {hist['start']}: " if hist.get("start") else "  refined: ") +
                         f"train {hist['train']}, held-out {hist['holdout']}")
        planned = f", planned at most {sel['planned_calls']}" if sel.get("planned_calls") else ""
        lines.append(f"model calls {sel.get('calls')}{planned} (batched over {record['key']['mc_samples'] + record['key']['holdout']} "
                     f"samples), {sel.get('seconds', 0):.1f} s")
    if seconds is not None:
        lines.append(f"returned in {seconds:.2f} s")
    lines.append(f"cache: {path}")
    return "\n".join(lines)


def attach(model, record, path):
    """A clone of MODEL whose model_sampling (an object-patched copy) carries the schedule, for the
    dropdown entry; also registers the schedule for the original model_sampling object."""
    ms = model.get_model_object("model_sampling")
    register(ms, record, path)
    m = model.clone()
    carrier = copy.deepcopy(ms)
    setattr(carrier, ATTR, (record, path))
    m.add_object_patch("model_sampling", carrier)
    return m
