"""The F-scheduler recipe on a ComfyUI model: its sigmas on the model's own timestep table, the FreeU
window as a σ gate on the model, the SAMPLER and the text summary (maths: samplers/recipe.py)."""
# The maths modules are imported at call time: the pack's import must stay cheap.


def plan(model, recipe):
    """(sigmas, AFS sigma or None, solver grid, FreeU window or None) of a recipe on this model;
    patches nothing."""
    from ..freeu.window import window_from_start_index
    from ..samplers.recipe import recipe_sigmas, solver_grid
    from ..samplers.unipc import timestep_midpoint
    from .model_time import VP, time_table
    table, kind = time_table(model.get_model_object("model_sampling"), "the F-scheduler recipe")
    if kind != VP and recipe.solver == "unipc_fs":
        raise ValueError("solver: the paper's UniPC (noise-prediction form) needs an SD1.5/SDXL-style "
                         "model (x = x0 + sigma*eps); this is a flow model: choose dpmpp_1s or dpmpp_2m")
    interpolation = "alphas_cumprod" if kind == VP else "log_sigma"
    sigmas = recipe_sigmas(recipe, table, interpolation)
    afs_sigma = timestep_midpoint(float(sigmas[0]), float(sigmas[1]), table, interpolation) if recipe.afs else None
    grid = solver_grid(sigmas, recipe.afs, afs_sigma)
    window = window_from_start_index(grid, recipe.freeu_start, first_call=1 if recipe.afs else 0)
    return sigmas, afs_sigma, grid, window


def freeu_calls(grid, window, afs: bool) -> list:
    """Solver-grid indices whose model call gets FreeU from `window`."""
    if window is None:
        return []
    calls = list(range(1 if afs else 0, len(grid) - 1))
    return [calls[i] for i in window.calls_inside([grid[j] for j in calls])]


def build_outputs(model, recipe):
    from .freeu import patch_freeu
    sigmas, afs_sigma, grid, window = plan(model, recipe)
    out_model = model
    if window is not None:
        # FreeU v1 (the paper's), threshold 1, on for every call inside the window
        try:
            out_model = patch_freeu(model, recipe.b1, recipe.b2, recipe.s1, recipe.s2, "v1", 1, window)
        except ValueError as err:
            raise ValueError(f"freeu: the recipe turns FreeU on for this setting, but {err} "
                             "Set freeu to 'off' for this model.") from err
    sampler = make_sampler(recipe)
    return (out_model, sigmas, sampler, summary(recipe, sigmas, afs_sigma, grid, window))


def make_sampler(recipe):
    """The recipe's solver from the one solver table (samplers/catalog.py), as a SAMPLER."""
    import comfy.samplers

    from ..samplers.catalog import solver
    from .dropdowns import solver_options
    from .unipc import unipc_sampler
    if recipe.solver == "unipc_fs":
        return unipc_sampler(recipe.order, True, True, recipe.afs, 1.0)
    spec = solver(recipe.solver)
    return comfy.samplers.KSAMPLER(spec.fn, extra_options=solver_options(spec))


def describe_freeu(recipe, grid, window) -> str:
    on = freeu_calls(grid, window, recipe.afs)
    if not on:
        return "FreeU off"
    calls = len(grid) - 1 - (1 if recipe.afs else 0)
    return (f"FreeU from grid index {recipe.freeu_start}: {len(on)} of {calls} calls, at sigma "
            f"{', '.join(f'{float(grid[i]):.4f}' for i in on)} (gate sigma <= {window.high:.4f})")


def summary(recipe, sigmas, afs_sigma, grid, window) -> str:
    from ..samplers.recipe import PUBLISHED_FID, SOLVER_NOTES
    src = recipe.source
    tag = lambda k: f" [{src.get(k, 'published')}]"  # noqa: E731
    lines = [
        f"F-scheduler recipe: {recipe.resolution} / {recipe.steps} steps / solver {recipe.solver}",
        f"schedule: p1 {recipe.p1:g}{tag('p1')}, aux Karras grid {recipe.grid_points} points{tag('grid_points')}, "
        f"rho p2 {recipe.p2:g}{tag('p2')}, stop index {recipe.stop_index}{tag('stop_index')}",
        "sigmas: " + ", ".join(f"{float(s):.4f}" for s in sigmas),
        f"solver: {SOLVER_NOTES[recipe.solver]}, order {recipe.order}{tag('order')}",
        ("analytic first step: on, extra point sigma %.4f (no model call)" % afs_sigma if recipe.afs
         else "analytic first step: off") + tag("afs"),
        f"model calls: {recipe.steps}",
        describe_freeu(recipe, grid, window) + tag("freeu_start") + (
            f", b1 {recipe.b1:g} b2 {recipe.b2:g} s1 {recipe.s1:g} s2 {recipe.s2:g}" if window is not None else ""),
        f"paper CFG for this setting: {recipe.cfg:g}{tag('cfg')} (set it on the guider)",
    ]
    fid = PUBLISHED_FID.get((recipe.resolution, recipe.steps))
    if fid:
        lines.append("published: " + fid)
    return "\n".join(lines)
