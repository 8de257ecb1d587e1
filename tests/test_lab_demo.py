"""The README's main job (`bash scripts/demo.sh`, run from another folder) and the accuracy workflow over HTTP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_accuracy_workflow_over_http(server):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_accuracy_api.json").read_text())
    prompt["3"]["inputs"].update(batch_size=4, steps=6)
    entry = server.run_prompt(prompt)
    acc = entry["outputs"]["3"]["fewstep_accuracy"][0]
    assert acc["nfe"] == 6 and acc["rmse_mean"] > 0 and acc["target"] == "model sample"
    assert "RMSE vs exact model sample" in entry["outputs"]["3"]["text"][0]
    plot = entry["outputs"]["4"]["images"][0]
    arr = np.asarray(Image.open(server.base / "output" / plot.get("subfolder", "") / plot["filename"]))
    assert arr.shape[2] == 3 and arr.shape[1] > 600 and arr.std() > 10
    assert len(entry["outputs"]["6"]["images"]) == len(entry["outputs"]["8"]["images"]) == 4


def test_demo_writes_grid_and_error_plot(tmp_path):
    env = dict(os.environ)
    env.setdefault("FEWSTEP_PYTHON", sys.executable)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--quick", "--out", "out"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    out = tmp_path / "out"  # --out is relative to the caller's folder
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "workflows" in proc.stdout and "[demo] done in" in proc.stdout  # progress display and summary
    for name in ("lab_grid.png", "lab_error_vs_nfe.png", "lab_accuracy_plot.png"):
        img = np.asarray(Image.open(out / name).convert("RGB")).astype(float)
        assert img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 10, name
    assert len(list(out.glob("fewstep_lab_*.png"))) == 4
