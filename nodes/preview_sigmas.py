"""Preview Sigmas: shows any SIGMAS (core or pack) as a graph on the node after the prompt runs."""
import math

from .sigma_graph import UI_KEY

MAX_SHOWN = 10000  # a schedule longer than this is refused, not truncated silently


def sigma_ui(sigmas) -> dict:
    """The node's UI message: the values (drawn by web/sigma_graph.js) and a text line per value."""
    values = [float(s) for s in sigmas.detach().reshape(-1).cpu().double().tolist()]
    if not values:
        raise ValueError("sigmas is empty: nothing to preview")
    if len(values) > MAX_SHOWN:
        raise ValueError(f"sigmas has {len(values)} values; the preview shows at most {MAX_SHOWN}")
    text = "\n".join(f"{i:>3}  {s:.6g}" for i, s in enumerate(values))
    return {UI_KEY: [v if math.isfinite(v) else None for v in values], "text": [text]}


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
