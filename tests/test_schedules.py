"""Schedules (pure maths, no ComfyUI): published values, formulas' properties, bad inputs."""

import pytest
import torch

from samplers.schedules import (FSCHEDULER_PRESETS, denoise_tail, fscheduler_sigmas, fscheduler_stop_sigma,
                                fscheduler_timesteps, karras_sigmas, power_timesteps, sd_discrete_sigmas,
                                table_sigma, table_timestep, timestep_power_sigmas)

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

# research/fscheduler.md section 1.3: sigma_stop, t_i (rounded to 0.1), sigma_i (4 digits), recomputed
# there from the official code's formulas for the SD1.5/SDXL training schedule.
PUBLISHED = {
    "512x5": (0.1320, [999, 772.5, 556.7, 354.2, 170.0, 18.3],
              [14.6146, 4.5188, 1.9615, 1.0010, 0.5015, 0.1320]),
    "512x6": (0.1320, [999, 809.6, 627.3, 453.5, 290.4, 141.7, 18.3],
              [14.6146, 5.3409, 2.5230, 1.3877, 0.8052, 0.4374, 0.1320]),
    "512x8": (0.1471, [999, 857.3, 719.4, 585.9, 457.2, 334.4, 218.7, 112.7, 22.7],
              [14.6146, 6.7121, 3.6076, 2.1723, 1.4045, 0.9366, 0.6169, 0.3725, 0.1472]),
    "1024x6": (0.0598, [999, 804.3, 617.2, 439.2, 272.7, 122.2, 3.2],
               [14.6146, 5.2124, 2.4311, 1.3238, 0.7560, 0.3937, 0.0600]),
    "1024x8": (0.0598, [999, 852.3, 709.7, 571.8, 439.2, 313.0, 195.0, 88.2, 3.2],
               [14.6146, 6.5481, 3.4672, 2.0671, 1.3238, 0.8711, 0.5597, 0.3171, 0.0600]),
    "1024x5": (0.1179, [999, 771.1, 554.0, 350.5, 165.6, 14.6],
               [14.6146, 4.4909, 1.9435, 0.9886, 0.4915, 0.1179]),
}


@pytest.fixture(scope="module")
def table():
    return sd_discrete_sigmas()


def test_sd_table_matches_the_published_range(table):
    assert table.shape == (1000,) and table.dtype == torch.float32
    assert (table[1:] > table[:-1]).all()
    assert abs(table[0].item() - 0.0291675) < 1e-6 and abs(table[-1].item() - 14.614642) < 1e-5


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_fscheduler_presets_reproduce_the_published_lists(table, name):
    stop, ts, sigmas = PUBLISHED[name]
    p = FSCHEDULER_PRESETS[name]
    got = fscheduler_sigmas(model_sigmas=table, dtype=torch.float64, **p)
    assert got.numel() == p["steps"] + 1 and got[-1] > 0, "no trailing zero"
    assert [round(v, 4) for v in got.tolist()] == pytest.approx(sigmas, abs=1e-9), got.tolist()
    assert round(fscheduler_stop_sigma(table[0].item(), table[-1].item(), p["p2"], p["grid_points"],
                                       p["stop_index"]), 4) == pytest.approx(stop, abs=1e-9)
    got_t = fscheduler_timesteps(model_sigmas=table, **p).tolist()
    # the notes give t to 0.1; two of their values sit just across a rounding edge
    # (334.348 -> 334.4, 194.947 -> 195.0), so t is checked to 0.06 and sigma to 4 digits
    assert got_t == pytest.approx(ts, abs=0.06)


def test_log_sigma_interpolation_ends_exactly_at_sigma_stop(table):
    p = FSCHEDULER_PRESETS["1024x6"]
    got = fscheduler_sigmas(model_sigmas=table, interpolation="log_sigma", dtype=torch.float64, **p)
    stop = fscheduler_stop_sigma(table[0].item(), table[-1].item(), p["p2"], p["grid_points"], p["stop_index"])
    assert got[-1].item() == pytest.approx(stop, rel=1e-9)
    # alphas_cumprod (paper code) lands 0.3 % above it: 0.0600 vs 0.0598
    paper = fscheduler_sigmas(model_sigmas=table, dtype=torch.float64, **p)
    assert 0 < paper[-1].item() / stop - 1 < 0.004


