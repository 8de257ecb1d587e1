"""FreeU maths without ComfyUI: the projection filter against the FFT definition, the backbone
scaling against the written-out formula, σ windows and the gated patch."""
import math

import pytest
import torch

from freeu.backbone import scale_backbone, structure_map
from freeu.filter import (box_frequencies, changed_modes, fourier_filter, fourier_filter_fft,
                          fourier_filter_rfft)
from freeu.patch import FreeUPatch
from freeu.presets import CUSTOM, NAMES, PRESETS, resolve
from freeu.window import SigmaWindow, window_from_percent, window_from_sigma, window_from_steps

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

GEN = torch.Generator().manual_seed(1234)


def fft_definition(x, threshold, scale):
    """The textbook filter in float64: shift the 2-D spectrum, scale the centred box, real part."""
    spec = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=(-2, -1)), dim=(-2, -1))
    h, w = spec.shape[-2:]
    mask = torch.ones(h, w, dtype=torch.float64)
    mask[h // 2 - threshold: h // 2 + threshold, w // 2 - threshold: w // 2 + threshold] = scale
    return torch.fft.ifftn(torch.fft.ifftshift(spec * mask, dim=(-2, -1)), dim=(-2, -1)).real


SIZES = [(1, 1), (1, 6), (2, 2), (2, 3), (3, 3), (4, 5), (7, 7), (8, 8), (9, 6), (16, 17), (32, 32)]


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("threshold", [1, 2, 3, 6])
def test_projection_equals_fft_definition(hw, threshold):
    x = torch.randn(2, 3, *hw, generator=GEN)
    want = fft_definition(x, threshold, 0.3)
    # fp32 rounding: |x| <= ~5 here, fp32 eps 1.2e-7; wider boxes sum more terms.
    tol = 2e-6 if threshold <= 2 else 5e-6
    for method in ("auto", "dense", "separable"):
        got = fourier_filter(x, threshold, 0.3, method=method)
        assert got.dtype == torch.float32
        assert (got.double() - want).abs().max() < tol, (method, hw, threshold)
    for other in (fourier_filter_fft, fourier_filter_rfft):
        assert (other(x, threshold, 0.3).double() - want).abs().max() < tol, other.__name__


def test_threshold_one_changes_seven_modes():
    """The claim the cheap filter rests on: only 7 of H*W modes change (box {-1,0}^2 + mirrors)."""
    for h, w in [(8, 8), (9, 7), (32, 32), (128, 128)]:
        assert changed_modes(h, w, 1) == 7
        x = torch.randn(1, 1, h, w, generator=GEN, dtype=torch.float64)
        diff = torch.fft.fft2(fourier_filter(x.float(), 1, 0.2).double() - x)
        assert int((diff.abs() > 1e-4).sum()) == 7
    assert box_frequencies(8, 1) == (7, 0) and box_frequencies(9, 1) == (8, 0)


def test_filter_is_linear_and_scale_one_is_identity():
    x, z = torch.randn(2, 4, 9, 8, generator=GEN), torch.randn(2, 4, 9, 8, generator=GEN)
    f = lambda t: fourier_filter(t, 1, 0.4)  # noqa: E731
    assert torch.allclose(f(2 * x + z), 2 * f(x) + f(z), atol=1e-5)
    assert fourier_filter(x, 1, 1.0) is x
    # The DC mode is in the box and is its own mirror: it is scaled by exactly s.
    assert torch.allclose(fourier_filter(x, 1, 0.25).mean((-2, -1)), 0.25 * x.mean((-2, -1)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_round_like_the_fp32_result(dtype):
    x = torch.randn(2, 8, 9, 12, generator=GEN).to(dtype)
    got = fourier_filter(x, 1, 0.2)
    assert got.dtype == dtype
    want = fft_definition(x.float(), 1, 0.2)
    # At most one rounding step of the output dtype away from the exact value.
    # Half a rounding step of the output dtype (round to nearest) plus fp32 rounding.
    assert ((got.double() - want).abs() <= torch.finfo(dtype).eps / 2 * want.abs() + 2e-6).all()


def test_projection_needs_no_fft(monkeypatch):
    """A device without FFT (DirectML, ZLUDA, old MPS): the projection never calls torch.fft."""
    x = torch.randn(2, 3, 7, 10, generator=GEN)
    want = fourier_filter_fft(x, 1, 0.2)

    def no_fft(*a, **k):
        raise RuntimeError("FFT is not supported on this device")
    for name in ("fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2",
                 "rfftn", "irfftn", "fftshift", "ifftshift"):
        monkeypatch.setattr(torch.fft, name, no_fft)
    for threshold in (1, 5):
        fourier_filter(torch.randn(1, 2, 11, 12, generator=GEN), threshold, 0.5)  # fresh size: builds its basis
    assert torch.allclose(fourier_filter(x, 1, 0.2), want, atol=2e-6)


def written_out_v2(h, b):
    """FreeU v2 as the FreeU authors write it (a separate copy, not in place)."""
    h = h.clone()
    mean = h.mean(1).unsqueeze(1)
    n = mean.shape[0]
    hi = torch.max(mean.view(n, -1), dim=-1, keepdim=True)[0][..., None, None]
    lo = torch.min(mean.view(n, -1), dim=-1, keepdim=True)[0][..., None, None]
    m = (mean - lo) / (hi - lo)
    half = h.shape[1] // 2
    h[:, :half] = h[:, :half] * ((b - 1) * m + 1)
    return h


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_backbone_scaling_is_bit_identical_to_the_formula(dtype):
    h = torch.randn(3, 10, 5, 7, generator=GEN).to(dtype)
    v1 = h.clone()
    v1[:, :5] = v1[:, :5] * 1.3
    assert torch.equal(scale_backbone(h.clone(), 1.3, "v1"), v1)
    assert torch.equal(scale_backbone(h.clone(), 1.4, "v2"), written_out_v2(h, 1.4))


def test_structure_map_of_a_constant_mean_is_zero_not_nan():
    h = torch.ones(2, 4, 3, 3)
    assert torch.equal(structure_map(h), torch.zeros(2, 1, 3, 3))
    assert torch.equal(scale_backbone(h.clone(), 1.5, "v2"), h)
    m = structure_map(torch.randn(2, 4, 6, 6, generator=GEN))
    assert m.amin() == 0 and m.amax() == 1


def test_windows():
    w = window_from_sigma(2.0, 0.5)
    assert w.contains(2.0) and w.contains(0.5) and w.contains(1.0)
    assert not w.contains(2.1) and not w.contains(0.49)
    assert w.contains(float(torch.tensor(2.0 * (1 + 1e-7), dtype=torch.float32)))  # float32 slack
    sig = [14.6, 5.0, 2.0, 1.0, 0.5, 0.0]
    assert window_from_steps(sig, 3, -1) == SigmaWindow(high=1.0, low=0.0)
    assert window_from_steps(sig, 0, 2) == SigmaWindow(high=14.6, low=2.0)
    pts = lambda p: 0.0 if p >= 1 else (1e9 if p <= 0 else 10 * (1 - p))  # noqa: E731
    assert window_from_percent(0.0, 1.0, pts).covers_everything
    assert window_from_percent(0.5, 1.0, pts) == SigmaWindow(high=5.0, low=0.0)


@pytest.mark.parametrize("call,match", [
    (lambda: window_from_sigma(0.5, 2.0), "start_sigma"),
    (lambda: window_from_sigma(1.0, -0.1), "end_sigma"),
    (lambda: window_from_sigma(float("nan"), 0.0), "start_sigma"),
    (lambda: window_from_percent(0.7, 0.2, float), "start_percent"),
    (lambda: window_from_percent(-0.1, 1.0, float), "start_percent"),
    (lambda: window_from_percent(0.0, 1.5, float), "end_percent"),
    (lambda: window_from_steps([3.0, 2.0, 1.0, 0.0], 2.5, -1), "start_step"),
    (lambda: window_from_steps([3.0, 2.0, 1.0, 0.0], 0, 4), "end_step"),
    (lambda: window_from_steps([3.0, 2.0, 1.0, 0.0], 3, 1), "start_step"),
    (lambda: window_from_steps([3.0, 4.0, 1.0, 0.0], 0, -1), "non-increasing"),
    (lambda: window_from_steps([3.0, float("nan"), 0.0], 0, -1), "NaN"),
    (lambda: window_from_steps([], 0, -1), "empty"),
    (lambda: FreeUPatch(32, 1.1, 1.2, 0.9, 0.2, version="v3"), "version"),
    (lambda: FreeUPatch(32, 1.1, 1.2, 0.9, 0.2, threshold=0), "threshold"),
    (lambda: FreeUPatch(32, float("inf"), 1.2, 0.9, 0.2), "b1"),
    (lambda: resolve("SD9", 1, 1, 1, 1), "preset"),
])
def test_bad_input_gives_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_presets():
    assert resolve(CUSTOM, 1.01, 1.02, 0.5, 0.6) == (1.01, 1.02, 0.5, 0.6)
    values = {v for v, _ in PRESETS.values()}
    assert {(1.3, 1.4, 0.9, 0.2), (1.5, 1.6, 0.9, 0.2), (1.1, 1.1, 0.9, 0.2), (1.2, 1.2, 0.9, 0.2)} <= values
    for name in NAMES[1:]:
        assert resolve(name, 0, 0, 0, 0) == PRESETS[name][0] and PRESETS[name][1]


def features(mc, stage, batch=2, hw=(9, 8), dtype=torch.float32):
    return (torch.randn(batch, stage * mc, *hw, generator=GEN).to(dtype),
            torch.randn(batch, stage * mc // 2, *hw, generator=GEN).to(dtype))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_patch_acts_on_the_two_stages_only(version):
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, version=version)
    for stage, (b, s) in ((4, (1.3, 0.9)), (2, (1.4, 0.2))):
        h, hsp = features(8, stage)
        got_h, got_hsp = p(h.clone(), hsp.clone(), {"sigmas": torch.tensor([1.0, 1.0])})
        assert torch.equal(got_h, scale_backbone(h.clone(), b, version))
        assert torch.equal(got_hsp, fourier_filter(hsp, 1, s))
    h, hsp = features(8, 1)
    got = p(h, hsp, {})
    assert got[0] is h and got[1] is hsp


def test_closed_window_returns_the_inputs_untouched():
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, version="v2", window=window_from_sigma(0.8, 0.3))
    for sigma in (14.6, 0.81, 0.29, 0.0):
        h, hsp = features(8, 4)
        h0 = h.clone()
        got = p(h, hsp, {"sigmas": torch.tensor([sigma, sigma])})
        assert got[0] is h and got[1] is hsp and torch.equal(h, h0)
    h, hsp = features(8, 4)
    assert not torch.equal(p(h.clone(), hsp, {"sigmas": torch.tensor([0.5, 0.5])})[1], hsp)


def test_mixed_sigmas_in_a_batch_gate_per_sample():
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, version="v2", window=window_from_sigma(1.0, 0.0))
    full = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, version="v2")
    h, hsp = features(8, 4, batch=4)
    # Two chunks (cond, uncond) of a batch of 2 with σ (5, 0.5): samples 1 and 3 are on.
    got_h, got_hsp = p(h.clone(), hsp.clone(), {"sigmas": torch.tensor([5.0, 0.5])})
    want_h, want_hsp = full(h.clone(), hsp.clone(), {})
    for i, on in enumerate([False, True, False, True]):
        ref_h, ref_hsp = (want_h, want_hsp) if on else (h, hsp)
        assert torch.equal(got_h[i], ref_h[i]) and torch.equal(got_hsp[i], ref_hsp[i]), i


def test_decision_is_per_call_not_cached_across_calls():
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, window=window_from_sigma(1.0, 0.0))
    h, hsp = features(8, 4)
    sig = torch.tensor([0.5, 0.5])
    assert p(h.clone(), hsp, {"sigmas": sig})[1] is not hsp
    sig.fill_(3.0)  # same tensor object changed in place: must be re-read
    assert p(h.clone(), hsp, {"sigmas": sig})[1] is hsp
    assert p(h.clone(), hsp, {"sigmas": torch.tensor([0.9, 0.9])})[1] is not hsp


