"""Test access to the real ComfyUI host: in-process (comfy_inprocess.py) and as a headless
server (comfy_server.py)."""
from .comfy_inprocess import load_inprocess  # noqa: F401
from .comfy_server import PACK_DIR_NAME, ComfyServer, comfy_path, make_base_directory  # noqa: F401


def recording(model):
    """A clone whose every UNet call appends its sigma to .seen (through ComfyUI's wrapper hook)."""
    m = model.clone()
    m.seen = []

    def wrapper(apply, args):
        m.seen.append(float(args["timestep"].reshape(-1)[0]))
        return apply(args["input"], args["timestep"], **args["c"])
    m.set_model_unet_function_wrapper(wrapper)
    return m
