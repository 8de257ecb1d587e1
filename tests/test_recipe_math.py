"""The F-scheduler recipe as data: schedules, solver choices, AFS point and FreeU windows against the
published values (research notes fscheduler.md §1.3 table, §1.4, §2 table). Pure maths, no ComfyUI."""
import math

import pytest

from freeu.window import window_from_start_index
from samplers.recipe import PUBLISHED, build_recipe, grid_preset, recipe_sigmas, solver_grid
from samplers.schedules import sd_discrete_sigmas, table_timestep
from samplers.unipc import timestep_midpoint

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

# fscheduler.md §1.3, sigma_i to 4 digits (SD1.5 and SDXL share the training schedule)
PUBLISHED_SIGMAS = {
    ("512", 5): [14.6146, 4.5188, 1.9615, 1.0010, 0.5015, 0.1320],
    ("512", 6): [14.6146, 5.3409, 2.5230, 1.3877, 0.8052, 0.4374, 0.1320],
    ("512", 8): [14.6146, 6.7121, 3.6076, 2.1723, 1.4045, 0.9366, 0.6169, 0.3725, 0.1472],
    ("1024", 6): [14.6146, 5.2124, 2.4311, 1.3238, 0.7560, 0.3937, 0.0600],
    ("1024", 8): [14.6146, 6.5481, 3.4672, 2.0671, 1.3238, 0.8711, 0.5597, 0.3171, 0.0600],
    ("1024", 5): [14.6146, 4.4909, 1.9435, 0.9886, 0.4915, 0.1179],
}
# fscheduler.md §2: t_aug, sigma at the FreeU-on evaluations, and the open interval a sigma gate may use
PUBLISHED_FREEU = {
    ("512", 6): (4, [0.8052, 0.4374], (0.81, 1.38)),
    ("512", 5): (4, [0.5015], (0.50, 1.00)),
    ("1024", 8): (6, [0.8711, 0.5597, 0.3171], (0.87, 1.32)),
    ("1024", 6): (4, [1.3238, 0.7560, 0.3937], (1.32, 2.43)),
}
TABLE = sd_discrete_sigmas(dtype=__import__("torch").float64)


def calls(grid, afs):
    """Solver-grid indices with a model call: all but the last point, and not the AFS point 0."""
    return list(range(1 if afs else 0, len(grid) - 1))


def recipe_outputs(resolution, steps, **kw):
    """(recipe, sigmas, AFS point, solver grid, FreeU window, grid indices of the calls with FreeU on)."""
    r = build_recipe(resolution, steps, **kw)
    sig = recipe_sigmas(r, TABLE)
    mid = timestep_midpoint(float(sig[0]), float(sig[1]), TABLE) if r.afs else None
    grid = solver_grid(sig, r.afs, mid)
    window = window_from_start_index(grid, r.freeu_start, first_call=1 if r.afs else 0)
    on = [i for i in calls(grid, r.afs) if window is not None and window.contains(grid[i])]
    return r, sig, mid, grid, window, on


@pytest.mark.parametrize("key", list(PUBLISHED_SIGMAS))
def test_recipe_sigmas_equal_the_published_lists(key):
    r, sig = recipe_outputs(*key)[:2]
    assert [round(float(s), 4) for s in sig] == PUBLISHED_SIGMAS[key]
    assert all(v == "published" for k, v in r.source.items() if k in ("p1", "p2", "grid_points", "stop_index"))


@pytest.mark.parametrize("key", list(PUBLISHED_FREEU))
def test_freeu_windows_equal_the_published_ones(key):
    start, sigmas_on, (lo, hi) = PUBLISHED_FREEU[key]
    r, sig, mid, grid, window, on = recipe_outputs(*key)
    assert r.freeu_start == start and r.source["freeu_start"] == "published"
    assert [round(grid[i], 4) for i in on] == sigmas_on
    assert on == [i for i in calls(grid, r.afs) if i >= start]
    assert lo <= window.high <= hi and window.low == 0.0
    assert len(calls(grid, r.afs)) == r.steps  # N model calls, with or without AFS


