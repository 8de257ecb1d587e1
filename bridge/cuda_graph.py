"""Launch-free UNet calls: each diffusion-model call of a sampling run replayed from a captured CUDA graph.

An eager SDXL call on a datacentre GPU is bound by the host launching ~thousands of kernels; a
CUDA graph launches them all at once. `LaunchFreeUNet` is a ComfyUI APPLY_MODEL wrapper (around
BaseModel._apply_model: input scaling, the UNet, the denoised output), so every sampler that goes
through ComfyUI's model calls gets it.

- One graph per call signature: the structure of the call's arguments (transformer_options
  included) with every tensor described by shape, strides, dtype and device, every plain value by
  value and every other object (patches, wrappers, control objects) by identity (the entry holds
  it, so an id cannot be reused while the graph lives).
- Every tensor of the call lives in a static buffer that is filled before each replay, σ included
  (transformer_options["sigmas"]), so device-side gates such as FewStep FreeU's read this call's σ
  inside the graph. The output is copied out of the graph's buffer, never returned by reference.
- A bounded LRU cache; graphs of one model share one memory pool (calls never overlap). Its memory
  (pool growth at capture + static buffers) is logged at every capture and reported by `report()`.
- The cache is dropped when the weights may have changed: another patch set (LoRA), a (re)load or
  move of the model (ModelPatcher ON_LOAD / ON_DETACH callbacks, the model's load counters and a
  fingerprint of parameter addresses).
- Eager fallback, with one log line per reason, where a replay could differ from the eager call:
  no capture device, weights not all resident (lowvram, partial or dynamic loading), weight hooks,
  autograd, an input tensor on another accelerator, a capture error (host reads, e.g. a patch calling .item(), fail
  the capture), or a first replay that differs from the eager call of the same inputs (`verify`).

The capture itself is behind a backend object (`CudaGraphBackend` here; tests inject a stand-in
that runs on CPU), so every path but the CUDA capture runs in CI.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict

import torch

log = logging.getLogger("FewStep.launch_free")

WRAPPER_KEY = "fewstep_launch_free"
# transformer_options entries that are per-run bookkeeping (uuids: new ones every run; ComfyUI's
# UNet code never reads them) or written by the UNet itself during a call: not part of a signature.
VOLATILE_OPTIONS = frozenset({"uuids", "transformer_index", "block", "block_index", "original_shape",
                              "activations_shape"})
_PLAIN = (type(None), bool, int, float, str, bytes, torch.dtype, torch.device)


class Fallback(Exception):
    """This call runs eagerly; the message is the reason (logged once per reason)."""


# ----------------------------------------------------------------------------- capture backends
class CapturedGraph:
    """A captured call: replay() recomputes `output` in place from the static inputs."""

    def __init__(self, graph, output: torch.Tensor, pool_bytes: int):
        self.graph = graph
        self.output = output
        self.pool_bytes = int(pool_bytes)

    def replay(self):
        self.graph.replay()


class CudaGraphBackend:
    """Captures with torch.cuda.CUDAGraph on a side stream after one eager warm-up there (cuBLAS
    workspaces, Triton compiles and cuFFT plans are made outside the capture)."""

    name = "CUDA graphs"

    def __init__(self):
        self._streams = {}
        self._pools = {}

    def unavailable_reason(self, device: torch.device):
        if device.type != "cuda":
            return f"not a CUDA device ({device})"
        if not torch.cuda.is_available():
            return "CUDA is not available"
        return None

    def _stream(self, device):
        s = self._streams.get(device)
        if s is None:
            s = self._streams[device] = torch.cuda.Stream(device=device)
        return s

    def capture(self, run, device: torch.device):
        """(CapturedGraph, eager output of the same static inputs)."""
        stream = self._stream(device)
        pool = self._pools.get(device)
        if pool is None:
            pool = self._pools[device] = torch.cuda.graph_pool_handle()
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            eager = run()  # warm-up, and the reference the first replay is checked against
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # torch.cuda.graph empties it too: measure the pool's growth alone
        reserved = torch.cuda.memory_reserved(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=stream):
            output = run()
        if not torch.is_tensor(output):
            raise Fallback(f"the model returned {type(output).__name__}, not a tensor")
        return CapturedGraph(graph, output, max(0, torch.cuda.memory_reserved(device) - reserved)), eager

    def release(self, device=None):
        """Forgets the memory pools (their memory returns once no graph uses it)."""
        if device is None:
            self._pools.clear()
        else:
            self._pools.pop(device, None)


_default_backend = None


def default_backend():
    global _default_backend
    if _default_backend is None:
        _default_backend = CudaGraphBackend()
    return _default_backend


# ----------------------------------------------------------------------------- call signatures
class _Walk:
    """One pass over a call's arguments: the signature key and the tensors in slot order."""

    def __init__(self, device: torch.device):
        self.tensors = []
        self.seen = {}
        self.refs = []
        self.device = device

    def key(self, obj, top_options=False):
        if isinstance(obj, torch.Tensor):
            slot = self.seen.get(id(obj))
            if slot is not None:
                return ("alias", slot)
            # Host tensors (ComfyUI keeps conditioning on the CPU and casts it inside the call) get a
            # device buffer too: the H2D copy happens before the replay instead of inside the call.
            if obj.device != self.device and obj.device.type != "cpu":
                raise Fallback(f"a {tuple(obj.shape)} tensor on {obj.device} among the inputs (neither on the "
                               f"model's device {self.device} nor on the host)")
            self.seen[id(obj)] = len(self.tensors)
            self.tensors.append(obj)
            return ("T", tuple(obj.shape), obj.stride(), obj.dtype, obj.device.type)
        if isinstance(obj, _PLAIN):
            return (type(obj).__name__, obj)
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if top_options and k in VOLATILE_OPTIONS:
                    continue
                items.append((k if isinstance(k, _PLAIN + (tuple,)) else ("id", id(k)), self.key(v)))
            return ("D", tuple(items))
        if isinstance(obj, (list, tuple)):
            return ("L" if isinstance(obj, list) else "U", tuple(self.key(v) for v in obj))
        self.refs.append(obj)  # held by the cache entry: its id stays unique while the entry lives
        return ("id", type(obj).__qualname__, id(obj))


