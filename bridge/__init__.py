"""ComfyUI-facing code that is not a node: model wrappers, caches (imports ComfyUI lazily)."""
