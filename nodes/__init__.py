"""ComfyUI node classes, nothing else, on ComfyUI's current node API (comfy_api.latest: io.ComfyNode
with define_schema / execute; node id, display name and category live in the schema). Each module
here exports NODE_CLASS_MAPPINGS; this package merges them so a new module needs no edit elsewhere.
ComfyUI 0.3.75 and later register v3 classes given this way. Dropdown entries, routes and other
registration live in bridge/ (bridge.register)."""
import importlib
import pkgutil

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f".{_info.name}", __name__)
    if hasattr(_module, "setup"):
        raise RuntimeError(f"nodes/{_info.name}.py has a setup(): nodes/ holds node classes only; register "
                           "dropdown entries or routes in bridge/ (bridge.register)")
    for _name, _cls in getattr(_module, "NODE_CLASS_MAPPINGS", {}).items():
        if _name in NODE_CLASS_MAPPINGS:
            raise RuntimeError(f"FewStep node name {_name!r} defined twice ({_info.name})")
        NODE_CLASS_MAPPINGS[_name] = _cls
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_module, "NODE_DISPLAY_NAME_MAPPINGS", {}))
