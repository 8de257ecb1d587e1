"""Puts ComfyUI on sys.path for the benchmark scripts ($COMFYUI_PATH, e.g. .gpu/ComfyUI on the
GPU machine) and sets ComfyUI's argument defaults without parsing the benchmark's argv."""
import os
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent


def setup_comfy(cpu: bool = False):
    root = os.environ.get("COMFYUI_PATH")
    if not root:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI tree (scripts/host.sh or .gpu/ComfyUI)")
    for p in (root, str(SCRIPTS)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    if cpu:
        comfy.cli_args.args.cpu = True
    return root
