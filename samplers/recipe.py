"""The F-scheduler's Algorithm 1 (Li & Bai, arXiv 2510.02390, v3) as data and small pure functions:
per (resolution, steps) the schedule, solver, analytic first step, FreeU start index and CFG, with
where each value comes from; and the map from the paper's FreeU start index to a per-call sigma gate.

Sources (see research notes fscheduler.md): schedule grids from the official code's presets (§1.3,
`FSCHEDULER_PRESETS` in samplers.schedules); solver order and AFS from its UniPC sampler (§3, order
1 up to 6 steps, 2 at 8; AFS at 1024² up to 8 steps); FreeU start indices t_aug from the code
defaults behind v3 Table 1 (§2); CFG from the evaluation drivers behind each published FID (§3.1).
Values the paper does not publish for a setting are filled by a stated rule and marked "rule".

FreeU window. t_aug is a 0-based index into the solver's own time grid, which at 1024² includes the
AFS point (grid = sigma_0, sigma_mid, sigma_1, ..., sigma_N). The model is evaluated at every grid
point but the last, except that with AFS grid point 0 has no evaluation. FreeU is on for every
evaluation at grid index >= t_aug. Every evaluation happens exactly at a grid sigma (the corrector
reuses the next evaluation), so a gate on the sigma of each model call reproduces the window:
freeu.window.window_from_start_index (the pack's one FreeU-window type, SigmaWindow).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .schedules import FSCHEDULER_PRESETS, fscheduler_sigmas
from .unipc import ORDERS, afs_grid, auto_order
from .validation import check_choice, check_positive, check_steps

RESOLUTIONS = ("1024", "512", "custom")
# The recipe's solver choices, by their names in the solver table (samplers/catalog.py), with what each is.
SOLVER_NOTES = {
    "unipc_fs": "UniPC, noise prediction, B(h)=h, predictor+corrector (paper v3)",
    "dpmpp_1s": "DPM-Solver++ first order (paper v1, 512² 5/6 steps)",
    "dpmpp_2m": "DPM-Solver++(2M) (paper v1, 8 steps)",
}
PAPER_FREEU = dict(b1=1.1, b2=1.1, s1=0.9, s2=0.2)  # paper text; its UniPC code uses b1 = b2 = 1.2

# (resolution, steps) -> values published for that setting (code defaults behind the v3 tables)
PUBLISHED = {
    ("512", 5): dict(order=1, afs=False, freeu_start=4, cfg=5.5),
    ("512", 6): dict(order=1, afs=False, freeu_start=4, cfg=5.5),
    ("512", 8): dict(order=2, afs=False, cfg=5.5),
    ("1024", 5): dict(order=1, afs=True),
    ("1024", 6): dict(order=1, afs=True, freeu_start=4, cfg=7.5),
    ("1024", 8): dict(order=2, afs=True, freeu_start=6, cfg=5.5),
}

# Published FIDs (v3 via the third-party write-up; lower is better), for the README and summaries.
PUBLISHED_FID = {
    ("512", 5): "UniPC 5 steps, CFG 5.5: FID 15.19 (COCO 2014)",
    ("512", 6): "UniPC 6 steps, CFG 5.5: FID 14.72 (COCO 2014), 20.82 (COCO 2017), 16.84 (LAION)",
    ("512", 8): "v1 (DPM-Solver++ 2M) 8 steps: FID 15.70 (COCO 2014), 22.35 (COCO 2017), 17.52 (LAION)",
    ("1024", 6): "UniPC 6 steps, CFG 7.5: FID 18.80 (COCO 2014); Table 1 (COCO 2017, FreeU from 4): 25.20",
    ("1024", 8): "UniPC 8 steps, CFG 5.5: FID 17.87 (COCO 2014), 24.38 (COCO 2017), 20.41 (LAION)",
}


def preset_table_text() -> str:
    """One line per published setting (the recipe node's description repeats this text)."""
    rows = []
    for (res, n), pub in sorted(PUBLISHED.items(), key=lambda kv: (kv[0][0] != "1024", kv[0][1])):
        g = FSCHEDULER_PRESETS[f"{res}x{n}"]
        fu = pub.get("freeu_start")
        rows.append(f"{res}² {n} steps: Karras({g['grid_points']} pts, rho {g['p2']:g})[{g['stop_index']}], "
                    f"p1 {g['p1']:g}, UniPC order {pub['order']}, AFS {'on' if pub['afs'] else 'off'}, "
                    f"FreeU {'from grid index %d' % fu if fu is not None else 'off (not published)'}, "
                    f"CFG {pub.get('cfg', 5.5):g}")
    return "\n".join(rows)


def grid_preset(resolution: str, steps: int):
    """(preset name, exact?) of the schedule grid: the published one for these steps, else the
    nearest published grid of that resolution (512²: <= 6 steps -> 512x6, else 512x8;
    1024²: <= 5 steps -> 1024x5, else 1024x8)."""
    name = f"{resolution}x{steps}"
    if name in FSCHEDULER_PRESETS:
        return name, True
    if resolution == "512":
        return ("512x6" if steps <= 6 else "512x8"), False
    return ("1024x5" if steps <= 5 else "1024x8"), False


@dataclass
class Recipe:
    resolution: str
    steps: int
    solver: str
    p1: float
    p2: float
    grid_points: int
    stop_index: int
    order: int
    afs: bool
    freeu_start: int | None  # t_aug; None = FreeU off
    cfg: float
    b1: float = PAPER_FREEU["b1"]
    b2: float = PAPER_FREEU["b2"]
    s1: float = PAPER_FREEU["s1"]
    s2: float = PAPER_FREEU["s2"]
    source: dict = field(default_factory=dict)  # value name -> "published" | "rule" | "user"

    def as_dict(self):
        return asdict(self)


def build_recipe(resolution="1024", steps=8, solver="unipc_fs", p1=None, p2=None, grid_points=None,
                 stop_index=None, order=None, afs=None, freeu=None, freeu_start=None, cfg=None,
                 b1=None, b2=None, s1=None, s2=None) -> Recipe:
    """Every value the recipe uses; None means 'the paper's value for this setting' (or the rule)."""
    check_choice(resolution, RESOLUTIONS, "resolution")
    steps = check_steps(steps)
    check_choice(solver, tuple(SOLVER_NOTES), "solver")
    src = {}

    def pick(name, user, published, rule):
        if user is not None:
            src[name] = "user"
            return user
        if published is not None:
            src[name] = "published"
            return published
        src[name] = "rule"
        return rule

    if resolution == "custom":
        missing = [n for n, v in (("p2", p2), ("grid_points", grid_points), ("stop_index", stop_index)) if v is None]
        if missing:
            raise ValueError(f"{missing[0]} must be set for resolution 'custom' (no published value): "
                             f"set p2, grid_points and stop_index")
        grid, exact, pub = {"p1": 1.2}, False, {}
    else:
        name, exact = grid_preset(resolution, steps)
        grid = FSCHEDULER_PRESETS[name]
        pub = PUBLISHED.get((resolution, steps), {})
    g = (lambda k: grid.get(k) if exact else None)
    p1 = check_positive(pick("p1", p1, grid.get("p1"), 1.2), "p1")
    p2 = check_positive(pick("p2", p2, g("p2"), grid.get("p2")), "p2")
    grid_points = check_steps(pick("grid_points", grid_points, g("grid_points"), grid.get("grid_points")),
                              "grid_points", minimum=2)
    stop_index = check_steps(pick("stop_index", stop_index, g("stop_index"), grid.get("stop_index")),
                             "stop_index", minimum=1)
    if stop_index > grid_points - 1:
        raise ValueError(f"stop_index must be <= grid_points - 1 = {grid_points - 1}, got {stop_index}")

    order = pick("order", order, pub.get("order") if solver == "unipc_fs" else None, auto_order(steps))
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if solver != "unipc_fs":
        src["order"] = "solver"
        order = 1 if solver == "dpmpp_1s" else 2
    afs_rule = solver == "unipc_fs" and resolution == "1024" and steps <= 8
    afs = bool(pick("afs", afs, pub.get("afs") if solver == "unipc_fs" else None, afs_rule))
    if afs and solver != "unipc_fs":
        raise ValueError(f"afs (analytic first step) needs solver 'unipc_fs', got solver {solver!r}")

    if freeu is False:
        src["freeu_start"] = "user"
        freeu_start = None
    elif freeu_start is not None:
        freeu_start = check_steps(freeu_start, "freeu_start", minimum=0)
        src["freeu_start"] = "user"
    elif freeu is True and pub.get("freeu_start") is None:
        raise ValueError(f"freeu_start must be set to turn FreeU on at {resolution}/{steps} steps: the paper "
                         "publishes no start index for this setting")
    else:
        freeu_start = pick("freeu_start", None, pub.get("freeu_start"), None)
    cfg = float(pick("cfg", cfg, pub.get("cfg"), 5.5))
    scal = {k: float(pick(k, v, PAPER_FREEU[k], None)) for k, v in (("b1", b1), ("b2", b2), ("s1", s1), ("s2", s2))}
    return Recipe(resolution, steps, solver, float(p1), float(p2), int(grid_points), int(stop_index), int(order),
                  afs, freeu_start, cfg, source=src, **scal)


def recipe_sigmas(recipe: Recipe, model_sigmas, interpolation="alphas_cumprod", dtype=torch.float32):
    """The recipe's N+1 sigmas on the model's training table, ending at sigma_stop (no trailing 0);
    alphas_cumprod interpolation between training steps as the paper's code (VP models)."""
    return fscheduler_sigmas(recipe.steps, model_sigmas, recipe.p1, recipe.p2, recipe.grid_points,
                             recipe.stop_index, interpolation=interpolation, dtype=dtype)


def solver_grid(sigmas, afs: bool, afs_sigma: float | None = None) -> list:
    values = [float(s) for s in sigmas]
    return afs_grid(values, afs_sigma) if afs else values
