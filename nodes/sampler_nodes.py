"""SAMPLER nodes (for SamplerCustom / SamplerCustomAdvanced / FewStep KSampler Advanced) with every
option of each solver family. They wrap the pure solvers in ComfyUI's KSAMPLER, which handles noise
scaling, inpaint masks and previews."""
import comfy.samplers
from comfy_api.latest import io

from ..samplers.constants import AB_ORDERS, DPMPP_SOLVERS, RK_METHODS

CATEGORY = "FewStep/samplers"
DEIS_METHODS = ("tab", "rhoab", "rhork")


def _lower_order_final():
    return io.Boolean.Input("lower_order_final", default=False, tooltip=(
        "Drop to order 1 on the last step (and 2 on the one before for order 3), as dpm-solver/diffusers do "
        "for very few steps. A step to sigma 0 is order 1 anyway."))


def _allow_short_schedule():
    return io.Boolean.Input("allow_short_schedule", default=False, tooltip=(
        "Accept a schedule with fewer steps than the order (it then runs at lower order). Off: such a "
        "schedule is an error."))


def make_sampler(fn, **options):
    return comfy.samplers.KSAMPLER(fn, extra_options=options)


class FewStepSamplerDPMPP(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepSamplerDPMPP", display_name="DPM++ Sampler (FewStep)", category=CATEGORY,
            description=("DPM-Solver++ in data-prediction form: 1S (first order = DDIM = Euler), 2S (single-step "
                         "second order, 2 model calls per step), 2M (multistep second order; ComfyUI's dpmpp_2m), 3M "
                         "(multistep third order). Works with schedules ending at 0 or at a sigma > 0 (F-scheduler)."),
            inputs=[
                io.Combo.Input("solver", options=list(DPMPP_SOLVERS), default="2m", tooltip="Which DPM-Solver++ variant."),
                io.Float.Input("r", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="2S only: intermediate point at lambda + r h (0.5 = midpoint in log-sigma)."),
                _lower_order_final(),
                _allow_short_schedule(),
            ],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, solver, r=0.5, lower_order_final=False, allow_short_schedule=False) -> io.NodeOutput:
        from ..samplers import dpmpp  # solvers load on first use, not at ComfyUI start-up
        from ..samplers.validation import check_choice, check_range
        check_choice(solver, DPMPP_SOLVERS, "solver")
        if solver == "1s":
            return io.NodeOutput(make_sampler(dpmpp.sample_dpmpp_1s))
        if solver == "2s":
            return io.NodeOutput(make_sampler(dpmpp.sample_dpmpp_2s, r=check_range(r, "r", 0.0, 1.0, low_open=True)))
        fn = dpmpp.sample_dpmpp_2m if solver == "2m" else dpmpp.sample_dpmpp_3m
        return io.NodeOutput(make_sampler(fn, lower_order_final=bool(lower_order_final),
                                          allow_short_schedule=bool(allow_short_schedule)))


