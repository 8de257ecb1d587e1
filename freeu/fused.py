"""FreeU for one decoder block in one or two GPU kernel launches, gated on the device.

The torch route (FreeUPatch.apply) needs the σ of the call on the host, a device-to-host read in
the middle of the UNet that stalls the CPU's queue of kernel launches, and several small kernels
per block. Where Triton runs (CUDA and ROCm builds of PyTorch) this module does a whole block in
one launch (v1) or two (v2): each program owns one skip plane or a piece of the backbone,
reads the σ of its own sample from device memory and leaves its data untouched outside the window,
so nothing waits on the host and a closed window writes nothing (bit-identical to no patch).

- Skip planes (hsp): y = x + (s-1)·P(x) in place, P the projection of filter.low_frequency_operator
  in its separable form C = Erᵀ x Ec, M = Ar C Br - Ai C Bi, P(x) = Er M Ecᵀ, accumulated in fp32
  and rounded once to the plane's dtype: one read and one write of the plane.
- Backbone planes (first half of h's channels): x·b (v1) or x·(1 + (b-1)·m) (v2, m the per-sample
  min-max normalised channel-mean map). v2's first launch builds the map: each program sums a
  chunk of channels over a tile of pixels; the last of a tile's programs to finish (an atomic counter
  per tile, reset by that program) adds the tile's chunk sums in a fixed order, so the map does not
  depend on which program came last. The second launch filters the skip planes and scales the
  backbone, which needs the whole map's min and max; on sm_90+ it is a programmatic dependent launch,
  so the filter programs start while the map is being built and only the scaling programs wait
  (each reads its backbone piece first, which the map's launch only reads too).
  Measured alternatives (the filter in the map's launch; a launch of its own for the map; one launch
  where the scaling programs wait for the map) were slower: BENCHMARKS.md. Every elementwise
  step is rounded to h's dtype as PyTorch's own ops do: v1 equals the published formula bit for bit
  in fp16/bf16; v2's channel sums run in another order than torch.mean, so a mean value can round
  the other way (then that pixel's h differs by one rounding step); fp32: up to the compiler fusing
  a multiply-add.

`FEWSTEP_FREEU_FUSED=off` turns the route off; `=interpret` runs it on CPU tensors through Triton's
interpreter (TRITON_INTERPRET=1 must be set before triton is imported), which is how the CPU test
suite checks the kernel.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np
import torch

from .filter import low_frequency_operator
from .window import check_sigma_batch

MAX_THRESHOLD = 3   # box half-width: per-axis bases of <= 7 columns, padded to 8
MAX_WIDTH = 1024
_TILE = 2048        # elements per loop iteration of a filter program (H100 sweep: 2 warps, 2048)
_SCALE_BLOCK = 1024
# v2's dependent launch: a scaling program reads its backbone piece (<= one block) before it waits
# for the map.
_EARLY_READ = True
_SCALE_PIECE = 2048  # backbone elements per scaling program (H100 sweep at batch 1: BENCHMARKS.md)
_NUM_WARPS = 2
# v2's channel mean: a program sums _MEAN_CHUNK channels (_SUM_CT at a time, a divisor of it) over
# _SUM_BLOCK pixels; the last of a tile's programs adds up the tile's chunk sums (enough programs to
# fill the GPU at 32x32; H100 sweep in BENCHMARKS.md).
_MEAN_CHUNK = 32
_SUM_CT = 32
_SUM_BLOCK = 128
# v2's second launch (filter + scaling) is a programmatic dependent launch where the GPU (sm_90+) and
# Triton (>= 3.4) have it ("auto"; False: never), so its filter programs run beside the first.
_PDL = "auto"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_kernel = None
_broken: set = set()        # devices where compiling or launching failed: torch route there
_factor_cache: dict = {}
_FACTOR_CACHE_MAX = 64
# Device buffers dropped from the caches below stay referenced here: a CUDA graph captured around a
# block (bridge/cuda_graph.py) holds their addresses, and freed memory could be handed to other tensors.
_retired: list = []

# The launch settings a benchmark may sweep: public name -> the module global the launches read.
_LAUNCH_SETTINGS = {"tile": "_TILE", "num_warps": "_NUM_WARPS", "scale_piece": "_SCALE_PIECE",
                    "early_read": "_EARLY_READ", "mean_chunk": "_MEAN_CHUNK", "sum_ct": "_SUM_CT",
                    "sum_block": "_SUM_BLOCK", "pdl": "_PDL"}


def launch_settings() -> dict:
    """The launch settings by name, a copy: `set_launch_settings(**saved)` puts them back."""
    return {name: globals()[var] for name, var in _LAUNCH_SETTINGS.items()}


def set_launch_settings(**changes) -> dict:
    """Sets launch settings for the calls that follow (benchmark sweeps); returns the values before.
    An unknown name or a bad value is refused, naming the setting, and nothing is changed."""
    unknown = sorted(set(changes) - set(_LAUNCH_SETTINGS))
    if unknown:
        raise ValueError(f"unknown FreeU launch settings {unknown}; known: {sorted(_LAUNCH_SETTINGS)}")
    for name, value in changes.items():
        if name == "pdl":
            ok = value == "auto" or isinstance(value, bool)
        elif name == "early_read":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            raise ValueError(f"FreeU launch setting {name}={value!r}: want "
                             + {"pdl": "'auto', True or False", "early_read": "True or False"}.get(
                                 name, "a positive integer"))
    before = launch_settings()
    for name, value in changes.items():
        globals()[_LAUNCH_SETTINGS[name]] = value
    return before


def failed_devices() -> list:
    """Devices where compiling or launching the kernel failed (those run the torch route)."""
    return sorted(_broken)


def mode() -> str:
    value = os.environ.get("FEWSTEP_FREEU_FUSED", "auto").strip().lower()
    return value if value in ("auto", "off", "interpret") else "auto"


def _device_ok(device: torch.device) -> bool:
    m = mode()
    if m == "off" or str(device) in _broken:
        return False
    if m == "interpret":
        # Triton's interpreter must be on before triton is first imported (tests/conftest.py).
        return os.environ.get("TRITON_INTERPRET") == "1"
    return device.type == "cuda"


def _load_kernel():
    global _kernel
    if _kernel is None:
        from . import _triton_kernel  # imports triton: only when a fused block first runs
        _kernel = _triton_kernel.freeu_block_kernel
    return _kernel


_pdl_devices: dict = {}


def _pdl_ok(device: torch.device) -> bool:
    if _PDL != "auto":
        return bool(_PDL)
    hit = _pdl_devices.get(device)
    if hit is None:
        from . import _triton_kernel
        hit = (device.type == "cuda" and _triton_kernel.HAS_GDC and torch.version.cuda is not None
               and torch.cuda.get_device_capability(device)[0] >= 9)
        _pdl_devices[device] = hit
    return hit


def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def usable(h: torch.Tensor, hsp: torch.Tensor, threshold: int) -> bool:
    """Whether this block can take the fused route (else the caller uses the torch route)."""
    if not _device_ok(h.device) or hsp.device != h.device:
        return False
    if h.ndim != 4 or hsp.ndim != 4 or h.shape[0] != hsp.shape[0] or h.shape[2:] != hsp.shape[2:]:
        return False
    if h.dtype not in _DTYPES or hsp.dtype not in _DTYPES:
        return False
    if not (h.is_contiguous() and hsp.is_contiguous()):
        return False
    if torch.is_grad_enabled() and (h.requires_grad or hsp.requires_grad):
        return False  # in-place writes would break autograd: torch route
    if not 1 <= int(threshold) <= MAX_THRESHOLD or h.shape[3] > MAX_WIDTH or h.numel() == 0:
        return False
    try:
        _load_kernel()
    except Exception as err:  # no Triton, or a Triton that does not import here
        _broken.add(str(h.device))
        warnings.warn(f"FewStep FreeU: fused GPU route unavailable ({err}); using the torch route")
        return False
    return True


_counters: dict = {}


def _tile_counters(device: torch.device, n: int) -> torch.Tensor:
    """Per-tile arrival counters of v2's chunk programs: zero between launches (the last arrival
    resets its own), so one zeroed buffer per device and stream serves every call; grown when a
    call needs more."""
    # blocks running at once on two streams must not share counters
    key = (device, torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0)
    buf = _counters.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False):
            buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        if key in _counters:
            _retired.append(_counters[key])
        _counters[key] = buf
    return buf


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _factors(height: int, width: int, threshold: int, scale: float, device: torch.device):
    """Padded fp32 factors of the filter's change: Er [H, PP], Ec [W, PP], (s-1)·(Ar, Ai), (Br, Bi)."""
    key = (height, width, threshold, float(scale), device)
    hit = _factor_cache.get(key)
    if hit is not None:
        return hit
    er, ec, ar, ai, br, bi = low_frequency_operator(height, width, threshold)
    pp = max(2, _pow2(max(er.shape[1], ec.shape[1])))

    def pad(t, rows, cols):
        out = torch.zeros((rows, cols), dtype=torch.float64)
        out[: t.shape[0], : t.shape[1]] = t
        return out

    with torch.inference_mode(False):
        er_p = pad(er, height, pp).to(device=device, dtype=torch.float32)
        ec_p = pad(ec, width, pp).to(device=device, dtype=torch.float32)
        a = torch.stack([pad((scale - 1.0) * ar, pp, pp), pad((scale - 1.0) * ai, pp, pp)])
        b = torch.stack([pad(br, pp, pp), pad(bi, pp, pp)])
        hit = (er_p, ec_p, a.to(device=device, dtype=torch.float32),
               b.to(device=device, dtype=torch.float32), pp)
    if len(_factor_cache) >= _FACTOR_CACHE_MAX:
        _retired.extend(_factor_cache.values())
        _factor_cache.clear()
    _factor_cache[key] = hit
    return hit


