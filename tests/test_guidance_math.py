"""Pure maths of issue 24 (no ComfyUI): CFG++ forms against hand-written formulas on the
class-conditional lab, the lab's window and row count, distilled-timestep rules."""
import math

import pytest
import torch

from freeu.window import SigmaWindow
from guidance.lab import ClassLab, GuidedLabModel, measures
from samplers.deis import sample_deis_tab
from samplers.distilled import PRESETS, far_steps, lcm_steps, trailing, turbo_steps
from samplers.dpmpp import sample_dpmpp_1s, sample_dpmpp_2m, sample_dpmpp_3m
from samplers.exact import MixtureSpec
from samplers.schedules import karras_sigmas
from samplers.unipc import sample_unipc_fs

LAB = ClassLab(MixtureSpec("gmm", 8, 0.3, 3), 3, (2, 2, 2))


def start(count=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((count, *LAB.shape), generator=gen, dtype=torch.float64) * 14.6


def sig(n=6):
    return karras_sigmas(n, 0.0292, 14.6, dtype=torch.float64)


@pytest.mark.parametrize("fn,kw", [(sample_dpmpp_1s, {}), (sample_dpmpp_2m, {}), (sample_dpmpp_3m, {}),
                                   (sample_deis_tab, {"order": 3}), (sample_unipc_fs, {"order": 2})])
def test_cfg_pp_with_scale_1_is_the_plain_solver_bitwise(fn, kw):
    """Scale 1: D_cfg is the conditional estimate and the lab returns it as the unconditional too."""
    x = start()
    a = GuidedLabModel(LAB, 1.0)
    b = GuidedLabModel(LAB, 1.0)
    plain = fn(a, x, sig(), disable=True, **kw)
    pp = fn(b, x, sig(), disable=True, cfg_pp=b.latest_uncond, **kw)
    assert torch.equal(plain, pp)


def test_cfg_pp_ddim_is_the_papers_step():
    x = start()
    s = sig(5)
    model = GuidedLabModel(LAB, 0.7)
    out = sample_dpmpp_1s(model, x, s, disable=True, cfg_pp=model.latest_uncond)
    ref = GuidedLabModel(LAB, 0.7)
    y = x
    for i in range(len(s) - 1):
        d = ref(y, s[i])
        eps_u = (y - ref.uncond) / s[i]
        y = d + s[i + 1] * eps_u  # CFG++ DDIM: x' = D_cfg + σ' ε_u
    torch.testing.assert_close(out, y, rtol=1e-12, atol=1e-12)


def test_cfg_pp_2m_is_comfyuis_formula():
    """ComfyUI's dpmpp_2m_cfg_pp written out: x' = D + (-e^{-h} D_u - expm1(-h)/(2r) (D - D_u,prev)) + e^{-h} x."""
    x = start()
    s = sig(7)
    model = GuidedLabModel(LAB, 0.8)
    out = sample_dpmpp_2m(model, x, s, disable=True, cfg_pp=model.latest_uncond)
    ref = GuidedLabModel(LAB, 0.8)
    y, old = x, None
    for i in range(len(s) - 1):
        d = ref(y, s[i])
        u = ref.uncond
        if s[i + 1] == 0:
            y = d
            continue
        h = math.log(s[i] / s[i + 1])
        if old is None:
            mix = -math.exp(-h) * u
        else:
            r = math.log(s[i - 1] / s[i]) / h
            mix = -math.exp(-h) * u - math.expm1(-h) * (1 / (2 * r)) * (d - old)
        y = d + mix + math.exp(-h) * y
        old = u
    torch.testing.assert_close(out, y, rtol=1e-10, atol=1e-10)


def test_lab_window_rows_and_outputs():
    x = start(4)
    s = sig(8)
    win = SigmaWindow(high=math.inf, low=1.0)
    model = GuidedLabModel(LAB, 5.0, win)
    for v in s[:-1].tolist():
        d = model(x, v)
        cond = GuidedLabModel(LAB, 1.0)(x, v)
        if v >= 1.0:
            assert not torch.equal(d, cond)
        else:
            assert torch.equal(d, cond) and torch.equal(model.uncond, cond)
    assert model.rows == sum(2 if v >= 1.0 else 1 for v in s[:-1].tolist()) == 12


def test_measures_on_exact_samples():
    means, mask = LAB.means(), LAB.subset_mask()
    picks = torch.nonzero(mask).reshape(-1).repeat(50)
    x = means[picks].view(-1, *LAB.shape) + 0.3 * torch.randn(len(picks), *LAB.shape, dtype=torch.float64,
                                                             generator=torch.Generator().manual_seed(1))
    m = measures(LAB, x, x)
    assert m["on_modes"] > 0.95 and m["evenness"] > 0.95 and m["distance"] == 0.0


def test_distilled_rules():
    assert trailing(4) == [999, 749, 499, 249]
    assert trailing(8) == [999, 874, 749, 624, 499, 374, 249, 124]
    assert lcm_steps(4) == [999, 759, 499, 259]
    assert turbo_steps(4) == [999, 899, 799, 699] and turbo_steps(12) == trailing(12)
    assert PRESETS["dmd2"].timesteps(1) == [399] and PRESETS["dmd2"].timesteps(4) == trailing(4)
    assert far_steps([999, 687, 146, 0], trailing(4)) == [(2, 146.0, 249), (3, 0.0, 249)]
    assert far_steps(lcm_steps(7), PRESETS["lcm"].trained(4)) == []
    with pytest.raises(ValueError, match="trained_steps must be one of"):
        PRESETS["sdxl_lightning"].trained(3)
    with pytest.raises(ValueError, match="steps must be <= 50"):
        lcm_steps(51)
