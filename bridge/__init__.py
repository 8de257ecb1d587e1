"""ComfyUI-facing code that is not a node (model wrappers, training machinery, caches)."""
