"""Preview Sigmas: shows any SIGMAS (core or pack) as a graph on the node after the prompt runs."""
from comfy_api.latest import io

from ..bridge.sigma_graph import sigma_ui


class FewStepPreviewSigmas(io.ComfyNode):
    SIGMA_GRAPH = {}  # drawn after the run from the UI message, no live route

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="FewStepPreviewSigmas", display_name="Preview Sigmas (FewStep)", category="FewStep/sigmas",
            description=("Draws any SIGMAS (from a FewStep node or a core scheduler) as σ against step on a "
                         "log axis on this node after the prompt runs; hover the graph for the values, the "
                         "full list is shown under it."),
            is_output_node=True,
            inputs=[io.Sigmas.Input("sigmas", tooltip="The schedule to show: any SIGMAS output.")],
            outputs=[])

    @classmethod
    def execute(cls, sigmas) -> io.NodeOutput:
        return io.NodeOutput(ui=sigma_ui(sigmas))


NODE_CLASS_MAPPINGS = {"FewStepPreviewSigmas": FewStepPreviewSigmas}
