"""The fused FreeU kernel (freeu/fused.py) against the torch route, through Triton's CPU interpreter.

The same Triton source compiles for CUDA; bench/bench_freeu.py re-checks it there on the SDXL
UNet (bit-identical backbone in fp16/bf16, closed window bit-identical, output vs ComfyUI)."""
import math

import pytest
import torch

pytest.importorskip("triton")

from freeu import fused  # noqa: E402
from freeu.backbone import scale_backbone  # noqa: E402
from freeu.filter import fourier_filter  # noqa: E402
from freeu.patch import FreeUPatch  # noqa: E402
from freeu.window import SigmaWindow, window_from_sigma  # noqa: E402

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("FEWSTEP_FREEU_FUSED", "interpret")


def torch_route(h, hsp, b, s, threshold, version):
    h = scale_backbone(h.clone(), b, version)
    return h, fourier_filter(hsp, threshold, s, "dense")


def ulp(t: torch.Tensor) -> torch.Tensor:
    """One unit in the last place of each value in t's dtype (as fp32)."""
    a = t.float().abs().clamp_min(torch.finfo(t.dtype).tiny)
    return torch.finfo(t.dtype).eps * torch.exp2(torch.floor(torch.log2(a)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("hw", [(8, 8), (9, 7), (33, 65), (2, 3)])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_block_equals_the_torch_route(dtype, hw, version, threshold):
    gen = torch.Generator().manual_seed(hash((str(dtype), hw, version, threshold)) % 2**31)
    h = (3 * torch.randn(2, 6, *hw, generator=gen)).to(dtype)
    hsp = (3 * torch.randn(2, 5, *hw, generator=gen)).to(dtype)
    want_h, want_hsp = torch_route(h, hsp, 1.3, 0.2, threshold, version)
    got_h, got_hsp = h.clone(), hsp.clone()
    assert fused.usable(got_h, got_hsp, threshold)
    assert fused.freeu_block(got_h, got_hsp, 1.3, 0.2, threshold, version, None, 0.0, math.inf)
    assert not torch.equal(got_hsp, hsp) and not torch.equal(got_h, h)
    assert torch.equal(got_h[:, 3:], h[:, 3:])  # second half of the backbone untouched
    if dtype == torch.bfloat16:
        # numpy has no bfloat16: the interpreter's conversion may round the other way (on the GPU
        # it rounds to nearest like PyTorch, which bench_freeu.py checks bit for bit); v2 rounds
        # three times more (the factor) before the product.
        steps = 1 if version == "v1" else 4
        assert ((got_h.float() - want_h.float()).abs() <= steps * ulp(want_h)).all()
    elif version == "v1":
        assert torch.equal(got_h, want_h)
    elif dtype == torch.float32:  # channel sums in another order than torch.mean: fp32 rounding
        assert torch.allclose(got_h, want_h, rtol=1e-5, atol=0)
    else:  # ... and in fp16 a mean value may round the other way
        assert ((got_h.float() - want_h.float()).abs() <= ulp(want_h)).all()
        assert (got_h != want_h).float().mean() < 0.02
    # Skip features: one rounding of the fp32 result (sums in another order than the torch route).
    slack = 16 * torch.finfo(torch.float32).eps * hsp.float().abs().max()
    assert ((got_hsp.float() - want_hsp.float()).abs() <= ulp(want_hsp) + slack).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("chunk, ct, tile", [(16, 16, 64), (8, 4, 512), (8, 8, 16), (12, 8, 128)])
@pytest.mark.parametrize("piece", [4096, 50])
def test_v2_channel_mean_over_many_chunks_and_tiles(monkeypatch, dtype, chunk, ct, tile, piece):
    """v2's mean map in pieces: channels split into chunks (the last one partial), chunk sizes that
    are not a multiple of the per-iteration channel count, pixel tiles of the map down to 16; the
    map built by the last chunk program of each tile.
    Run twice: the tile counters must be back at zero after a call. Backbone planes scaled whole
    or in pieces by several programs."""
    monkeypatch.setattr(fused, "_SCALE_PIECE", piece)  # backbone in pieces across planes of 357 pixels
    monkeypatch.setattr(fused, "_MEAN_CHUNK", chunk)
    monkeypatch.setattr(fused, "_SUM_CT", ct)
    monkeypatch.setattr(fused, "_SUM_BLOCK", tile)
    gen = torch.Generator().manual_seed(chunk * 1000 + tile)
    h = (3 * torch.randn(2, 44, 17, 21, generator=gen) + torch.randn(2, 1, 17, 21, generator=gen)).to(dtype)
    hsp = torch.randn(2, 3, 17, 21, generator=gen).to(dtype)
    want_h, _ = torch_route(h, hsp, 1.3, 0.2, 1, "v2")
    got_h = h.clone()
    assert fused.freeu_block(got_h, hsp.clone(), 1.3, 0.2, 1, "v2", None, 0.0, math.inf)
    again = h.clone()
    assert fused.freeu_block(again, hsp.clone(), 1.3, 0.2, 1, "v2", None, 0.0, math.inf)
    assert torch.equal(again, got_h)
    assert all(int(buf.abs().sum()) == 0 for buf in fused._counters.values())
    assert torch.equal(got_h[:, 22:], h[:, 22:])
    if dtype == torch.float32:
        assert torch.allclose(got_h, want_h, rtol=1e-5, atol=0)
    else:
        assert ((got_h.float() - want_h.float()).abs() <= ulp(want_h)).all()
        assert (got_h != want_h).float().mean() < 0.02
    # a wrong chunk bookkeeping (a channel counted twice or skipped) moves the map far more than that
    assert not torch.allclose(got_h.float(), scale_backbone(h.clone(), 1.3, "v1").float(), atol=1e-2)

@pytest.mark.parametrize("piece", [7, 64, 4096])
def test_v1_backbone_planes_in_pieces(monkeypatch, piece):
    monkeypatch.setattr(fused, "_SCALE_PIECE", piece)
    gen = torch.Generator().manual_seed(piece)
    h, hsp = torch.randn(3, 10, 13, 11, generator=gen).half(), torch.randn(3, 4, 13, 11, generator=gen).half()
    want_h, _ = torch_route(h, hsp, 1.3, 0.2, 1, "v1")
    got_h = h.clone()
    assert fused.freeu_block(got_h, hsp.clone(), 1.3, 0.2, 1, "v1", None, 0.0, math.inf)
    assert torch.equal(got_h, want_h)

def test_gate_per_sample_matches_the_window_bit_for_bit():
    window = window_from_sigma(1.0, 0.25)
    edge = [window.high * (1 + 1e-5), window.low * (1 - 1e-5)]
    values = [2.0, 1.0, 0.5, 0.25, 0.1, 0.0] + [float(torch.tensor(v).float()) for v in edge]
    values += [math.nextafter(v, d) for v in values[-2:] for d in (0.0, math.inf)]
    sigmas = torch.tensor(values, dtype=torch.float32)
    n = sigmas.numel()
    gen = torch.Generator().manual_seed(5)
    h, hsp = torch.randn(2 * n, 4, 6, 6, generator=gen), torch.randn(2 * n, 2, 6, 6, generator=gen)
    patch = FreeUPatch(1, 1.3, 1.4, 0.9, 0.2, window=window)
    got_h, got_hsp = patch(h.clone(), hsp.clone(), {"sigmas": sigmas})
    for i in range(2 * n):  # cond and uncond halves share the σ of sample i % n
        on = window.contains(float(sigmas[i % n]))
        assert torch.equal(got_h[i], h[i]) != on, (i, float(sigmas[i % n]))
        assert torch.equal(got_hsp[i], hsp[i]) != on


@pytest.mark.parametrize("early", [True, False])
@pytest.mark.parametrize("tile", [2048, 64])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_gated_launch_settings_agree_with_the_torch_route(monkeypatch, early, tile, version):
    """Per-sample gating with v2's early backbone read on and off, planes in one tile and in
    several: samples inside the window equal the torch route, samples outside are untouched."""
    monkeypatch.setattr(fused, "_EARLY_READ", early)
    monkeypatch.setattr(fused, "_TILE", tile)
    monkeypatch.setattr(fused, "_SCALE_PIECE", 100)  # several scaling programs per sample
    window = window_from_sigma(1.0, 0.25)
    sigmas = torch.tensor([2.0, 0.5, 0.1, 1.0], dtype=torch.float32)
    gen = torch.Generator().manual_seed(11)
    for hw in ((4, 4), (12, 10), (17, 16)):
        h = (3 * torch.randn(4, 8, *hw, generator=gen)).half()
        hsp = (3 * torch.randn(4, 4, *hw, generator=gen)).half()
        patch = FreeUPatch(2, 1.3, 1.4, 0.9, 0.2, version=version, window=window)
        got_h, got_hsp = patch(h.clone(), hsp.clone(), {"sigmas": sigmas})
        monkeypatch.setenv("FEWSTEP_FREEU_FUSED", "off")
        want_h, want_hsp = patch(h.clone(), hsp.clone(), {"sigmas": sigmas})
        monkeypatch.setenv("FEWSTEP_FREEU_FUSED", "interpret")
        for i, sigma in enumerate(sigmas.tolist()):
            if not window.contains(sigma):
                assert torch.equal(got_h[i], h[i]) and torch.equal(got_hsp[i], hsp[i]), (hw, i)
                continue
            assert not torch.equal(got_hsp[i], hsp[i]), (hw, i)
            assert ((got_h[i].float() - want_h[i].float()).abs() <= ulp(want_h[i])).all(), (hw, i)
            slack = 16 * torch.finfo(torch.float32).eps * hsp[i].float().abs().max()
            assert ((got_hsp[i].float() - want_hsp[i].float()).abs() <= ulp(want_hsp[i]) + slack).all(), (hw, i)


def test_closed_window_writes_nothing():
    gen = torch.Generator().manual_seed(6)
    h, hsp = torch.randn(2, 8, 9, 9, generator=gen).half(), torch.randn(2, 4, 9, 9, generator=gen).half()
    patch = FreeUPatch(2, 1.3, 1.4, 0.9, 0.2, version="v2", window=SigmaWindow(high=0.5, low=0.1))
    got_h, got_hsp = patch(h.clone(), hsp.clone(), {"sigmas": torch.tensor([3.0, 3.0])})
    assert torch.equal(got_h, h) and torch.equal(got_hsp, hsp)


def test_patch_takes_the_fused_route_and_agrees_with_the_torch_route(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    h, hsp = torch.randn(2, 8, 12, 10, generator=gen), torch.randn(2, 8, 12, 10, generator=gen)
    patch = FreeUPatch(2, 1.3, 1.4, 0.9, 0.2, version="v2")
    in_h, in_hsp = h.clone(), hsp.clone()
    out_h, out_hsp = patch(in_h, in_hsp, {})
    assert out_hsp is in_hsp and out_h is in_h  # the fused route works in place
    monkeypatch.setenv("FEWSTEP_FREEU_FUSED", "off")
    ref_h, ref_hsp = patch(h.clone(), hsp.clone(), {})
    assert ref_hsp is not hsp
    assert torch.equal(out_h, ref_h)
    assert torch.allclose(out_hsp, ref_hsp, rtol=0, atol=1e-5)


def test_layouts_the_kernel_does_not_take_fall_back():
    h, hsp = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    assert fused.usable(h, hsp, 1)
    assert not fused.usable(h.transpose(2, 3), hsp, 1)                    # not contiguous
    assert not fused.usable(h, hsp, fused.MAX_THRESHOLD + 1)               # box too large
    assert not fused.usable(h.double(), hsp, 1)                           # dtype
    assert not fused.usable(h, hsp[:, :, :4], 1)                          # sizes differ
    with torch.enable_grad():
        assert not fused.usable(h.requires_grad_(), hsp, 1)               # autograd needs the torch route
    patch = FreeUPatch(2, 1.3, 1.4, 0.9, 0.2)
    g = torch.randn(1, 8, 8, 8, requires_grad=True)
    with torch.enable_grad():
        out_h, out_hsp = patch(g * 1, hsp.clone(), {})
        out_h.sum().backward()  # the torch route ran: autograd intact
    assert torch.equal(g.grad[:, :4], torch.full_like(g.grad[:, :4], 1.3))


def test_bad_sigma_count_is_a_clear_error():
    patch = FreeUPatch(2, 1.3, 1.4, 0.9, 0.2, window=SigmaWindow(high=2.0, low=0.5))
    with pytest.raises(RuntimeError, match="not a multiple"):
        patch(torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4), {"sigmas": torch.ones(2)})
