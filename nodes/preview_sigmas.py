"""Preview Sigmas: shows any SIGMAS (core or pack) as a graph on the node after the prompt runs."""
from ..bridge.sigma_graph import sigma_ui


class FewStepPreviewSigmas:
    DESCRIPTION = ("Draws any SIGMAS (from a FewStep node or a core scheduler) as σ against step on a "
                   "log axis on this node after the prompt runs; hover the graph for the values, the "
                   "full list is shown under it.")
    CATEGORY = "FewStep/sigmas"
    RETURN_TYPES = ()
    FUNCTION = "preview"
    OUTPUT_NODE = True
    SIGMA_GRAPH = {}  # drawn after the run from the UI message, no live route

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "sigmas": ("SIGMAS", {"tooltip": "The schedule to show: any SIGMAS output."}),
        }}

    def preview(self, sigmas):
        return {"ui": sigma_ui(sigmas)}


NODE_CLASS_MAPPINGS = {"FewStepPreviewSigmas": FewStepPreviewSigmas}
NODE_DISPLAY_NAME_MAPPINGS = {"FewStepPreviewSigmas": "Preview Sigmas (FewStep)"}
