"""Puts ComfyUI on sys.path for the benchmark scripts ($COMFYUI_PATH, e.g. .gpu/ComfyUI on the
GPU machine) and sets ComfyUI's argument defaults without parsing the benchmark's argv.

The benchmarks run from the repo root as modules (`python -m bench.bench_freeu`): the root is on
sys.path, and they import `samplers`, `freeu`, `bench` and `tests.support` by name."""
from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.comfy_server import put_comfy_on_path


def setup_comfy(cpu: bool = False, root: str | None = None):
    root = root or os.environ.get("COMFYUI_PATH")
    if not root or not (Path(root) / "comfy").is_dir():
        raise SystemExit("set COMFYUI_PATH to a ComfyUI tree (scripts/host.sh or .gpu/ComfyUI)")
    put_comfy_on_path(root)
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
