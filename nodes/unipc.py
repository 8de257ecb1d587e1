"""The F-scheduler paper's UniPC as a SAMPLER node (the solver wrapper and its dropdown entries
are in bridge/unipc.py)."""
from comfy_api.latest import io

from ..bridge.unipc import ORDERS, unipc_sampler

CATEGORY = "FewStep/samplers"
ORDER_CHOICES = ["auto"] + [str(o) for o in ORDERS]


class FewStepSamplerUniPC(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepSamplerUniPC", display_name="UniPC, F-scheduler form (FewStep)", category=CATEGORY,
            description=("UniPC as the F-scheduler paper runs it: noise-prediction form with B(h) = h, a "
                         "multistep predictor and a corrector after every move but the last (no extra model "
                         "call), lower-order final steps. Works with sigmas that stop at sigma_stop > 0. "
                         "Optional analytic first step (1024² recipe): an extra point after sigma_0 reached "
                         "without a model call, so N sigmas still cost N model calls."),
            inputs=[
                io.Combo.Input("order", options=ORDER_CHOICES, default="auto", tooltip="Predictor order. auto = the paper's rule: 1 for up to 6 model calls (5-6 steps), 2 from 7 (8 steps). The corrector adds one order."),
                io.Boolean.Input("corrector", default=True, tooltip="UniC corrector after every move except the last; reuses the next model call, so it costs nothing."),
                io.Boolean.Input("lower_order_final", default=True, tooltip="Lower the order on the final moves (min(order, moves left)), as UniPC does for few steps."),
                io.Boolean.Input("analytic_first_step", default=False, tooltip="Insert a point halfway (in training timestep) between sigma_0 and sigma_1 and reach it without a model call, using the latent itself as the noise prediction (VP scaling). The paper uses it at 1024²."),
                io.Float.Input("afs_eps_scale", default=1.0, min=0.5, max=1.0, step=0.005, tooltip="Analytic first step noise prediction = scale * latent (VP scaling). 1.0 as in the paper's UniPC code; 0.975 in its diffusers-style variant."),
            ],
            outputs=[io.Sampler.Output()])

    @classmethod
    def execute(cls, order, corrector, lower_order_final, analytic_first_step, afs_eps_scale) -> io.NodeOutput:
        return io.NodeOutput(unipc_sampler(order, corrector, lower_order_final, analytic_first_step, afs_eps_scale))


NODE_CLASS_MAPPINGS = {"FewStepSamplerUniPC": FewStepSamplerUniPC}
