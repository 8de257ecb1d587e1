"""FewStep: few-step diffusion sampling for ComfyUI (schedules, solvers, gated FreeU, exact lab)."""
from .bridge import register
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

register(NODE_CLASS_MAPPINGS)

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
