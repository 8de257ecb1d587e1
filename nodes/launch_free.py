"""Launch-free UNet: every diffusion-model call replayed from a captured CUDA graph (bridge/cuda_graph.py)."""
from comfy_api.latest import io

from ..bridge import cuda_graph

CATEGORY = "FewStep/model_patches"


class FewStepCudaGraph(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FewStepCudaGraph",
            display_name="Launch-free UNet (FewStep)",
            category=CATEGORY,
            description=(
                "Replays each diffusion-model call of a sampling run from a captured CUDA graph, so the "
                "GPU no longer waits for the CPU to launch thousands of kernels per call (SDXL on a "
                "datacentre GPU: up to 2.5x per call at batch 1). Works with every sampler that goes "
                "through ComfyUI's model calls (KSampler, SamplerCustom, the FewStep recipe). One graph "
                "per call shape / conditioning / patch set, captured on first use (well under a second "
                "per shape, no compiling); σ is an input of the graph, so FewStep FreeU's σ window "
                "switches inside it. Falls back to ordinary calls, with one log line saying why, "
                "wherever a replay could differ: not CUDA, model not fully on the GPU (lowvram, partial "
                "or dynamic loading), weight hooks, gradients on, a patch that reads the host, any "
                "capture error. LoRA or other patch changes and model reloads drop the graphs."),
            inputs=[
                io.Model.Input("model", tooltip="A diffusion model (any ComfyUI model; the graphs are "
                               "made per call shape on first use)."),
                io.Int.Input("max_graphs", default=8, min=1, max=64, tooltip=(
                    "Graphs kept (least recently used out). A run uses one per call shape: batch 1 and "
                    "2 (CFG) of one resolution is 2; more for several resolutions or models.")),
                io.Boolean.Input("verify", default=True, tooltip=(
                    "Check each new graph once: its first replay must equal (bit for bit) the eager "
                    "call of the same inputs, else that call shape runs eagerly (logged). Costs one "
                    "extra model call per graph.")),
            ],
            outputs=[io.Model.Output(tooltip="The model with launch-free calls (falls back per call).")],
        )

    @classmethod
    def execute(cls, model, max_graphs, verify) -> io.NodeOutput:
        return io.NodeOutput(cuda_graph.attach(model, max_graphs=max_graphs, verify=verify))


class FewStepCudaGraphReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FewStepCudaGraphReport",
            display_name="Launch-free UNet report (FewStep)",
            category=CATEGORY,
            description=(
                "What the Launch-free UNet node did so far for this model: graphs cached and their GPU "
                "memory (graph pool + static inputs), calls replayed / captured / run eagerly, capture "
                "time, and every reason for running eagerly. Connect a LATENT from the sampler so it "
                "runs after sampling."),
            inputs=[
                io.Model.Input("model", tooltip="The model output of a Launch-free UNet node."),
                io.Latent.Input("after", tooltip="Any output of the sampling run (makes the report run after it)."),
            ],
            outputs=[io.String.Output(display_name="report", tooltip="The cache and fallback report.")],
            is_output_node=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return float("nan")  # the cache changes without its inputs changing: always re-run

    @classmethod
    def execute(cls, model, after) -> io.NodeOutput:
        runner = cuda_graph.find(model)
        if runner is None:
            raise ValueError("model: no Launch-free UNet (FewStepCudaGraph) is applied to this model")
        text = runner.report()
        return io.NodeOutput(text, ui={"text": [text]})


NODE_CLASS_MAPPINGS = {"FewStepCudaGraph": FewStepCudaGraph, "FewStepCudaGraphReport": FewStepCudaGraphReport}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepCudaGraph": "Launch-free UNet (FewStep)",
                              "FewStepCudaGraphReport": "Launch-free UNet report (FewStep)"}
