"""The F-scheduler recipe (Algorithm 1 of Li & Bai, arXiv 2510.02390) as one node:
MODEL in; FreeU-patched MODEL, SIGMAS and SAMPLER out, ready for SamplerCustomAdvanced
(the work: bridge/recipe.py; the published settings: samplers/recipe.py)."""
from comfy_api.latest import io

# The maths modules are imported at call time: the pack's import must stay cheap.
CATEGORY = "FewStep/recipes"
RESOLUTION_CHOICES = {"1024 (SDXL)": "1024", "512 (SD1.5)": "512", "custom": "custom"}
AUTO = "auto"


def _override(value, sentinel):
    return None if value == sentinel else value


class FewStepFSchedulerRecipe(io.ComfyNode):
    SIGMA_GRAPH = {"live": True, "function": "graph", "freeu": "graph_freeu"}

    @classmethod
    def define_schema(cls):
        from ..samplers.recipe import PAPER_FREEU, SOLVER_NOTES, preset_table_text
        return io.Schema(
            node_id="FewStepFSchedulerRecipe", display_name="F-scheduler Recipe (FewStep)", category=CATEGORY,
            description=(
                "The F-scheduler's Algorithm 1 in one node. From the resolution preset and step count it "
                "builds: the F-scheduler SIGMAS (timestep power law p1 from t=999 down to a sigma_stop picked on "
                "an auxiliary Karras grid; no trailing 0, the latent at sigma_stop is decoded directly); the "
                "SAMPLER (the paper's UniPC: noise prediction, B(h)=h, predictor + corrector, order 1 up to 6 "
                "steps and 2 at 8; at 1024² an analytic first step that adds a point after t=999 without a model "
                "call, so N steps cost N model calls); and the MODEL with FreeU v1 gated on sigma so it is on "
                "exactly for the model calls at solver-grid index >= the paper's start index. Published "
                "settings:\n" + preset_table_text() + "\nOther step counts use the nearest published grid of the "
                "resolution and the paper's order rule; FreeU stays off where the paper gives no start index. "
                "Every value can be overridden by the optional inputs; the 'recipe' output lists what was used. "
                "Put the paper's CFG on the guider (CFGGuider)."),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 / SDXL (eps or v) model; FreeU needs a UNet."),
                io.Combo.Input("resolution", options=list(RESOLUTION_CHOICES), default="1024 (SDXL)", tooltip="Which published preset to follow. 1024 (SDXL): aux Karras grid 12 points rho 12, stop 10 (9 at 5 steps) -> sigma_stop 0.0598; AFS on up to 8 steps. 512 (SD1.5): 8 points rho 5 stop 6 (5-6 steps, sigma_stop 0.1320) or 12 points rho 7 stop 9 (8 steps, 0.1471). custom: no preset, set p2, grid_points and stop_index."),
                io.Int.Input("steps", default=8, min=1, max=200, tooltip="Number of model calls N (the schedule has N+1 sigmas). Published: 5, 6, 8 at 512²; 5, 6, 8 at 1024²."),
                io.Combo.Input("solver", options=list(SOLVER_NOTES), default="unipc_fs", tooltip=". ".join(f"{name}: {note}" for name, note in SOLVER_NOTES.items()) + "."),
                io.Combo.Input("unipc_order", optional=True, options=[AUTO, "1", "2", "3"], default=AUTO, tooltip="UniPC predictor order. auto: 1 for up to 6 steps, 2 from 7 (paper: 1 at 5-6 steps, 2 at 8)."),
                io.Combo.Input("analytic_first_step", optional=True, options=[AUTO, "on", "off"], default=AUTO, tooltip="AFS (UniPC only). auto: on at 1024² up to 8 steps, off at 512² (as the paper's code)."),
                io.Combo.Input("freeu", optional=True, options=[AUTO, "on", "off"], default=AUTO, tooltip="auto: on where the paper publishes a start index (512² 5/6 steps: 4; 1024² 6 steps: 4, 8 steps: 6), else off. on needs a start index for other settings."),
                io.Int.Input("freeu_start_index", optional=True, default=-1, min=-1, max=200, tooltip="t_aug: FreeU is on for every model call at solver-grid index >= this (grid includes the AFS point). -1: the paper's value."),
                io.Float.Input("p1", optional=True, default=1.2, min=0.1, max=10.0, step=0.01, tooltip="Timestep-space exponent of the schedule (1.2 in every published preset)."),
                io.Float.Input("p2", optional=True, default=0.0, min=0.0, max=50.0, step=0.1, tooltip="Exponent (rho) of the auxiliary Karras grid that picks sigma_stop. 0: preset (5 at 512² 5/6 steps, 7 at 512² 8 steps, 12 at 1024²)."),
                io.Int.Input("grid_points", optional=True, default=0, min=0, max=1000, tooltip="Points of the auxiliary Karras grid. 0: preset (8 at 512² 5/6 steps, 12 otherwise)."),
                io.Int.Input("stop_index", optional=True, default=-1, min=-1, max=999, tooltip="Index of sigma_stop in the auxiliary grid. -1: preset (6 at 512² 5/6 steps, 9 at 512² 8 steps and 1024² 5 steps, 10 at 1024² 6/8 steps)."),
                io.Float.Input("b1", optional=True, default=PAPER_FREEU["b1"], min=0.0, max=10.0, step=0.01, tooltip="FreeU backbone scale, deepest decoder stage (paper text 1.1; its UniPC code 1.2)."),
                io.Float.Input("b2", optional=True, default=PAPER_FREEU["b2"], min=0.0, max=10.0, step=0.01, tooltip="FreeU backbone scale, next stage (paper text 1.1; its UniPC code 1.2)."),
                io.Float.Input("s1", optional=True, default=PAPER_FREEU["s1"], min=0.0, max=10.0, step=0.01, tooltip="FreeU skip low-frequency scale, deepest stage (paper 0.9)."),
                io.Float.Input("s2", optional=True, default=PAPER_FREEU["s2"], min=0.0, max=10.0, step=0.01, tooltip="FreeU skip low-frequency scale, next stage (paper 0.2)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The model with the gated FreeU patch (unchanged when FreeU is off)."),
                io.Sigmas.Output(display_name="sigmas", tooltip="N+1 sigmas from sigma_max down to sigma_stop, no trailing 0."),
                io.Sampler.Output(display_name="sampler", tooltip="The chosen solver (UniPC paper form by default)."),
                io.String.Output(display_name="recipe", tooltip="Every value the recipe used and where it comes from (published / rule / user)."),
            ])

    @classmethod
    def execute(cls, model, resolution, steps, solver, **options) -> io.NodeOutput:
        from ..bridge.recipe import build_outputs
        return io.NodeOutput(*build_outputs(model, cls.recipe(resolution, steps, solver, **options)))

    @classmethod
    def graph(cls, model, resolution, steps, solver, **options):
        """The editor's graph: the same SIGMAS as execute(), without patching the model."""
        from ..bridge.recipe import plan
        sigmas = plan(model, cls.recipe(resolution, steps, solver, **options))[0]
        return (model, sigmas, None, "")

    @classmethod
    def graph_freeu(cls, sigmas, model, resolution, steps, solver, **options):
        """The FreeU window execute() patches in (a SigmaWindow), or None when FreeU stays off."""
        from ..bridge.recipe import plan
        return plan(model, cls.recipe(resolution, steps, solver, **options))[3]

    @staticmethod
    def recipe(resolution, steps, solver, unipc_order=AUTO, analytic_first_step=AUTO, freeu=AUTO,
               freeu_start_index=-1, p1=1.2, p2=0.0, grid_points=0, stop_index=-1, b1=1.1, b2=1.1, s1=0.9, s2=0.2):
        from ..samplers.recipe import PAPER_FREEU, build_recipe
        if resolution not in RESOLUTION_CHOICES:
            raise ValueError(f"resolution must be one of {list(RESOLUTION_CHOICES)}, got {resolution!r}")
        return build_recipe(
            RESOLUTION_CHOICES[resolution], steps, solver,
            p1=None if abs(p1 - 1.2) < 1e-12 else p1, p2=_override(p2, 0.0), grid_points=_override(grid_points, 0),
            stop_index=_override(stop_index, -1),
            order=None if unipc_order == AUTO else int(unipc_order),
            afs=None if analytic_first_step == AUTO else analytic_first_step == "on",
            freeu=None if freeu == AUTO else freeu == "on",
            freeu_start=_override(freeu_start_index, -1),
            b1=None if b1 == PAPER_FREEU["b1"] else b1, b2=None if b2 == PAPER_FREEU["b2"] else b2,
            s1=None if s1 == PAPER_FREEU["s1"] else s1, s2=None if s2 == PAPER_FREEU["s2"] else s2)


NODE_CLASS_MAPPINGS = {"FewStepFSchedulerRecipe": FewStepFSchedulerRecipe}
