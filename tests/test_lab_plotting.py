"""The Pillow-only plotting module: shapes, log axes, degenerate data."""
import math

import numpy as np
import pytest

from samplers.plotting import Series, _ticks, fmt_number, image_grid, line_plot

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it


def red_pixels(img):
    a = np.asarray(img).astype(int)
    return (a[..., 0] > 180) & (a[..., 1] < 90) & (a[..., 2] < 90)


def test_line_plot_draws_the_line_where_the_data_is():
    img = line_plot([Series("up", [1, 10, 100], [1e-3, 1e-2, 1e-1], color="#ff0000", marker="")],
                    xlog=True, ylog=True, size=(400, 300), legend=False, title="t", xlabel="x", ylabel="y")
    assert img.size == (400, 300)
    mask = red_pixels(img)
    ys, xs = np.nonzero(mask)
    assert len(xs) > 100
    # On log-log axes a power law is a straight rising line: left end low, right end high.
    left, right = xs < np.percentile(xs, 10), xs > np.percentile(xs, 90)
    assert ys[left].mean() > ys[right].mean() + 100
    slope = np.polyfit(xs, ys, 1)[0]
    resid = ys - np.polyval(np.polyfit(xs, ys, 1), xs)
    assert slope < 0 and np.abs(resid).max() < 6


def test_line_plot_survives_bad_and_degenerate_data():
    series = [Series("nan", [1, 2, 3], [float("nan"), 0.0, -1.0]), Series("flat", [5, 5], [0.1, 0.1], dash=True),
              Series("empty", [], [])]
    img = line_plot(series, xlog=True, ylog=True)
    assert img.size == (720, 440)
    assert line_plot([], xlog=False, ylog=False).size == (720, 440)


def test_ticks_and_labels():
    assert _ticks(0.9e-3, 1.1e-2, log=True) == [1e-3, 2e-3, 5e-3, 1e-2]
    many = _ticks(1e-9, 1e3, log=True)  # 12 decades: thinned to at most ~8 labelled decades
    assert many[0] == 1e-9 and many[-1] == 1e3 and len(many) <= 8
    assert _ticks(0, 10, log=False) == [0, 2, 4, 6, 8, 10]
    assert fmt_number(0.00012) == "1e-4" and fmt_number(0.5) == "0.5" and fmt_number(250) == "250"
    assert math.isclose(sum(_ticks(4, 21, log=True)), 5 + 10 + 20)


def test_image_grid_layout():
    from PIL import Image
    tile = Image.new("RGB", (30, 20), "red")
    grid = image_grid([[tile, None], [tile, tile]], ["a", "b"], ["c1", "c2"], title="T", captions=[["x", "y"], ["", "z"]])
    assert grid.width > 60 and grid.height > 40
    assert red_pixels(grid).sum() == 3 * 30 * 20