def test_timestep_power_reference_grid(table):
    # the reference code's baseline ("original"): t_max 999, t_min 1, rho_t 1.2, 8 points
    t = power_timesteps(8, 999, 1, 1.2)
    assert [round(v, 1) for v in t.tolist()] == [999.0, 830.8, 668.1, 511.9, 363.2, 224.3, 98.9, 1.0]
    s = timestep_power_sigmas(8, table, rho_t=1.2, t_min=1, dtype=torch.float64)
    assert s.numel() == 9 and s[-1] == 0
    assert torch.allclose(s[:-1], table_sigma(t, table), rtol=1e-12)
    assert s[0].item() == pytest.approx(table[-1].item(), rel=1e-7)
    # without the trailing zero: steps + 1 points, ending at sigma(t_min)
    s2 = timestep_power_sigmas(8, table, t_min=1, append_zero=False, dtype=torch.float64)
    assert s2.numel() == 9 and s2[-1].item() == pytest.approx(table[1].item(), rel=1e-7)


def test_timestep_power_rho_one_is_uniform_in_t(table):
    s = timestep_power_sigmas(4, table, rho_t=1.0, t_max=900, t_min=0, dtype=torch.float64)
    assert torch.allclose(s[:-1], table[[900, 600, 300, 0]].double(), rtol=1e-6)


def test_table_interpolation_and_inverse(table):
    t = torch.tensor([0.0, 0.25, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    s = table_sigma(t, table)
    assert torch.allclose(table_timestep(s, table), t, atol=1e-9)
    # between steps log sigma is linear
    lo, hi = table[17].double().log(), table[18].double().log()
    assert s[2].log().item() == pytest.approx(((lo + hi) / 2).item(), abs=1e-12)
    s_ac = table_sigma(t, table, "alphas_cumprod")
    integer = torch.tensor([0, 3, 5])  # equal at integer steps, different in between
    assert torch.allclose(s_ac[integer], s[integer], rtol=1e-12)
    assert not torch.allclose(s_ac[2], s[2], rtol=1e-6)


def test_karras_matches_its_definition():
    s = karras_sigmas(10, 0.002, 80.0, rho=7.0, dtype=torch.float64)
    assert s.numel() == 11 and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    roots = s[:-1] ** (1 / 7)  # linear in i
    assert torch.allclose(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(9), atol=1e-12)
    assert karras_sigmas(1, 0.1, 10.0).tolist() == pytest.approx([10.0, 0.0])
    assert karras_sigmas(5, 0.1, 10.0, append_zero=False).numel() == 5
    assert karras_sigmas(5, 0.1, 10.0).dtype == torch.float32


def test_denoise_tail_follows_comfyui():
    make = lambda n: karras_sigmas(n, 0.03, 14.6, dtype=torch.float64)
    assert torch.equal(denoise_tail(make, 6, 1.0), make(6))
    got = denoise_tail(make, 6, 0.5)
    assert torch.equal(got, make(12)[-7:])


@pytest.mark.parametrize("call, param", [
    (lambda t: karras_sigmas(0, 0.1, 10), "steps"),
    (lambda t: karras_sigmas(2.5, 0.1, 10), "steps"),
    (lambda t: karras_sigmas(5, 10, 0.1), "sigma_min"),
    (lambda t: karras_sigmas(5, 1, 1), "sigma_min"),
    (lambda t: karras_sigmas(5, -1, 1), "sigma_min"),
    (lambda t: karras_sigmas(5, 0.1, float("nan")), "sigma_max"),
    (lambda t: karras_sigmas(5, 0.1, 10, rho=0), "rho"),
    (lambda t: karras_sigmas(5, 0.1, 10, rho=-2), "rho"),
    (lambda t: timestep_power_sigmas(0, t), "steps"),
    (lambda t: timestep_power_sigmas(5, t, rho_t=0), "rho_t"),
    (lambda t: timestep_power_sigmas(5, t, t_max=100, t_min=200), "t_min"),
    (lambda t: timestep_power_sigmas(5, t, t_max=5000), "t_max"),
    (lambda t: timestep_power_sigmas(5, t, interpolation="cubic"), "interpolation"),
    (lambda t: timestep_power_sigmas(5, t.flip(0)), "model_sigmas"),
    (lambda t: fscheduler_sigmas(5, t, stop_index=8, grid_points=8), "stop_index"),
    (lambda t: fscheduler_sigmas(5, t, stop_index=0), "stop_index"),
    (lambda t: fscheduler_sigmas(5, t, grid_points=1), "grid_points"),
    (lambda t: fscheduler_sigmas(5, t, p1=0), "p1"),
    (lambda t: fscheduler_sigmas(5, t, p2=-1), "p2"),
    (lambda t: fscheduler_sigmas(0, t), "steps"),
    (lambda t: fscheduler_sigmas(5, t, t_max=10.0), "stop_index"),
    (lambda t: denoise_tail(lambda n: karras_sigmas(n, 0.1, 10), 5, 0.0), "denoise"),
    (lambda t: sd_discrete_sigmas(beta_start=0.02, beta_end=0.01), "beta_end"),
])
def test_bad_schedule_input_names_the_parameter(table, call, param):
    with pytest.raises(ValueError, match=rf"^{param}\b"):
        call(table)
