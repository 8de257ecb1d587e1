"""Guidance Window (FewStep): CFG only inside a σ window, the unconditional pass skipped outside it
(MODEL patch and GUIDER twin); the CFG++ dropdown entries are registered in bridge/dropdowns.py."""
from comfy_api.latest import io

from ..bridge.guidance import (DEFAULT_END, DEFAULT_MODE, DEFAULT_START, WINDOW_MODES, resolve_window,
                               window_guider, with_guidance_window)

CATEGORY = "FewStep/guidance"

WINDOW_TOOLTIP = (
    "Units of start/end, as in FewStep FreeU. sigma: σ values of eps/v models (SD1.5/SDXL σ runs "
    "14.6 → 0.03; start >= end); refused on flow models (SD3/Flux/Wan), whose σ in [0, 1] means "
    "something else. percent: fraction of the model's schedule (0 = pure noise, 1 = clean), any "
    "model. step: indices into the SIGMAS input (whole numbers; end -1 = last point).")


def _window_inputs():
    return [
        io.Combo.Input("window", options=list(WINDOW_MODES), default=DEFAULT_MODE, tooltip=WINDOW_TOOLTIP),
        io.Float.Input("start", default=DEFAULT_START, min=-1.0, max=10000.0, step=0.01, tooltip=(
            "Where guidance switches on (high-σ end, inclusive): σ (default 10000 = from the first step), "
            "percent (0 = from the first step) or step index. Above it no unconditional pass is made. "
            "The guidance-interval paper's SDXL window is start 5.42, end 0.28.")),
        io.Float.Input("end", default=DEFAULT_END, min=-1.0, max=10000.0, step=0.01, tooltip=(
            "Where guidance switches off (low-σ end, inclusive): σ (default 1.0, chosen on the FewStep "
            "ground-truth lab, docs/guidance.md), percent (1 = to the end) or step index (-1 = to the "
            "end). Below it no unconditional pass is made.")),
        io.Sigmas.Input("sigmas", optional=True, tooltip=(
            "The schedule the sampler runs; needed (only) for window 'step'.")),
    ]


class FewStepGuidanceWindow(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepGuidanceWindow",
            display_name="Guidance Window (FewStep)",
            category=CATEGORY,
            description=(
                "Classifier-free guidance only inside a σ window (Kynkäänniemi et al. 2024, "
                "arXiv 2404.07724). Inside: exactly ComfyUI's CFG at the sampler's cfg, with any "
                "cfg-function and post-cfg patches (RescaleCFG, APG, CFGZeroStar...) applied once per "
                "step. Outside: the unconditional pass is not evaluated at all — the UNet batch "
                "shrinks — and the step uses the conditional prediction. Works with KSampler, "
                "KSamplerAdvanced, SamplerCustom(Advanced) and the FewStep samplers, CFG++ included; "
                "multistep samplers keep their history across the switch. SDXL 8 steps karras at "
                "cfg > 1: 12 instead of 16 UNet rows per image with the default window."),
            inputs=[io.Model.Input("model", tooltip="The model to guide in a window (any ComfyUI model)."),
                    *_window_inputs()],
            outputs=[io.Model.Output(tooltip="The model with the window; set cfg on the sampler.")],
        )

    @classmethod
    def execute(cls, model, window, start, end, sigmas=None) -> io.NodeOutput:
        span = resolve_window(model, window, start, end, sigmas)
        return io.NodeOutput(with_guidance_window(model, span))


class FewStepGuidanceWindowGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepGuidanceWindowGuider",
            display_name="Guidance Window Guider (FewStep)",
            category=CATEGORY,
            description=(
                "ComfyUI's CFG guider with a guidance window, for SamplerCustomAdvanced: the same as "
                "'Guidance Window (FewStep)' followed by CFGGuider. Outside the window no "
                "unconditional pass is made."),
            inputs=[io.Model.Input("model", tooltip="The model to sample."),
                    io.Conditioning.Input("positive", tooltip="Conditioning to guide towards."),
                    io.Conditioning.Input("negative", tooltip="Conditioning to guide away from (the unconditional pass)."),
                    io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1, round=0.01,
                                   tooltip="Guidance scale inside the window (1 = no guidance anywhere)."),
                    *_window_inputs()],
            outputs=[io.Guider.Output(tooltip="A guider for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg, window, start, end, sigmas=None) -> io.NodeOutput:
        span = resolve_window(model, window, start, end, sigmas)
        return io.NodeOutput(window_guider(model, positive, negative, cfg, span))


NODE_CLASS_MAPPINGS = {
    "FewStepGuidanceWindow": FewStepGuidanceWindow,
    "FewStepGuidanceWindowGuider": FewStepGuidanceWindowGuider,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FewStepGuidanceWindow": "Guidance Window (FewStep)",
    "FewStepGuidanceWindowGuider": "Guidance Window Guider (FewStep)",
}
