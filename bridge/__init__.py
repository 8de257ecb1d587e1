"""ComfyUI-facing code that is not a node: model wrappers, guiders, dropdown glue. Imports
comfy; the pure maths it calls lives in samplers/, freeu/ and guidance/."""
