"""SIGMAS nodes: Karras, timestep-power and F-scheduler schedules with every parameter exposed."""
from comfy_api.latest import io

from ..bridge.model_time import VP, sigma_range, time_table
from ..samplers.constants import FSCHEDULER_PRESETS, INTERPOLATIONS

CATEGORY = "FewStep/schedules"


def _denoise():
    return io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01, tooltip=(
        "Below 1: the last steps of a schedule of int(steps/denoise) steps (ComfyUI's img2img convention, as in "
        "BasicScheduler)."))


def _model_sampling(model):
    return model.get_model_object("model_sampling")


def _time_t(value, name=None):
    """-1 (or any negative) means 'the model's own end of the timestep table'."""
    return None if value < 0 else float(value)


class FewStepKarrasSigmas(io.ComfyNode):
    SIGMA_GRAPH = {"live": True}  # graph in the editor, computed by this node (bridge/sigma_graph.py)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepKarrasSigmas", display_name="Karras Sigmas (FewStep)", category=CATEGORY,
            description=("Karras et al. (2022) schedule: sigma_i = (sigma_max^(1/rho) + i/(steps-1) (sigma_min^(1/rho) - "
                         "sigma_max^(1/rho)))^rho, then 0. Leave sigma_min / sigma_max at 0 to take them from the "
                         "connected model's own model_sampling."),
            inputs=[
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Number of model moves (sigmas returned: steps + 1)."),
                io.Float.Input("sigma_max", default=0.0, min=0.0, max=5000.0, step=0.01, round=False,
                               tooltip="Largest sigma; 0 = the model's sigma_max (14.6146 for SD1.5/SDXL)."),
                io.Float.Input("sigma_min", default=0.0, min=0.0, max=5000.0, step=0.001, round=False,
                               tooltip="Smallest non-zero sigma; 0 = the model's sigma_min (0.0292 for SD1.5/SDXL)."),
                io.Float.Input("rho", default=7.0, min=0.01, max=100.0, step=0.01,
                               tooltip="Power of the law; larger spends more steps at low noise (EDM: 7)."),
                io.Boolean.Input("append_zero", default=True, tooltip="End with sigma = 0 (ComfyUI's convention). Off: stop at sigma_min."),
                _denoise(),
                io.Model.Input("model", optional=True, tooltip="Source of the default sigma_min / sigma_max (its model_sampling)."),
            ],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, steps, sigma_max, sigma_min, rho, append_zero=True, denoise=1.0, model=None) -> io.NodeOutput:
        from ..samplers.schedules import denoise_tail, karras_sigmas
        from ..samplers.validation import check_non_negative
        lo, hi = check_non_negative(sigma_min, "sigma_min"), check_non_negative(sigma_max, "sigma_max")
        if lo == 0 or hi == 0:
            if model is None:
                raise ValueError("sigma_min / sigma_max: 0 means 'from the model'; connect a MODEL or give a value")
            ms_lo, ms_hi = sigma_range(_model_sampling(model))
            lo, hi = lo or ms_lo, hi or ms_hi
        return io.NodeOutput(denoise_tail(lambda n: karras_sigmas(n, lo, hi, rho, append_zero), steps, denoise))


class FewStepTimestepPowerSigmas(io.ComfyNode):
    SIGMA_GRAPH = {"live": True}  # graph in the editor, computed by this node (bridge/sigma_graph.py)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepTimestepPowerSigmas", display_name="Timestep Power Sigmas (FewStep)", category=CATEGORY,
            description=("Power law in the model's training-timestep space (Li & Zhang 2025): t_i from t_max down to "
                         "t_min with exponent rho_t, sigma_i = sigma(t_i) from the model's own table, then 0. Discrete "
                         "(SD1.5/SDXL) and flow models; continuous EDM models are refused (use Karras)."),
            inputs=[
                io.Model.Input("model", tooltip="Its model_sampling gives the sigma(t) table."),
                io.Int.Input("steps", default=8, min=1, max=10000, tooltip="Number of model moves."),
                io.Float.Input("rho_t", default=1.2, min=0.01, max=100.0, step=0.01,
                               tooltip="Exponent in timestep space (1 = uniform in t; 1.2 in the reference code)."),
                io.Float.Input("t_max", default=-1.0, min=-1.0, max=100000.0, step=1.0,
                               tooltip="First timestep; -1 = the last training step (999 for SD)."),
                io.Float.Input("t_min", default=-1.0, min=-1.0, max=100000.0, step=1.0,
                               tooltip="Last timestep before the trailing 0; -1 = 0 (the model's sigma_min)."),
                io.Boolean.Input("append_zero", default=True, tooltip=("On: steps points t_max..t_min, then sigma 0. "
                                                                       "Off: steps+1 points ending at sigma(t_min) > 0.")),
                io.Combo.Input("interpolation", options=list(INTERPOLATIONS), default="log_sigma",
                               tooltip="sigma(t) between training steps: log-sigma (ComfyUI) or alphas_cumprod (paper code)."),
                _denoise(),
            ],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, steps, rho_t, t_max, t_min, append_zero, interpolation, denoise=1.0) -> io.NodeOutput:
        from ..samplers.schedules import denoise_tail, timestep_power_sigmas
        table, _ = time_table(_model_sampling(model), "the timestep-power schedule")
        make = lambda n: timestep_power_sigmas(n, table, rho_t, _time_t(t_max, "t_max"), _time_t(t_min, "t_min"),  # noqa: E731
                                               append_zero, interpolation)
        return io.NodeOutput(denoise_tail(make, steps, denoise))


