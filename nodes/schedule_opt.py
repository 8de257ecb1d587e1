"""Optimise Schedule / Load Optimised Schedule nodes (the work: bridge/schedule_opt.py; files and
records: bridge/schedule_cache.py; maths: samplers/schedule_opt.py)."""
from comfy_api.latest import io

from ..bridge import schedule_opt as opt
from ..bridge.sigma_graph import sigma_ui
from ..samplers import schedule_opt as so

CATEGORY = "FewStep/schedules"
LATEST = opt.LATEST


def _outputs():
    return [io.Sigmas.Output(display_name="sigmas"), io.Model.Output(display_name="model"),
            io.String.Output(display_name="report")]


def _out(sigmas, model, report) -> io.NodeOutput:
    """Node result plus the UI message the editor's sigma graph draws after the run."""
    return io.NodeOutput(sigmas, model, report, ui=sigma_ui(sigmas))


class FewStepOptimizeSchedule(io.ComfyNode):
    SIGMA_GRAPH = {}  # needs model calls: drawn after the run from the UI message (bridge/sigma_graph.py)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepOptimizeSchedule", display_name="Optimise Schedule (FewStep)", category=CATEGORY,
            description=(
                "Finds the N-step sigma schedule with the smallest discretisation error for YOUR model, "
                "conditioning, CFG and sampler: one fine teacher pass from a few noises (through ComfyUI's own "
                "guider, so LoRAs and patches count), a cost for every jump between candidate sigmas, an exact "
                "dynamic program that gives the best path for every step count, then the candidates (and "
                "Karras) are run with your sampler and the best is kept, Karras unless a candidate beats it significantly "
                "(paired test on noises the choice did not see: the held-out ones, or when holdout < 2 half of mc_samples set aside "
                "for this test, in the same batch); the model calls it will "
                "make are logged before the teacher pass and shown in the report; an optional refinement (refine_sweeps, off by default: "
                "it costs several times the teacher pass) moves each sigma against your sampler, early-stopped on "
                "held-out noises. Results are cached as JSON in the "
                "user directory: the same inputs return at once. The MODEL output makes KSampler's "
                "'fewstep_optimized' scheduler use this schedule."),
            inputs=[
                io.Model.Input("model", tooltip="The model to optimise for (with its LoRAs and patches applied)."),
                io.Conditioning.Input("positive", tooltip="Positive conditioning, as you will sample with it."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning (needed when cfg is not 1)."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="CFG scale you will sample with; the schedule is optimised for it."),
                io.Int.Input("width", default=1024, min=16, max=16384, step=8, tooltip="Image width in pixels (ignored when a LATENT is connected)."),
                io.Int.Input("height", default=1024, min=16, max=16384, step=8, tooltip="Image height in pixels (ignored when a LATENT is connected)."),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip="Number of sampling steps N (model moves) to optimise for."),
                io.Combo.Input("sampler", options=opt.ode_samplers(), default="dpmpp_2m", tooltip="The sampler you will use. Euler-type and DPM++ 2M have exact cost models; others use the nearest one as a proxy and are compared by running them."),
                io.Int.Input("mc_samples", default=16, min=1, max=256, tooltip="Monte-Carlo start noises for the teacher pass (run through the model 8 at a time, so memory does not grow with it; more = steadier, slower). With holdout < 2, half of them only test the result against Karras, and that test needs at least 5 of them (mc_samples >= 10) to let a candidate replace Karras."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate="fixed", tooltip="Seed of the Monte-Carlo noises."),
                io.Latent.Input("latent", optional=True, tooltip="Optional: take the latent size from this LATENT (only its shape is used)."),
                io.Int.Input("grid", optional=True, default=120, min=8, max=400, tooltip="Candidate sigmas (log-uniform between sigma_max and sigma_min); one teacher model call each."),
                io.Int.Input("holdout", optional=True, default=0, min=0, max=64, tooltip="Extra noises not used to fit, only to report/early-stop (needed by refine)."),
                io.Int.Input("refine_sweeps", optional=True, default=0, min=0, max=10, tooltip="Coordinate-search sweeps with the actual sampler after the DP, early-stopped on the held-out noises. Costly: each sweep makes (N-1)*(candidates + 4 for golden)*N model calls per refined start (refine_starts), batched over mc_samples (N=8, golden, 8 candidates: 672 calls per sweep and start, about 5-6x the teacher pass of grid 120; with the default 3 starts about 2000 per sweep). 0 = off (the default: the teacher + DP + selection is about grid + 6N calls)."),
                io.Int.Input("refine_candidates", optional=True, default=8, min=1, max=32, tooltip="Trial values per sigma in each refinement sweep (the coarse grid that golden search then narrows)."),
                io.Combo.Input("refine_search", optional=True, options=list(so.SEARCHES[::-1]), default="golden", tooltip="golden: the coarse trial grid, then 4 golden-section steps around its best value (measured on the lab: lower test error than grid at about 1.5-2x its calls, see BENCHMARKS.md 'Refinement variants'); grid: the coarse trial grid only."),
                io.Combo.Input("refine_objective", optional=True, options=list(so.OBJECTIVES), default="mean", tooltip="What the refinement minimises over the fitting noises: mean relative error (what the benchmarks report; measured best on the lab) or its geometric mean (less swayed by rare samples that land on another mode when there are very few noises)."),
                io.Int.Input("teacher_substeps", optional=True, default=1, min=1, max=8, tooltip="DPM++ 2M sub-steps per grid interval in the teacher pass (accuracy vs time)."),
                io.Float.Input("sigma_max", optional=True, default=0.0, min=0.0, max=5000.0, step=0.01, round=False, tooltip="Largest sigma; 0 = the model's."),
                io.Float.Input("sigma_min", optional=True, default=0.0, min=0.0, max=5000.0, step=0.001, round=False, tooltip="Smallest non-zero sigma; 0 = the model's."),
                io.Boolean.Input("compare_karras", optional=True, default=True, tooltip="Also run Karras (rho 7) as a candidate; it is kept unless another candidate beats it significantly on noises the choice did not see (the held-out ones when holdout >= 2, else half of mc_samples set aside for this test; with mc_samples < 4 the test runs on the fitting noises and the report says so)."),
                io.Boolean.Input("use_cache", optional=True, default=True, tooltip="Read and write the JSON cache in the ComfyUI user directory (fewstep/schedules)."),
                io.Int.Input("refine_starts", optional=True, default=3, min=1, max=8, tooltip="How many of the best distinct candidates (DP paths, Karras) are each refined; the one with the lowest held-out error is kept. Each start costs a full refinement (see refine_sweeps). 3 generalised best on the lab's validation noises (BENCHMARKS.md 'Refinement variants'); 1 = refine the selected schedule only."),
            ],
            outputs=_outputs())

    @classmethod
    def execute(cls, model, positive, negative, cfg, width, height, steps, sampler, mc_samples, seed,
                latent=None, grid=120, holdout=0, refine_sweeps=0, refine_candidates=8, teacher_substeps=1,
                sigma_max=0.0, sigma_min=0.0, compare_karras=True, use_cache=True, refine_search="golden",
                refine_objective="mean", refine_starts=3) -> io.NodeOutput:
        steps, grid, mc_samples, holdout = int(steps), int(grid), int(mc_samples), int(holdout)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if grid < 2:
            raise ValueError(f"grid must be >= 2, got {grid}")
        if steps > grid:
            raise ValueError(f"steps={steps} is larger than the candidate grid ({grid} sigmas): raise 'grid' or lower 'steps'")
        if mc_samples < 1 or holdout < 0:
            raise ValueError("mc_samples must be >= 1 and holdout >= 0")
        if int(refine_sweeps) > 0 and holdout < 1:
            raise ValueError("refine_sweeps > 0 needs holdout >= 1 (held-out noises stop the refinement)")
        if refine_search not in so.SEARCHES:
            raise ValueError(f"refine_search must be one of {so.SEARCHES}, got {refine_search!r}")
        if refine_objective not in so.OBJECTIVES:
            raise ValueError(f"refine_objective must be one of {so.OBJECTIVES}, got {refine_objective!r}")
        if int(refine_starts) < 1:
            raise ValueError(f"refine_starts must be >= 1, got {refine_starts}")
        names = opt.ode_samplers()
        if sampler not in names:
            raise ValueError(f"sampler: {sampler!r} is not a deterministic ODE sampler known to ComfyUI; one of {names}")
        return _out(*opt.optimise(model, positive, negative, cfg, width, height, steps, sampler, mc_samples, int(seed),
                                  latent, grid, holdout, int(refine_sweeps), int(refine_candidates),
                                  int(teacher_substeps), sigma_max, sigma_min, bool(compare_karras), use_cache,
                                  refine_search, refine_objective, int(refine_starts)))