def device_window(low: float, high: float) -> tuple:
    """The window [low, high] as the float32 bounds the kernel compares an fp32 σ with: the smallest
    float32 >= low and the largest <= high, so  low <= σ <= high  holds exactly when it does in
    double precision. Computed once per patch, not per call."""
    def snap(value, toward):
        if math.isinf(value) or math.isnan(value):
            return value
        f = np.float32(value)
        if (float(f) < value) if toward > 0 else (float(f) > value):
            f = np.nextafter(f, np.float32(toward * np.inf))
        return float(f)
    return snap(float(low), +1), snap(float(high), -1)


@torch.compiler.disable  # a raw kernel launch; compiled UNets take it as a graph break
def freeu_block(h: torch.Tensor, hsp: torch.Tensor, b: float, s: float, threshold: int, version: str,
                sigmas, low: float, high: float) -> bool:
    """FreeU on one block in place (h's first half scaled, hsp filtered) for the samples whose σ
    lies in [low, high] (float32 bounds from device_window, already widened by the window's slack;
    sigmas None = every sample).
    Returns False, having written nothing, where the fused route cannot run."""
    batch, c_h, height, width = h.shape
    c_hsp = hsp.shape[1]
    half = c_h // 2
    gated = sigmas is not None
    if gated:
        if not torch.is_tensor(sigmas):
            sigmas = torch.as_tensor(sigmas)
        sigmas = sigmas.reshape(-1)
        check_sigma_batch(batch, sigmas.numel())
        if sigmas.device != h.device or sigmas.dtype != torch.float32:
            sigmas = sigmas.to(device=h.device, dtype=torch.float32, non_blocking=True)
    er, ec, a, bm, pp = _factors(height, width, threshold, s, h.device)
    v2 = version == "v2"
    kernel = _load_kernel()
    hw = height * width
    sig_arg, n_sig = (sigmas, sigmas.numel()) if gated else (h, 1)
    bw = _pow2(width)
    br = max(1, min(_pow2(height), _TILE // bw))
    filter_planes = batch * c_hsp if s != 1.0 else 0
    scale_planes = batch * half if b != 1.0 else 0
    if filter_planes + scale_planes == 0:
        return True
    with_map = v2 and scale_planes > 0
    chunks = _cdiv(c_h, _MEAN_CHUNK) if with_map else 1
    sum_tiles = _cdiv(hw, _SUM_BLOCK) if with_map else 0
    n_parts = max(sum_tiles, 1)
    if with_map:
        counters = _tile_counters(h.device, batch * sum_tiles)
        sums = torch.empty((batch, chunks, hw), dtype=torch.float32, device=h.device)
        mean = torch.empty((batch, height, width), dtype=h.dtype, device=h.device)
        parts = torch.empty((batch, 2, n_parts), dtype=torch.float32, device=h.device)
    else:  # unused: the launch compiles without the map's branch (MAP=False)
        sums = mean = parts = counters = h

    per_sample = _cdiv(half * hw, _SCALE_PIECE)  # scaling programs per sample
    piece = _cdiv(half * hw, max(per_sample, 1))

    pdl = _pdl_ok(h.device)  # v2's launch roles: freeu_block_kernel's docstring

    def launch(n_filter, n_sum, n_scale, role):
        early = with_map and n_sum == 0 and n_scale > 0 and _EARLY_READ  # v2's second launch
        block = max(_SCALE_BLOCK, _pow2(piece)) if early else _SCALE_BLOCK
        kernel[(n_filter + n_sum + n_scale,)](
            h, hsp, mean, parts, n_parts, sums, sum_tiles, chunks, er, ec, a, bm, sig_arg, counters, 1.0 / c_h,
            n_sig, n_filter, n_sum, c_hsp, half, c_h, height, width, per_sample, piece,
            float(b), float(b) - 1.0, low, high,
            PP=pp, BR=br, BW=bw, BLOCK=block, GATED=gated, V2=v2, ONE_TILE=br >= height,
            PARTS=_pow2(n_parts), CHUNK=_MEAN_CHUNK, CT=math.gcd(_SUM_CT, _MEAN_CHUNK), SBLOCK=_SUM_BLOCK,
            MAP=with_map and n_sum > 0, PDL=role, EARLY=early, num_warps=_NUM_WARPS,
            **({"launch_pdl": True} if role == 2 else {}))
    try:
        if with_map:
            # The channel sums (with the map) alone: a short launch; then the skip filter, which
            # depends on nothing (with PDL it starts while the sums run), beside the backbone
            # scaling, which needs the whole map.
            launch(0, batch * sum_tiles * chunks, 0, 1 if pdl else 0)
            launch(filter_planes, 0, batch * per_sample, 2 if pdl else 0)
        else:
            launch(filter_planes, 0, batch * per_sample if scale_planes else 0, 0)
    except Exception as err:
        _broken.add(str(h.device))
        warnings.warn(f"FewStep FreeU: fused GPU kernel failed on {h.device} ({err}); using the torch route")
        return False
    return True
