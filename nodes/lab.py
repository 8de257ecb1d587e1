"""Exact-denoiser lab nodes: the MODEL, its empty conditioning and its latent-to-image decode
(the model itself is bridge/lab_model.py)."""
from comfy_api.latest import io

from ..bridge.lab_model import SCHEDULES, build_lab_model, empty_conditioning, lab_latent_to_image
from ..samplers.exact import DATASETS

CATEGORY = "FewStep/lab"


class FewStepLabModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepLabModel", display_name="Exact Denoiser Lab Model (FewStep)", category=CATEGORY,
            description=("A MODEL with an exact denoiser: the closed-form posterior mean of a known Gaussian "
                         "mixture (random latent means, or procedurally drawn shapes you can look at). "
                         "Works with KSampler and every sampler node; ground truth for comparing samplers."),
            inputs=[
                io.Combo.Input("dataset", options=list(DATASETS), default="shapes", tooltip="shapes: images of discs and boxes on gradients; gmm: random latent-space means."),
                io.Int.Input("components", default=16, min=1, max=4096, tooltip="Number of mixture components (data points)."),
                io.Float.Input("spread", default=0.05, min=0.001, max=10.0, step=0.001, tooltip="Standard deviation of each component."),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate="fixed",
                             tooltip="Seed of the data set (not of the sampling noise)."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default="sd_discrete", tooltip="sd_discrete: SD1.5/SDXL eps model, sigma 0.0292-14.61; edm: continuous EDM, sigma 0.002-80."),
            ],
            outputs=[io.Model.Output()])

    @classmethod
    def execute(cls, dataset, components, spread, seed, schedule) -> io.NodeOutput:
        return io.NodeOutput(build_lab_model(dataset, components, spread, seed, schedule))


class FewStepLabConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepLabConditioning", display_name="Lab Empty Conditioning (FewStep)", category=CATEGORY,
            description="Empty CONDITIONING for the lab model, so KSampler runs without a CLIP model.",
            inputs=[], outputs=[io.Conditioning.Output()])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(empty_conditioning())


class FewStepLabDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepLabDecode", display_name="Lab Latent to Image (FewStep)", category=CATEGORY,
            description="Turns a lab LATENT into an IMAGE (channels 0-2 as RGB, upscaled like a VAE would).",
            inputs=[
                io.Latent.Input("samples", tooltip="A latent sampled from the lab model."),
                io.Int.Input("scale", default=8, min=1, max=16, tooltip="Pixels per latent cell."),
            ],
            outputs=[io.Image.Output()])

    @classmethod
    def execute(cls, samples, scale) -> io.NodeOutput:
        return io.NodeOutput(lab_latent_to_image(samples["samples"], scale))


NODE_CLASS_MAPPINGS = {"FewStepLabModel": FewStepLabModel, "FewStepLabConditioning": FewStepLabConditioning,
                       "FewStepLabDecode": FewStepLabDecode}
