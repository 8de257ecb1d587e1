"""The real ComfyUI imported in-process, with the FewStep pack loaded by ComfyUI's own loader
(nodes.load_custom_node from a link under custom_nodes/), for tests and benchmarks."""
from __future__ import annotations

import asyncio
import inspect
import sys
from pathlib import Path

from .comfy_server import PACK_DIR_NAME, make_base_directory, put_comfy_on_path


def _run(result):
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def load_inprocess(base: Path, cpu: bool = True):
    """Imports ComfyUI into this process with the pack loaded through nodes.load_custom_node.
    cpu=False lets ComfyUI pick its device (the GPU benchmarks). Returns (nodes, pack module)."""
    put_comfy_on_path()
    link = make_base_directory(base)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.base_directory = str(base)
    if cpu:
        comfy.cli_args.args.cpu = True
    import folder_paths  # noqa: F401  (reads base_directory)
    import nodes
    if not getattr(nodes, "_fewstep_builtin_loaded", False):
        _run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        nodes._fewstep_builtin_loaded = True
    ok = _run(nodes.load_custom_node(str(link)))
    if ok is False:
        raise RuntimeError("ComfyUI failed to load the FewStep pack; see the log above")
    pack = next(m for name, m in sys.modules.items()
                if name.endswith(PACK_DIR_NAME) and hasattr(m, "NODE_CLASS_MAPPINGS"))
    return nodes, pack


