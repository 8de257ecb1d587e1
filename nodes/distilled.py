"""Distilled Timesteps (FewStep): SIGMAS on the timesteps published few-step models were trained at."""
from comfy_api.latest import io

from ..bridge.distilled import distilled_ui, preset_sigmas, warn_far
from ..samplers.distilled import PRESETS

PRESET_TOOLTIP = "Which distilled model. Sources: " + "; ".join(
    f"{p.name}: {p.source}{'' if p.confirmed else ' (UNCONFIRMED)'}" for p in PRESETS.values())


class FewStepDistilledTimesteps(io.ComfyNode):
    SIGMA_GRAPH = {}  # drawn after each run from the UI message (the σ depend on the model's table)

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepDistilledTimesteps",
            display_name="Distilled Timesteps (FewStep)",
            category="FewStep/schedules",
            description=(
                "The σ schedule at the timesteps a distilled SD1.5/SDXL model was trained at "
                "(SDXL-Lightning, DMD2, Hyper-SD, LCM/LCM-LoRA, TCD, SDXL-Turbo), taken from each model's "
                "card or scheduler code and mapped through the model's own model_sampling. Other step "
                "counts follow the model's own spacing rule (docs/guidance.md). Logs a warning when a "
                "step lands far from every trained timestep. With a SIGMAS input it checks that "
                "schedule instead (e.g. karras at 4 steps on Lightning) and passes it through."),
            inputs=[
                io.Model.Input("model", tooltip="The distilled model (or base model with the LoRA); its model_sampling maps timesteps to σ."),
                io.Combo.Input("preset", options=list(PRESETS), default="sdxl_lightning", tooltip=PRESET_TOOLTIP),
                io.Int.Input("steps", default=4, min=1, max=1000, tooltip=(
                    "Model calls. At the checkpoint's own step count the list is the published one; "
                    "otherwise the preset's spacing rule (trailing, the LCM 50-point grid, or stride 100).")),
                io.Int.Input("trained_steps", default=4, min=1, max=50, tooltip=(
                    "Step count of the checkpoint/LoRA loaded (Lightning 1/2/4/8, Hyper-SD 1/2/4/8/12, "
                    "DMD2 1/4): the timesteps it was trained at, for the far-step warning. LCM, TCD, "
                    "Turbo and the Hyper-SDXL 1-step UNet ignore it.")),
                io.Sigmas.Input("sigmas", optional=True, tooltip=(
                    "Optional: a schedule to check against the preset's trained timesteps instead of "
                    "building one; passed through unchanged.")),
            ],
            outputs=[io.Sigmas.Output(tooltip="σ at the trained timesteps, ending at 0.")],
        )

    @classmethod
    def execute(cls, model, preset, steps, trained_steps, sigmas=None) -> io.NodeOutput:
        ms = model.get_model_object("model_sampling")
        out = preset_sigmas(ms, preset, steps) if sigmas is None else sigmas
        far = warn_far(ms, out, preset, trained_steps)
        return io.NodeOutput(out, ui=distilled_ui(ms, out, preset, trained_steps, far))


NODE_CLASS_MAPPINGS = {"FewStepDistilledTimesteps": FewStepDistilledTimesteps}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepDistilledTimesteps": "Distilled Timesteps (FewStep)"}