def test_bounded_window_without_sigma_is_an_error():
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2, window=window_from_sigma(1.0, 0.0))
    h, hsp = features(8, 4)
    with pytest.raises(RuntimeError, match="sigmas"):
        p(h, hsp, {})
    # The always-on window needs no σ at all (and reads none: no device sync).
    assert FreeUPatch(8, 1.3, 1.4, 0.9, 0.2)(h.clone(), hsp, {})[1] is not hsp


def test_deepcopy_shares_the_patch():
    import copy
    p = FreeUPatch(8, 1.3, 1.4, 0.9, 0.2)
    assert copy.deepcopy({"patches": [p]})["patches"][0] is p
    assert math.isinf(p.window.high)


@pytest.fixture
def filter_module(monkeypatch):
    import freeu.filter as module
    monkeypatch.setattr(module, "_mixed_ok", {})
    return module


def fp32_out_emulated(a, b):
    """What torch.mm(a, b, out_dtype=float32) computes on CUDA: exact products, fp32 sums."""
    return a.float() @ b.float()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixed_precision_route_keeps_fp32_accuracy(filter_module, monkeypatch, dtype):
    """The low-precision route reads x in its own dtype against a basis split into three
    low-precision parts; its result matches the fp32 route up to the final rounding."""
    monkeypatch.setattr(filter_module, "mm_fp32_out", fp32_out_emulated)
    for hw in [(9, 7), (32, 32), (64, 48)]:
        x = (3 * torch.randn(2, 16, *hw, generator=GEN)).to(dtype)
        mixed = fourier_filter(x, 1, 0.2, method="mixed")
        dense = fourier_filter(x, 1, 0.2, method="dense")
        want = fft_definition(x.float(), 1, 0.2)
        assert ((mixed.double() - want).abs() <= torch.finfo(dtype).eps / 2 * want.abs() + 4e-6).all()
        assert (mixed != dense).float().mean() < 0.01  # only where fp32 rounding straddles a tie
        assert torch.equal(fourier_filter(x, 1, 0.2), mixed)  # "auto" takes this route here
    assert filter_module._mixed_ok == {("cpu", None, dtype): True}


