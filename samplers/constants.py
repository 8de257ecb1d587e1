"""Names and published settings shared by the maths and the node layer (kept tiny: the nodes import
only this at ComfyUI start-up; the solvers load on first use)."""

# Published F-scheduler settings (arXiv 2510.02390, official code TheLovesOfLadyPurple/F-scheduler;
# see research/fscheduler.md section 1.3): steps N, time exponent p1, auxiliary Karras grid of
# `grid_points` points with exponent p2, stop index into that grid.
FSCHEDULER_PRESETS = {
    "512x5": dict(steps=5, p1=1.2, p2=5.0, grid_points=8, stop_index=6),
    "512x6": dict(steps=6, p1=1.2, p2=5.0, grid_points=8, stop_index=6),
    "512x8": dict(steps=8, p1=1.2, p2=7.0, grid_points=12, stop_index=9),
    "1024x5": dict(steps=5, p1=1.2, p2=12.0, grid_points=12, stop_index=9),
    "1024x6": dict(steps=6, p1=1.2, p2=12.0, grid_points=12, stop_index=10),
    "1024x8": dict(steps=8, p1=1.2, p2=12.0, grid_points=12, stop_index=10),
}
INTERPOLATIONS = ("log_sigma", "alphas_cumprod")
DPMPP_SOLVERS = ("1s", "2s", "2m", "3m")
AB_ORDERS = (1, 2, 3)
RK_METHODS = ("euler", "heun", "kutta", "rk4")