class FewStepFSchedulerSigmas(io.ComfyNode):
    SIGMA_GRAPH = {"live": True}  # graph in the editor, computed by this node (bridge/sigma_graph.py)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepFSchedulerSigmas", display_name="F-Scheduler Sigmas (FewStep)", category=CATEGORY,
            description=("F-scheduler (Li & Bai, arXiv 2510.02390): sigma_stop = point stop_index of a Karras grid "
                         "(grid_points points, power p2), then steps+1 sigmas spaced by a power law (p1) in timestep "
                         "space from t_max to t(sigma_stop). No trailing 0: the latent at sigma_stop goes to the VAE. "
                         "Presets reproduce the published lists (they override steps, p1, p2, grid_points, stop_index)."),
            inputs=[
                io.Model.Input("model", tooltip="Its model_sampling gives the sigma range and the sigma(t) table."),
                io.Combo.Input("preset", options=["custom"] + list(FSCHEDULER_PRESETS), default="custom",
                               tooltip=("512xN: SD1.5 at 512px, 1024xN: SDXL at 1024px, N steps (published settings). "
                                        "custom: use the widgets below.")),
                io.Int.Input("steps", default=6, min=1, max=10000, tooltip="Number of model moves N (custom only)."),
                io.Float.Input("p1", default=1.2, min=0.01, max=100.0, step=0.01,
                               tooltip="Exponent of the timestep-space law (1.2 in every published setting)."),
                io.Float.Input("p2", default=5.0, min=0.01, max=100.0, step=0.01,
                               tooltip="Exponent of the auxiliary Karras grid (5: 512px 5-6 steps, 7: 512px 8 steps, 12: 1024px)."),
                io.Int.Input("grid_points", default=8, min=2, max=10000, tooltip="Points of the auxiliary Karras grid (8 or 12 published)."),
                io.Int.Input("stop_index", default=6, min=1, max=9999,
                             tooltip="Index of sigma_stop in the auxiliary grid (<= grid_points - 1)."),
                io.Float.Input("t_max", default=-1.0, min=-1.0, max=100000.0, step=1.0,
                               tooltip="First timestep; -1 = the last training step (999 for SD)."),
                io.Combo.Input("interpolation", options=["auto", "alphas_cumprod", "log_sigma"], default="auto",
                               tooltip=("sigma(t) between training steps. auto: alphas_cumprod (the paper's code) for "
                                        "SD-style models, log_sigma for flow models.")),
                _denoise(),
            ],
            outputs=[io.Sigmas.Output()])

    @classmethod
    def execute(cls, model, preset, steps, p1, p2, grid_points, stop_index, t_max, interpolation,
                denoise=1.0) -> io.NodeOutput:
        from ..samplers.schedules import denoise_tail, fscheduler_sigmas
        from ..samplers.validation import check_choice
        table, kind = time_table(_model_sampling(model), "the F-scheduler")
        check_choice(interpolation, ("auto",) + INTERPOLATIONS, "interpolation")
        if interpolation == "auto":
            interpolation = "alphas_cumprod" if kind == VP else "log_sigma"
        params = dict(steps=steps, p1=p1, p2=p2, grid_points=grid_points, stop_index=stop_index)
        if preset != "custom":
            check_choice(preset, FSCHEDULER_PRESETS, "preset")
            params = dict(FSCHEDULER_PRESETS[preset])
        n = params.pop("steps")
        make = lambda k: fscheduler_sigmas(k, table, t_max=_time_t(t_max, "t_max"), interpolation=interpolation,  # noqa: E731
                                           **params)
        return io.NodeOutput(denoise_tail(make, n, denoise))


NODE_CLASS_MAPPINGS = {"FewStepKarrasSigmas": FewStepKarrasSigmas,
                       "FewStepTimestepPowerSigmas": FewStepTimestepPowerSigmas,
                       "FewStepFSchedulerSigmas": FewStepFSchedulerSigmas}