def _substitute(obj, statics: dict, top_options=False):
    """obj with every tensor of the capture call replaced by its static buffer (same structure)."""
    if isinstance(obj, torch.Tensor):
        return statics.get(id(obj), obj)
    if isinstance(obj, dict):
        return {k: (v if top_options and k in VOLATILE_OPTIONS else _substitute(v, statics))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, statics) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_substitute(v, statics) for v in obj)
    return obj


def _static_like(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():  # usable inside and outside inference mode
        if t.is_contiguous() or t.device != device:
            return torch.empty(t.shape, dtype=t.dtype, device=device)
        return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)


def _describe(args_key) -> str:
    x = args_key[0]
    return f"x {list(x[1])} {str(x[3]).replace('torch.', '')}" if x and x[0] == "T" else "call"


class _Entry:
    def __init__(self, captured: CapturedGraph, statics: list, refs: list, label: str):
        self.captured = captured
        self.statics = statics
        self.refs = refs
        self.label = label
        self.static_bytes = sum(t.numel() * t.element_size() for t in statics)
        self.replays = 0


# ----------------------------------------------------------------------------- the wrapper
def _address(t) -> int:
    return t.data_ptr() if isinstance(t, torch.Tensor) else 0


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


class LaunchFreeUNet:
    """APPLY_MODEL wrapper replaying captured graphs. One per node output (shared by its clones)."""

    def __init__(self, max_graphs: int = 8, verify: bool = True, backend=None):
        if int(max_graphs) != max_graphs or max_graphs < 1:
            raise ValueError(f"max_graphs must be a whole number >= 1, got {max_graphs}")
        self.max_graphs = int(max_graphs)
        self.verify = bool(verify)
        self._backend = backend
        self.entries: OrderedDict = OrderedDict()
        self.refused: dict = {}       # signature -> reason (capture failed or replay differed)
        self.logged: set = set()      # reasons already logged
        self.generation = 0           # bumped by ModelPatcher load/detach callbacks
        self.state = None             # weight-state key the cache belongs to
        self.state_reason = None      # why the current weight state cannot be captured (or None)
        self._fingerprint = ()
        self.pool_bytes = 0
        self.counts = {"replays": 0, "captures": 0, "eager": 0, "invalidations": 0}
        self.last_fallback = None
        self.capture_seconds = []

    def __deepcopy__(self, memo):  # model_options are deep-copied by clones; the cache is shared
        return self

    @property
    def backend(self):
        return self._backend or default_backend()

    # -- ComfyUI hooks
    def attach(self, patcher):
        """Registers the wrapper and the load callbacks on `patcher` (a ModelPatcher clone)."""
        import comfy.patcher_extension as pe
        patcher.remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
        patcher.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY, self)
        for kind, callback in ((pe.CallbacksMP.ON_LOAD, self._loaded), (pe.CallbacksMP.ON_DETACH, self._detached)):
            patcher.remove_callbacks_with_key(kind, WRAPPER_KEY)
            patcher.add_callback_with_key(kind, WRAPPER_KEY, callback)

    def _loaded(self, *args, **kwargs):
        self.generation += 1

    def _detached(self, patcher, unpatch_all=True, *args):
        # load_models_gpu detaches a loaded clone (unpatch_all=False, weights stay) before every
        # run that uses it; only a detach that unpatches moves or restores weights.
        if unpatch_all:
            self.generation += 1

    # -- cache
    def clear(self, why: str):
        if self.entries:
            self.counts["invalidations"] += 1
            log.info("FewStep launch-free UNet: dropped %d graph(s) (%s)", len(self.entries), why)
        self.entries.clear()
        self.refused.clear()
        self.pool_bytes = 0
        self.backend.release()

    def memory_bytes(self) -> int:
        return self.pool_bytes + sum(e.static_bytes for e in self.entries.values())

    def report(self) -> str:
        c = self.counts
        lines = [f"backend: {self.backend.name}; graphs cached: {len(self.entries)} of {self.max_graphs}; "
                 f"memory: {_mib(self.memory_bytes())} (graph pool {_mib(self.pool_bytes)}, static inputs "
                 f"{_mib(sum(e.static_bytes for e in self.entries.values()))})",
                 f"calls: {c['replays']} replayed, {c['captures']} captured, {c['eager']} eager; "
                 f"invalidations: {c['invalidations']}"]
        if self.capture_seconds:
            lines.append(f"capture time: max {max(self.capture_seconds):.2f} s over {len(self.capture_seconds)}")
        for e in self.entries.values():
            lines.append(f"  graph {e.label}: {e.replays} replays, {_mib(e.captured.pool_bytes + e.static_bytes)}")
        for reason in sorted(set(self.refused.values()) | ({self.last_fallback} - {None})):
            lines.append(f"  eager: {reason}")
        return "\n".join(lines)

    def _fallback(self, reason: str):
        self.counts["eager"] += 1
        self.last_fallback = reason
        if reason not in self.logged:
            self.logged.add(reason)
            log.warning("FewStep launch-free UNet: running eagerly: %s", reason)

    # -- weight state
    def _weight_state(self, base, device):
        params = self._fingerprint
        return (id(base), self.generation, str(getattr(base, "device", None)), str(device),
                getattr(base, "current_weight_patches_uuid", None), bool(getattr(base, "model_lowvram", False)),
                getattr(base, "lowvram_patch_counter", 0), getattr(base, "model_loaded_weight_memory", 0),
                tuple(_address(getattr(m, n, None)) for m, n in params))

    def _residency_reason(self, base, device):
        """Why the weights cannot be read from a graph (None: all resident on `device`)."""
        patcher = getattr(base, "current_patcher", None)
        if patcher is not None and getattr(patcher, "is_dynamic", lambda: False)():
            return "weights not all resident: dynamic offloading (the model streams weights per call)"
        if getattr(base, "model_lowvram", False) or getattr(base, "lowvram_patch_counter", 0):
            loaded = getattr(base, "model_loaded_weight_memory", 0)
            size = patcher.model_size() if patcher is not None else 0
            return (f"weights not all resident: lowvram / partial loading ({_mib(loaded)} of {_mib(size)} "
                    "on the device)")
        net = base.diffusion_model
        named = [(f"diffusion_model.{n}", m) for n, m in net.named_modules()]
        named += [("model_sampling", base.model_sampling)]
        picks = []
        for name, module in named:
            for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if p.device != device:
                    return f"weights not all resident: {name}.{pname} is on {p.device}"
                if len(picks) < 4 and p.ndim > 0:
                    picks.append((module, pname))
            if getattr(module, "weight_function", None) or getattr(module, "bias_function", None):
                if getattr(module, "comfy_cast_weights", False):
                    return f"weights not all resident: {name} computes its weights per call (lowvram patch)"
        last = [(m, n) for _, m in named[::-1] for n, p in m.named_parameters(recurse=False)][:4]
        self._fingerprint = tuple(picks + last)
        return None

    def _check_state(self, base, device):
        state = self._weight_state(base, device)
        if state != self.state:
            if self.state is not None:
                self.clear("the model's weights, patches or placement changed")
            self.state_reason = self._residency_reason(base, device)
            self.state = self._weight_state(base, device)  # with the new fingerprint
        return self.state_reason

    # -- the wrapper
    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                 **kwargs):
        def eager():
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        try:
            return self._run(executor, x, t, c_concat, c_crossattn, control, transformer_options, kwargs)
        except Fallback as why:
            self._fallback(str(why))
            return eager()

    def _run(self, executor, x, t, c_concat, c_crossattn, control, transformer_options, kwargs):
        backend = self.backend
        device = x.device
        reason = backend.unavailable_reason(device)
        if reason:
            raise Fallback(reason)
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            raise Fallback("autograd is enabled (a graph does not record gradients)")
        base = executor.class_obj
        patcher = getattr(base, "current_patcher", None)
        if patcher is not None and (getattr(patcher, "current_hooks", None) is not None
                                    or getattr(patcher, "hook_patches", None)):
            raise Fallback("weight hooks are applied (they change the weights between calls)")
        reason = self._check_state(base, device)
        if reason:
            raise Fallback(reason)
        walk = _Walk(device)
        args = (x, t, c_concat, c_crossattn, control)
        signature = (walk.key(args), walk.key(kwargs), walk.key(transformer_options, top_options=True))
        refused = self.refused.get(signature)
        if refused:
            raise Fallback(refused)
        entry = self.entries.get(signature)
        if entry is None:
            return self._capture(executor, signature, walk, args, kwargs, transformer_options, device)
        self.entries.move_to_end(signature)
        for static, value in zip(entry.statics, walk.tensors):
            static.copy_(value, non_blocking=True)  # host sources: staged by the driver, no stream sync
        entry.captured.replay()
        entry.replays += 1
        self.counts["replays"] += 1
        return entry.captured.output.clone()

    def _capture(self, executor, signature, walk, args, kwargs, transformer_options, device):
        statics = [_static_like(v, device) for v in walk.tensors]
        by_id = {id(v): s for v, s in zip(walk.tensors, statics)}
        for s, v in zip(statics, walk.tensors):
            s.copy_(v, non_blocking=True)
        template = (_substitute(args, by_id), _substitute(transformer_options, by_id, top_options=True),
                    _substitute(kwargs, by_id))
        del by_id

        def run():
            # Fresh containers every run: the UNet pops ControlNet lists and writes into
            # transformer_options, and the warm-up must not leave the capture an emptied structure.
            s_args, s_options, s_kwargs = _substitute(template, {})
            return executor(*s_args, s_options, **s_kwargs)

        label = _describe(signature[0][1])
        t0 = time.perf_counter()
        try:
            captured, eager = self.backend.capture(run, device)
        except Fallback as why:
            self.refused[signature] = str(why)
            raise
        except Exception as err:  # noqa: BLE001 - any capture error means: this signature runs eagerly
            reason = f"capture failed for {label}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
            self.refused[signature] = reason
            raise Fallback(reason) from None
        captured.replay()
        seconds = time.perf_counter() - t0
        if self.verify and not torch.equal(captured.output, eager):
            diff = (captured.output.float() - eager.float()).abs().max().item()
            reason = f"the replay of {label} differs from the eager call (max abs {diff:.3g})"
            self.refused[signature] = reason
            self._fallback(reason)
            return eager
        entry = _Entry(captured, statics, walk.refs + [run], label)
        self.entries[signature] = entry
        self.pool_bytes += captured.pool_bytes
        self.counts["captures"] += 1
        self.capture_seconds.append(seconds)
        while len(self.entries) > self.max_graphs:
            _, old = self.entries.popitem(last=False)
            log.info("FewStep launch-free UNet: evicted graph %s (least recently used)", old.label)
        log.info("FewStep launch-free UNet: captured %s in %.2f s; cache %d of %d graphs, %s (graph pool %s, "
                 "static inputs %s)", label, seconds, len(self.entries), self.max_graphs,
                 _mib(self.memory_bytes()), _mib(self.pool_bytes),
                 _mib(sum(e.static_bytes for e in self.entries.values())))
        return captured.output.clone()


def find(model):
    """The LaunchFreeUNet attached to a ModelPatcher, or None."""
    import comfy.patcher_extension as pe
    found = model.get_wrappers(pe.WrappersMP.APPLY_MODEL, WRAPPER_KEY)
    return found[-1] if found else None


def attach(model, max_graphs: int = 8, verify: bool = True, backend=None):
    """A clone of `model` whose diffusion-model calls replay CUDA graphs (a fresh cache)."""
    patched = model.clone()
    LaunchFreeUNet(max_graphs=max_graphs, verify=verify, backend=backend).attach(patched)
    return patched
