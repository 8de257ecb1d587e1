"""The real ComfyUI host imported in-process, with the pack loaded by ComfyUI's own loader."""
from __future__ import annotations

import asyncio
import inspect
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_server import PACK_DIR_NAME, ComfyServer, comfy_path, make_base_directory  # noqa: E402,F401


def _run(result):
    return asyncio.run(result) if inspect.iscoroutine(result) else result


def load_inprocess(base: Path):
    """Imports ComfyUI into this process with the pack loaded through nodes.load_custom_node.
    Returns (nodes module, pack module)."""
    root = comfy_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    link = make_base_directory(base)
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.base_directory = str(base)
    if os.environ.get("FEWSTEP_TEST_DEVICE", "cpu") == "cpu":
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


