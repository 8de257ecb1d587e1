"""The F-scheduler paper's UniPC as a SAMPLER node (the solver wrapper and its dropdown entries
are in bridge/unipc.py)."""
from ..bridge.unipc import ORDERS, unipc_sampler

CATEGORY = "FewStep/samplers"
ORDER_CHOICES = ["auto"] + [str(o) for o in ORDERS]


class FewStepSamplerUniPC:
    DESCRIPTION = ("UniPC as the F-scheduler paper runs it: noise-prediction form with B(h) = h, a "
                   "multistep predictor and a corrector after every move but the last (no extra model "
                   "call), lower-order final steps. Works with sigmas that stop at sigma_stop > 0. "
                   "Optional analytic first step (1024² recipe): an extra point after sigma_0 reached "
                   "without a model call, so N sigmas still cost N model calls.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "order": (ORDER_CHOICES, {"default": "auto", "tooltip": "Predictor order. auto = the paper's rule: 1 for up to 6 model calls (5-6 steps), 2 from 7 (8 steps). The corrector adds one order."}),
            "corrector": ("BOOLEAN", {"default": True, "tooltip": "UniC corrector after every move except the last; reuses the next model call, so it costs nothing."}),
            "lower_order_final": ("BOOLEAN", {"default": True, "tooltip": "Lower the order on the final moves (min(order, moves left)), as UniPC does for few steps."}),
            "analytic_first_step": ("BOOLEAN", {"default": False, "tooltip": "Insert a point halfway (in training timestep) between sigma_0 and sigma_1 and reach it without a model call, using the latent itself as the noise prediction (VP scaling). The paper uses it at 1024²."}),
            "afs_eps_scale": ("FLOAT", {"default": 1.0, "min": 0.5, "max": 1.0, "step": 0.005, "tooltip": "Analytic first step noise prediction = scale * latent (VP scaling). 1.0 as in the paper's UniPC code; 0.975 in its diffusers-style variant."}),
        }}

    def get_sampler(self, order, corrector, lower_order_final, analytic_first_step, afs_eps_scale):
        return (unipc_sampler(order, corrector, lower_order_final, analytic_first_step, afs_eps_scale),)


NODE_CLASS_MAPPINGS = {"FewStepSamplerUniPC": FewStepSamplerUniPC}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepSamplerUniPC": "UniPC, F-scheduler form (FewStep)"}
