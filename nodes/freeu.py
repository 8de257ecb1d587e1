"""FreeU with a σ window (start/end as σ, percent of the schedule, or steps of a SIGMAS input)."""
from comfy_api.latest import io

from ..bridge.freeu import patch_freeu, unet_model_channels
from ..freeu.backbone import VERSIONS
from ..freeu.presets import CUSTOM, NAMES as PRESET_NAMES, resolve
from ..freeu.window import window_from_percent, window_from_sigma, window_from_steps

WINDOW_MODES = ("percent", "sigma", "step")


def _factor(name, default, tooltip):
    return io.Float.Input(name, default=default, min=0.0, max=10.0, step=0.01, tooltip=tooltip)


class FewStepFreeU(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepFreeU", display_name="FreeU with a Start Step (FewStep)", category="FewStep/model_patches",
            description=(
                "FreeU for SD1.x / SD2.x / SDXL UNets, switched on only inside a window of the sampling "
                "schedule (e.g. the last few of 6-8 steps, where it helps few-step sampling instead of "
                "hurting it). The window is checked against the σ of every model call, so 2nd-order "
                "samplers and split schedules gate correctly. With the window open everywhere it equals "
                "ComfyUI's FreeU (v1) / FreeU_V2 (v2); outside the window the model is untouched. Exact "
                "low-frequency filter without FFT: works on every device."),
            inputs=[
                io.Model.Input("model", tooltip="A UNet model (SD1.x, SD2.x, SDXL)."),
                io.Combo.Input("preset", options=list(PRESET_NAMES), default=CUSTOM, tooltip=(
                    "Published factors b1/b2/s1/s2; any preset but 'custom' overrides the four inputs "
                    "below. SDXL/SD1.5/SD2.1: the FreeU authors' README; F-scheduler paper (Li & Bai "
                    "2025) and its code.")),
                _factor("b1", 1.3, "Backbone factor of the deepest decoder stage (4x model_channels)."),
                _factor("b2", 1.4, "Backbone factor of the next stage (2x model_channels)."),
                _factor("s1", 0.9, "Skip factor: scales the lowest frequencies of the deepest stage's skip features."),
                _factor("s2", 0.2, "Skip factor of the next stage."),
                io.Combo.Input("version", options=list(VERSIONS), default="v2", tooltip=(
                    "v1: scale the backbone channels by b (ComfyUI 'FreeU', the F-scheduler's choice). "
                    "v2: scale by 1 + (b - 1) * normalised channel-mean map (ComfyUI 'FreeU_V2').")),
                io.Int.Input("threshold", default=1, min=1, max=32, tooltip=(
                    "Half-width of the centred box of Fourier modes that s scales (1 in FreeU and ComfyUI).")),
                io.Combo.Input("window", options=list(WINDOW_MODES), default="percent", tooltip=(
                    "Units of start/end. percent: fraction of the model's schedule (0 = pure noise, "
                    "1 = clean). sigma: σ values (start >= end). step: indices into the SIGMAS input "
                    "(whole numbers; end -1 = last point).")),
                io.Float.Input("start", default=0.0, min=-1.0, max=10000.0, step=0.01, tooltip=(
                    "Where FreeU switches on: percent (e.g. 0.6), σ (e.g. 1.4) or step index (e.g. 4). "
                    "Inclusive.")),
                io.Float.Input("end", default=1.0, min=-1.0, max=10000.0, step=0.01, tooltip=(
                    "Where FreeU switches off: percent (1 = to the end), σ (0 = to the end) or step "
                    "index (-1 = to the end). Inclusive.")),
                io.Sigmas.Input("sigmas", optional=True,
                                tooltip="The schedule the sampler runs; needed (only) for window 'step'."),
            ],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, model, preset, b1, b2, s1, s2, version, threshold, window, start, end,
                sigmas=None) -> io.NodeOutput:
        unet_model_channels(model)  # a clear error for a model without a UNet, before any other check
        b1, b2, s1, s2 = resolve(preset, b1, b2, s1, s2)
        if window not in WINDOW_MODES:
            raise ValueError(f"window must be one of {WINDOW_MODES}, got {window!r}")
        if window != "step" and sigmas is not None:
            raise ValueError(f"sigmas is connected but window is {window!r}: set window to 'step' to "
                             "count start/end in steps of that schedule, or disconnect it")
        if window == "step":
            if sigmas is None:
                raise ValueError("window 'step' needs the sampler's schedule on the sigmas input")
            span = window_from_steps(sigmas.detach().float().cpu().reshape(-1).tolist(), start, end)
        elif window == "sigma":
            span = window_from_sigma(start, end)
        else:
            span = window_from_percent(start, end, model.get_model_object("model_sampling").percent_to_sigma)
        return io.NodeOutput(patch_freeu(model, b1, b2, s1, s2, version, threshold, span))


NODE_CLASS_MAPPINGS = {"FewStepFreeU": FewStepFreeU}
