"""End to end: a headless ComfyUI server with the pack, driven over HTTP as users drive it."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image


REPO = Path(__file__).resolve().parents[1]


def test_object_info_lists_every_pack_node(server, comfy):
    _, pack = comfy
    info = server.get("/object_info")
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert name in info, f"{name} missing from /object_info"
        want = cls.INPUT_TYPES()
        got = info[name]["input"]
        for section in ("required", "optional"):
            assert set(want.get(section, {})) == set(got.get(section, {})), (name, section)
        assert info[name]["description"], f"{name} has no DESCRIPTION"


def test_pack_import_time_is_small(server, tmp_path):
    """ComfyUI reports the pack's import (rounded to 0.1 s) without failure; the exact figure is
    measured the same way ComfyUI imports it (nodes.load_custom_node), with bytecode cached as in a
    user's install (this machine sets PYTHONDONTWRITEBYTECODE, which makes every start recompile).
    The figure is CPU time: on shared cores wall time also counts the wait for a core (CI with other
    work beside it measured 0.26 s of wall time for what takes under 0.1 s of CPU)."""
    # 0.33 and newer colour their log lines and tag them "[INFO] "; 0.3.75 writes them bare
    log = re.sub(r"\x1b\[[0-9;]*m", "", server.log())
    times = re.findall(r"^(?:\[\w+\])?\s*([0-9.]+) seconds( \(IMPORT FAILED\))?: (.*ComfyUI-FewStep)\s*$", log, re.M)
    assert times, "ComfyUI did not report the pack's import time:\n" + log[-3000:]
    assert not times[0][1], "ComfyUI reports IMPORT FAILED for the pack"
    print(f"\nComfyUI's start-up report for FewStep: {float(times[0][0]):.1f} s")
    code = f"""
import asyncio, inspect, time
from tests.support.comfy_server import make_base_directory, put_comfy_on_path  # the repo root: cwd, -c
put_comfy_on_path()
import comfy.options; comfy.options.enable_args_parsing(False)
import comfy.cli_args; comfy.cli_args.args.cpu = True; comfy.cli_args.args.base_directory = {str(tmp_path)!r}
import folder_paths, nodes
from pathlib import Path
link = make_base_directory(Path({str(tmp_path)!r}))
try:  # ComfyUI parses every pack's pyproject.toml with pydantic-settings, imported on first use: its cost
    import comfy_config.config_parser  # is ComfyUI's, once per process, not the pack's
except ImportError:
    pass
t0 = time.process_time()
ok = nodes.load_custom_node(str(link))
ok = asyncio.run(ok) if inspect.iscoroutine(ok) else ok
print(ok, time.process_time() - t0)
"""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    runs = []
    for _ in range(3):  # the first run writes the bytecode cache
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                             cwd=REPO)
        ok, seconds = out.stdout.split()[-2:]
        assert ok == "True", out.stdout + out.stderr
        runs.append(float(seconds))
    print(f"FewStep import through nodes.load_custom_node: {', '.join(f'{t * 1000:.1f}' for t in runs)} ms of CPU")
    assert min(runs[1:]) < 0.1


def test_example_workflow_runs_over_http(server):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_ksampler_api.json").read_text())
    entry = server.run_prompt(prompt)
    images = entry["outputs"]["6"]["images"]
    assert len(images) == 4
    for im in images:
        path = server.base / "output" / im.get("subfolder", "") / im["filename"]
        arr = np.asarray(Image.open(path)).astype(float)
        assert arr.shape == (256, 256, 3)
        assert arr.std() > 10, "image is blank"


def test_bad_workflow_is_refused_with_node_errors(server):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_ksampler_api.json").read_text())
    prompt["1"]["inputs"]["components"] = 0
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 400 and "1" in body.get("node_errors", {}), body