def test_mixed_route_falls_back_where_unsupported_or_wrong(filter_module, monkeypatch):
    x = torch.randn(2, 8, 9, 7, generator=GEN).half()
    dense = fourier_filter(x, 1, 0.2, method="dense")
    # Unsupported (plain CPU torch.mm has no fp32 output for fp16): the fp32 route, remembered.
    assert torch.equal(fourier_filter(x, 1, 0.2), dense)
    assert filter_module._mixed_ok[("cpu", None, torch.float16)] is False
    # A backend returning a rounded fp16 product fails the one-time check and is not used.
    filter_module._mixed_ok.clear()
    monkeypatch.setattr(filter_module, "mm_fp32_out", lambda a, b: (a.float() @ b.float()).half().float())
    assert torch.equal(fourier_filter(x, 1, 0.2), dense)
    assert filter_module._mixed_ok[("cpu", None, torch.float16)] is False
    with pytest.raises(ValueError, match="mixed"):
        fourier_filter(x.float(), 1, 0.2, method="mixed")
    with pytest.raises(ValueError, match="float64"):
        fourier_filter(x.double(), 1, 0.2)


def test_bases_built_under_inference_mode_serve_autograd_later():
    x = torch.randn(1, 2, 13, 11, generator=GEN)
    with torch.inference_mode():
        fourier_filter(x, 1, 0.3)  # first use of this size: bases are cached here
    leaf = x.clone().requires_grad_(True)
    fourier_filter(leaf, 1, 0.3).sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()
