"""Puts ComfyUI on sys.path for the benchmark scripts ($COMFYUI_PATH, e.g. .gpu/ComfyUI on the
GPU machine) and sets ComfyUI's argument defaults without parsing the benchmark's argv."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent


def setup_comfy(cpu: bool = False, root: str | None = None):
    root = root or os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "comfy").is_dir():
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


def time_ms(fn, device) -> float:
    """Wall time of fn() in ms: CUDA events on CUDA (queued work included), perf_counter elsewhere."""
    import torch
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3