class FewStepLoadOptimizedSchedule(io.ComfyNode):
    SIGMA_GRAPH = {}  # drawn after the run from the UI message

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepLoadOptimizedSchedule", display_name="Load Optimised Schedule (FewStep)", category=CATEGORY,
            description=("Loads an optimised schedule from the cache for the connected model: the newest one made for "
                         "this model (with these LoRAs/patches), or a file picked by name, which must belong to this "
                         "model. Outputs the SIGMAS for N steps and a MODEL that makes KSampler's 'fewstep_optimized' "
                         "scheduler use it. A damaged file or one made for another model is a clear error."),
            inputs=[
                io.Model.Input("model", tooltip="The model the schedule was optimised for."),
                io.Combo.Input("schedule", options=[LATEST] + opt.schedule_files(), default=LATEST, tooltip="Cache file (user directory, fewstep/schedules) or the newest one for this model."),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip="Number of steps N; other N than the optimised one come from the stored DP paths."),
            ],
            outputs=_outputs())

    @classmethod
    def fingerprint_inputs(cls, model, schedule, steps):
        return opt.cache_mtime(schedule)

    @classmethod
    def execute(cls, model, schedule, steps) -> io.NodeOutput:
        return _out(*opt.load(model, schedule, steps))


NODE_CLASS_MAPPINGS = {"FewStepOptimizeSchedule": FewStepOptimizeSchedule,
                       "FewStepLoadOptimizedSchedule": FewStepLoadOptimizedSchedule}
