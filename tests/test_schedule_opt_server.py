"""Optimised schedules over HTTP: the example workflow (optimise -> KSampler with the
'fewstep_optimized' scheduler) on a headless ComfyUI, and the cache file it leaves."""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_schedule_opt_workflow_runs_over_http(server):
    info = server.get("/object_info/KSampler")["KSampler"]["input"]["required"]
    assert "fewstep_optimized" in info["scheduler"][0]
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_schedule_opt_api.json").read_text())
    entry = server.run_prompt(prompt)
    assert len(entry["outputs"]["6"]["images"]) == 4
    files = list((server.base / "user" / "fewstep" / "schedules").glob("*.json"))
    assert len(files) == 1
    rec = json.loads(files[0].read_text())
    sig = rec["selected"]["6"]["sigmas"]
    assert len(sig) == 7 and sig[-1] == 0 and all(b < a for a, b in zip(sig, sig[1:]))


def test_dropdown_without_a_schedule_reports_how_to_make_one(server):
    prompt = json.loads((REPO / "example_workflows" / "api" / "lab_schedule_opt_api.json").read_text())
    del prompt["7"]
    prompt["1"]["inputs"]["seed"] = 123  # a model no schedule was made for
    prompt["4"]["inputs"]["model"] = ["1", 0]
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 200, body
    history = _history(server, body["prompt_id"])
    text = json.dumps(history)
    assert "no optimised schedule is known" in text and "Optimise Schedule (FewStep)" in text


def _history(server, prompt_id, timeout=120):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        h = server.get(f"/history/{prompt_id}")
        if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
            return h[prompt_id]
        time.sleep(0.5)
    raise AssertionError("prompt did not finish")