@pytest.mark.parametrize("steps, t_mid, sigma_mid", [(6, 901.6, 8.4192), (8, 925.7, 9.5775)])
def test_afs_point_is_the_timestep_midpoint(steps, t_mid, sigma_mid):
    r, sig, mid, grid = recipe_outputs("1024", steps)[:4]
    assert r.afs and grid[1] == mid
    assert float(table_timestep(mid, TABLE)) == pytest.approx(t_mid, abs=0.1)
    assert mid == pytest.approx(sigma_mid, abs=2e-4)
    assert calls(grid, r.afs)[0] == 1  # no evaluation at sigma_0


def test_solver_order_and_afs_follow_the_paper():
    for (res, n), pub in PUBLISHED.items():
        r = build_recipe(res, n)
        assert (r.order, r.afs) == (pub["order"], pub["afs"]), (res, n)
    assert build_recipe("512", 7).order == 2 and build_recipe("1024", 4).order == 1
    assert build_recipe("1024", 10).afs is False  # the code uses AFS only up to 8 steps


def test_unpublished_settings_use_stated_rules_and_no_freeu():
    r = build_recipe("512", 7)
    assert (r.p2, r.grid_points, r.stop_index) == (7.0, 12, 9) and r.source["p2"] == "rule"
    assert r.freeu_start is None and r.source["freeu_start"] == "rule"
    assert grid_preset("1024", 4) == ("1024x5", False) and grid_preset("1024", 12) == ("1024x8", False)
    with pytest.raises(ValueError, match="freeu_start"):
        build_recipe("512", 8, freeu=True)
    assert build_recipe("512", 8, freeu=True, freeu_start=6).freeu_start == 6


def test_overrides_are_used_and_marked():
    r = build_recipe("1024", 8, p2=7.0, stop_index=9, order=1, afs=False, freeu_start=5, b1=1.2, cfg=4.0)
    assert (r.p2, r.stop_index, r.order, r.afs, r.freeu_start, r.b1, r.cfg) == (7.0, 9, 1, False, 5, 1.2, 4.0)
    assert {r.source[k] for k in ("p2", "stop_index", "order", "afs", "freeu_start", "b1", "cfg")} == {"user"}
    assert build_recipe("1024", 8, freeu=False).freeu_start is None
    r = build_recipe("custom", 7, p2=9.0, grid_points=10, stop_index=8)
    assert (r.afs, r.freeu_start, r.order) == (False, None, 2)
    sig = recipe_sigmas(r, TABLE)
    assert len(sig) == 8 and float(sig[-1]) > 0


def test_dpmpp_solvers_take_no_afs_and_fixed_orders():
    assert build_recipe("1024", 8, solver="dpmpp_2m").afs is False
    assert build_recipe("512", 6, solver="dpmpp_1s").order == 1
    with pytest.raises(ValueError, match="afs"):
        build_recipe("1024", 8, solver="dpmpp_2m", afs=True)


@pytest.mark.parametrize("kwargs, word", [
    (dict(resolution="768"), "resolution"),
    (dict(steps=0), "steps"),
    (dict(solver="euler"), "solver"),
    (dict(resolution="custom"), "p2"),
    (dict(stop_index=12), "stop_index"),
    (dict(p1=-1.0), "p1"),
    (dict(order=4), "order"),
    (dict(freeu_start=-2), "freeu_start"),
])
def test_bad_settings_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        build_recipe(**{"resolution": "1024", "steps": 8, **kwargs})


def test_window_edges():
    grid = [10.0, 5.0, 2.0, 1.0, 0.5]
    assert window_from_start_index(grid, 0).high == math.inf
    assert window_from_start_index(grid, 4) is None  # the last grid point has no evaluation
    w = window_from_start_index(grid, 2, first_call=1)
    assert [i for i in calls(grid, True) if w.contains(grid[i])] == [2, 3]
    assert w.high == pytest.approx(math.sqrt(10.0))
    assert window_from_start_index(grid, None) is None
    with pytest.raises(ValueError, match="freeu_start"):
        window_from_start_index(grid, -1)


def test_recipe_solvers_are_entries_of_the_solver_table():
    from samplers.catalog import solver
    from samplers.recipe import SOLVER_NOTES
    for name in SOLVER_NOTES:
        assert callable(solver(name).fn), name