class FewStepSamplerDEIS(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepSamplerDEIS", display_name="DEIS Sampler (FewStep)", category=CATEGORY,
            description=("DEIS exponential integrators: tAB (eps extrapolated in VP-SDE time t, orders 1-3), rhoAB "
                         "(Adams-Bashforth in sigma, orders 1-3), rhoRK (Runge-Kutta in sigma: euler, heun, kutta, "
                         "rk4). Order 1 is DDIM/Euler. AB methods use 1 model call per step, RK methods 1-4."),
            inputs=[
                io.Combo.Input("method", options=list(DEIS_METHODS), default="tab", tooltip="DEIS variant."),
                io.Int.Input("order", default=3, min=1, max=3, tooltip="tAB / rhoAB: polynomial order (1-3)."),
                io.Combo.Input("rk_method", options=list(RK_METHODS), default="kutta",
                               tooltip="rhoRK: euler (1 call/step), heun (2), kutta RK3 (3), rk4 (4)."),
                _lower_order_final(),
                _allow_short_schedule(),
                io.Float.Input("beta_min", default=0.1, min=0.001, max=10.0, step=0.001,
                               tooltip="tAB: beta_min of the VP-SDE that defines the time variable t."),
                io.Float.Input("beta_d", default=19.9, min=0.01, max=100.0, step=0.1,
                               tooltip="tAB: beta_max - beta_min of that VP-SDE."),
            ],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, method, order=3, rk_method="kutta", lower_order_final=False, allow_short_schedule=False,
                beta_min=0.1, beta_d=19.9) -> io.NodeOutput:
        from ..samplers import deis
        from ..samplers.validation import check_choice, check_order, check_positive
        check_choice(method, DEIS_METHODS, "method")
        if method == "rhork":
            return io.NodeOutput(make_sampler(deis.sample_deis_rhork,
                                              method=check_choice(rk_method, RK_METHODS, "rk_method")))
        options = dict(order=check_order(order, AB_ORDERS, family=f"DEIS {method}"),
                       lower_order_final=bool(lower_order_final), allow_short_schedule=bool(allow_short_schedule))
        if method == "tab":
            options.update(beta_min=check_positive(beta_min, "beta_min"), beta_d=check_positive(beta_d, "beta_d"))
            return io.NodeOutput(make_sampler(deis.sample_deis_tab, **options))
        return io.NodeOutput(make_sampler(deis.sample_deis_rhoab, **options))


class FewStepSamplerEDM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepSamplerEDM", display_name="EDM Sampler (FewStep)", category=CATEGORY,
            description=("Karras et al. (EDM) samplers: alpha = 1 and s_churn = 0 is Algorithm 1 (Heun); s_churn > 0 "
                         "adds seeded noise before each step inside [s_tmin, s_tmax] (Algorithm 2); alpha < 1 is the "
                         "general second-order method (0.5 = midpoint). 2 model calls per step."),
            inputs=[
                io.Float.Input("alpha", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Trial point of the second-order step at alpha*h (1 = Heun, 0.5 = midpoint)."),
                io.Float.Input("s_churn", default=0.0, min=0.0, max=1000.0, step=0.01,
                               tooltip="Total stochasticity: gamma = min(s_churn/N, sqrt2 - 1) per step (N = steps of this run)."),
                io.Float.Input("s_tmin", default=0.0, min=0.0, max=10000.0, step=0.001,
                               tooltip="Churn only where sigma >= s_tmin."),
                io.Float.Input("s_tmax", default=1000.0, min=0.0, max=100000.0, step=0.01,
                               tooltip="Churn only where sigma <= s_tmax."),
                io.Float.Input("s_noise", default=1.0, min=0.0, max=2.0, step=0.001,
                               tooltip="Scale of the added noise (EDM uses 1.003-1.007)."),
            ],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, alpha=1.0, s_churn=0.0, s_tmin=0.0, s_tmax=1000.0, s_noise=1.0) -> io.NodeOutput:
        from ..samplers.edm import sample_edm
        from ..samplers.validation import check_non_negative, check_range
        check_range(alpha, "alpha", 0.0, 1.0, low_open=True)
        check_non_negative(s_churn, "s_churn")
        check_non_negative(s_noise, "s_noise")
        if check_non_negative(s_tmax, "s_tmax") < check_non_negative(s_tmin, "s_tmin"):
            raise ValueError(f"s_tmax must be >= s_tmin, got s_tmin={s_tmin}, s_tmax={s_tmax}")
        return io.NodeOutput(make_sampler(sample_edm, alpha=alpha, s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                                          s_noise=s_noise))


NODE_CLASS_MAPPINGS = {"FewStepSamplerDPMPP": FewStepSamplerDPMPP, "FewStepSamplerDEIS": FewStepSamplerDEIS,
                       "FewStepSamplerEDM": FewStepSamplerEDM}
