"""FreeU's Fourier low-frequency scaling of UNet skip features, exact and without an FFT.

FreeU transforms the last two axes to the 2-D spectrum, multiplies a small box of it (centred after
fftshift; half-width `threshold`) by `scale`, transforms back and keeps the real part. Keeping the
real part symmetrises the mask (mode k and its mirror -k each get half the change), so with
threshold 1 only 7 modes change and the filter is

    y = x + (scale - 1) * P(x),

P a linear map of rank <= 9 onto the span of those modes (cosines/sines of frequency 0 and 1 along
each axis). Here P is computed with fp32 accumulation on a real orthonormal basis of that span:
one thin matrix product for the coefficients, one for the rebuild. No FFT is needed, so devices without FFT
support work unchanged. `fourier_filter_fft` is the same maths by FFT, for tests and benchmarks.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

# Above this many basis products (per channel) the dense coefficient map stops paying off and the
# separable two-term form is used instead (thresholds >= 5).
_DENSE_MAX_MODES = 81
_DEVICE_CACHE_MAX = 64


def box_frequencies(n: int, threshold: int) -> tuple[int, ...]:
    """Frequencies (0..n-1) along one axis inside FreeU's box: the fftshift-ed positions
    n//2 - threshold .. n//2 + threshold - 1 with Python slice rules, so tiny axes behave exactly
    as the slicing of a shifted spectrum does."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    positions = range(n)[n // 2 - threshold: n // 2 + threshold]
    return tuple((p - n // 2) % n for p in positions)


def _real_basis(n: int, freqs) -> torch.Tensor:
    """Orthonormal real basis (n x r, float64) of the span of exp(2 pi i k m / n) for k in freqs
    and their mirrors -k: constants, cos/sin pairs, and the alternating Nyquist vector."""
    m = torch.arange(n, dtype=torch.float64)
    cols, seen = [], set()
    for k in sorted({f % n for f in freqs} | {(-f) % n for f in freqs}):
        rep = min(k, (n - k) % n)
        if rep in seen:
            continue
        seen.add(rep)
        if rep == 0:
            cols.append(torch.full((n,), 1 / math.sqrt(n), dtype=torch.float64))
        elif 2 * rep == n:
            cols.append(torch.cos(math.pi * m) / math.sqrt(n))
        else:
            angle = 2 * math.pi * rep * m / n
            cols.append(torch.cos(angle) * math.sqrt(2 / n))
            cols.append(torch.sin(angle) * math.sqrt(2 / n))
    if not cols:
        return torch.zeros((n, 0), dtype=torch.float64)
    return torch.stack(cols, dim=1)


def _axis_projector(n: int, freqs, sign: float) -> torch.Tensor:
    """(1/n) sum_k exp(sign * 2 pi i k (m - m') / n): the complex projector onto `freqs`."""
    d = torch.arange(n, dtype=torch.float64)
    d = d[:, None] - d[None, :]
    out = torch.zeros((n, n), dtype=torch.complex128)
    for k in freqs:
        out += torch.exp(1j * sign * 2 * math.pi * k * d / n)
    return out / n


# Bases are built on the host, once per size: torch.compile (ComfyUI's TorchCompileModel) must not
# trace into them, so these builders run eagerly and their results enter the graph as inputs.
@torch.compiler.disable
@lru_cache(maxsize=256)
def low_frequency_operator(height: int, width: int, threshold: int):
    """The filter's change as basis matrices, float64 on the CPU, built once per size:
    (Er, Ec, Ar, Ai, Br, Bi) with  P(x) = Er (Ar C Br - Ai C Bi) Ec^T,  C = Er^T x Ec.

    Derivation: the 2-D DFT is F_H x F_W, so the masked inverse is U x V with U the row projector
    onto the box rows and V the column projector; the real part of U x V is Ur x Vr - Ui x Vi for
    real x, and every factor lives in the span of Er (rows) and Ec (columns)."""
    rows = box_frequencies(height, threshold)
    cols = box_frequencies(width, threshold)
    er, ec = _real_basis(height, rows), _real_basis(width, cols)
    u = _axis_projector(height, rows, +1.0)
    v = _axis_projector(width, cols, -1.0)
    ar, ai = er.T @ u.real @ er, er.T @ u.imag @ er
    br, bi = ec.T @ v.real @ ec, ec.T @ v.imag @ ec
    return er, ec, ar, ai, br, bi


@lru_cache(maxsize=256)
def _dense_operator(height: int, width: int, threshold: int):
    """Kronecker form for small boxes: P(x) = reshape(vec(x) @ Bk @ K^T @ Bk^T), Bk = Er (x) Ec."""
    er, ec, ar, ai, br, bi = low_frequency_operator(height, width, threshold)
    basis = torch.einsum("ma,nb->mnab", er, ec).reshape(height * width, -1)
    # Row-major vec(A C B) = (A kron B^T) vec(C).
    k = torch.kron(ar, br.T.contiguous()) - torch.kron(ai, bi.T.contiguous())
    return basis, k


_device_cache: dict = {}


@torch.compiler.disable
def _on_device(key, build):
    hit = _device_cache.get(key)
    if hit is None:
        if len(_device_cache) >= _DEVICE_CACHE_MAX:
            _device_cache.clear()
        # Built as normal tensors even during ComfyUI's inference_mode, so a later run with
        # autograd on (a training node) can still use them.
        with torch.inference_mode(False):
            hit = _device_cache[key] = build()
    return hit


def _dense_factors(height, width, threshold, scale, device):
    def build():
        basis, k = _dense_operator(height, width, threshold)
        # y = x + (x Bk) R  with  R = (scale - 1) K^T Bk^T.
        rebuild = (scale - 1.0) * (k.T @ basis.T)
        return (basis.to(device=device, dtype=torch.float32),
                rebuild.to(device=device, dtype=torch.float32))
    return _on_device(("dense", height, width, threshold, float(scale), device), build)


_SPLIT_TERMS = 3


def _mixed_factors(height, width, threshold, scale, device, dtype):
    """The dense factors for fp16/bf16 input read directly by a matmul with fp32 output: the basis
    (scaled by sqrt(H*W) so its entries are O(1), clear of fp16 subnormals) as a sum of three
    low-precision parts side by side (about 33 bits for fp16, 24 for bf16), and the rebuild map
    stacked three times so the parts' coefficients add up inside one product."""
    def build():
        basis, k = _dense_operator(height, width, threshold)
        root = math.sqrt(height * width)
        parts, rest = [], basis * root
        for _ in range(_SPLIT_TERMS):
            part = rest.to(dtype)
            parts.append(part)
            rest = rest - part.double()
        rebuild = (scale - 1.0) / root * (k.T @ basis.T)
        return (torch.cat(parts, dim=1).to(device),
                rebuild.repeat(_SPLIT_TERMS, 1).to(device=device, dtype=torch.float32))
    return _on_device(("mixed", height, width, threshold, float(scale), device, dtype), build)


def _separable_factors(height, width, threshold, scale, device):
    def build():
        er, ec, ar, ai, br, bi = low_frequency_operator(height, width, threshold)
        f32 = dict(device=device, dtype=torch.float32)
        return (er.to(**f32), ec.to(**f32), ((scale - 1.0) * ar).to(**f32),
                ((scale - 1.0) * ai).to(**f32), br.to(**f32), bi.to(**f32))
    return _on_device(("separable", height, width, threshold, float(scale), device), build)


def mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 matrix product accumulated and returned in fp32 without an fp32 copy of `a`
    (torch.mm's out_dtype; CUDA in recent PyTorch). Raises where unsupported."""
    return torch.mm(a, b, out_dtype=torch.float32)


# (device type, device index, dtype) -> whether the mixed-precision route works there.
_mixed_ok: dict = {}
METHODS = ("auto", "dense", "separable", "mixed")


def _add_rounded_once(x: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
    """x + corr computed in fp32 and rounded once to x's dtype, without an fp32 copy of x."""
    out = torch.empty_like(x)
    return torch.add(x, corr, out=out)


def _dense(x, n, height, width, threshold, scale):
    basis, rebuild = _dense_factors(height, width, threshold, scale, x.device)
    if x.dtype == torch.float32:
        flat = x.reshape(n, height * width)
        return torch.addmm(flat, flat @ basis, rebuild)
    flat = x.reshape(n, height * width)
    return _add_rounded_once(flat, (flat.float() @ basis) @ rebuild)


def _mixed(x, n, height, width, threshold, scale):
    split, rebuild = _mixed_factors(height, width, threshold, scale, x.device, x.dtype)
    flat = x.reshape(n, height * width)
    return _add_rounded_once(flat, mm_fp32_out(flat, split) @ rebuild)


def _separable(x, n, height, width, threshold, scale):
    er, ec, ar, ai, br, bi = _separable_factors(height, width, threshold, scale, x.device)
    rows = x.float().reshape(n, height, width)
    coef = er.T @ (rows @ ec)                      # [n, p, q]
    mixed = ar @ coef @ br - ai @ coef @ bi        # already times (scale - 1)
    lifted = (er @ mixed).reshape(n * height, -1)  # [n*H, q]
    corr = lifted @ ec.T
    if x.dtype == torch.float32:
        return rows.reshape(n * height, width) + corr
    return _add_rounded_once(x.reshape(n * height, width), corr)


def _try_mixed(x, n, height, width, threshold, scale):
    """The mixed route where it works; None where it does not. Checked once per device and dtype
    against the fp32 route on the first real input, so a backend whose reduced-precision matmul
    misbehaves falls back instead of giving wrong output."""
    key = (x.device.type, x.device.index, x.dtype)
    state = _mixed_ok.get(key)
    if state is False:
        return None
    try:
        y = _mixed(x, n, height, width, threshold, scale)
    except (RuntimeError, TypeError, NotImplementedError):
        _mixed_ok[key] = False
        return None
    if state is None:
        ref = _dense(x, n, height, width, threshold, scale).float()
        # One rounding step of the output plus fp32 rounding of sums over |x|-sized terms.
        slack = 64 * torch.finfo(torch.float32).eps * x.abs().max().float()
        ok = bool(((y.float() - ref).abs() <= torch.finfo(x.dtype).eps * ref.abs() + slack).all())
        _mixed_ok[key] = ok
        if not ok:
            return None
    return y


def fourier_filter(x: torch.Tensor, threshold: int, scale: float, method: str = "auto") -> torch.Tensor:
    """FreeU's skip-feature filter on x [..., H, W]: computed by projection with fp32 accumulation,
    returned in x's dtype (x itself when nothing changes). Equal to the FFT definition to fp32
    rounding; no FFT, so any device works.

    method "auto" picks: "mixed" for fp16/bf16 where a matmul can return fp32 (reads x once in its
    own dtype), else "dense" (fp32 Kronecker basis, two matrix products) up to 81 basis products,
    else "separable" (per-axis bases, for large thresholds)."""
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    height, width = x.shape[-2:]
    er64, ec64 = low_frequency_operator(height, width, threshold)[:2]
    modes = er64.shape[1] * ec64.shape[1]
    n = x.numel() // max(height * width, 1)
    if n == 0 or modes == 0 or scale == 1.0:
        return x  # nothing changes (the FFT route would return x up to fp32 rounding)
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
    low_precision = x.dtype != torch.float32
    y = None
    if method == "mixed" or (method == "auto" and low_precision and modes <= _DENSE_MAX_MODES):
        if not low_precision:
            raise ValueError("method 'mixed' is for float16/bfloat16 input")
        y = _mixed(x, n, height, width, threshold, scale) if method == "mixed" else \
            _try_mixed(x, n, height, width, threshold, scale)
    if y is None:
        if method == "dense" or (method != "separable" and modes <= _DENSE_MAX_MODES):
            y = _dense(x, n, height, width, threshold, scale)
        else:
            y = _separable(x, n, height, width, threshold, scale)
    return y.reshape(x.shape).to(x.dtype)


def changed_modes(height: int, width: int, threshold: int) -> int:
    """How many of the H*W complex Fourier modes the filter changes (7 for threshold 1)."""
    rows, cols = box_frequencies(height, threshold), box_frequencies(width, threshold)
    box = {(r, c) for r in rows for c in cols}
    return len(box | {((-r) % height, (-c) % width) for r, c in box})


def fourier_filter_fft(x: torch.Tensor, threshold: int, scale: float,
                       compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The FFT definition: full spectrum, scale the box of the shifted spectrum, real part back.
    The box is scaled in the unshifted spectrum directly (no shift copies, no full-size mask)."""
    height, width = x.shape[-2:]
    spec = torch.fft.fft2(x.to(compute_dtype))
    rows = list(box_frequencies(height, threshold))
    cols = list(box_frequencies(width, threshold))
    if rows and cols:
        r = torch.tensor(rows, device=x.device)[:, None]
        c = torch.tensor(cols, device=x.device)[None, :]
        spec[..., r, c] *= scale
    return torch.fft.ifft2(spec).real.to(x.dtype)


@lru_cache(maxsize=256)
def _half_spectrum_mask(height: int, width: int, threshold: int, scale: float) -> torch.Tensor:
    """Mask of the rfft half spectrum equal to the symmetrised full mask (1 + M(k) + M(-k) - 2)/2."""
    full = torch.ones((height, width), dtype=torch.float64)
    rows, cols = box_frequencies(height, threshold), box_frequencies(width, threshold)
    delta = torch.zeros((height, width), dtype=torch.float64)
    for r in rows:
        for c in cols:
            delta[r, c] += (scale - 1.0) / 2
            delta[(-r) % height, (-c) % width] += (scale - 1.0) / 2
    return (full + delta)[:, : width // 2 + 1].to(torch.float32)


def fourier_filter_rfft(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """The same filter through the real FFT (half spectrum) with a cached symmetrised mask."""
    height, width = x.shape[-2:]
    mask = _half_spectrum_mask(height, width, threshold, float(scale)).to(x.device)
    spec = torch.fft.rfft2(x.float())
    return torch.fft.irfft2(spec * mask, s=(height, width)).to(x.dtype)
