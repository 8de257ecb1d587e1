"""Batch runner pieces that need no server: sweep specs, typing against /object_info input specs
(written out here in the server's format), job expansion and keys, workflow format detection, the
manifest journal and the work queue. The server-side behaviour is in test_batch_runner.py."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batch import InputError, plan_from_cli, plan_from_file
from batch.jobqueue import JobQueue
from batch.manifest import Manifest, job_states, read_records
from batch.sweep import coerce, expand, raw_values
from batch.workflow import check_api_format, job_key, load_workflow, resolve_node

pytestmark = pytest.mark.host_independent  # imports no ComfyUI: one leg of scripts/test.sh runs it

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = json.loads((REPO / "example_workflows" / "api" / "lab_ksampler_api.json").read_text())
# /object_info entries in the server's own shapes: old-style combo (a list) and new-style ("COMBO", options)
INFO = {
    "KSampler": {"input": {"required": {
        "model": ["MODEL", {}], "seed": ["INT", {"default": 0, "min": 0, "max": 2 ** 64 - 1}],
        "steps": ["INT", {"default": 20, "min": 1, "max": 10000}], "cfg": ["FLOAT", {"min": 0.0, "max": 100.0}],
        "sampler_name": [["euler", "dpmpp_2m"], {}], "scheduler": ["COMBO", {"options": ["karras", "normal"]}],
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "latent_image": ["LATENT"],
        "denoise": ["FLOAT", {"min": 0.0, "max": 1.0}]}}},
    "FewStepLabModel": {"input": {"required": {"components": ["INT", {"min": 1, "max": 4096}]}}},
    "FewStepLabConditioning": {"input": {"required": {}}},
    "EmptyLatentImage": {"input": {"required": {"width": ["INT", {"min": 16}], "height": ["INT", {"min": 16}],
                                                "batch_size": ["INT", {"min": 1}]}}},
    "FewStepLabDecode": {"input": {"required": {"samples": ["LATENT"], "scale": ["INT", {"min": 1}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {}]},
                            "optional": {"flag": ["BOOLEAN", {}]}}},
}


def test_values_lists_ranges_and_json():
    assert raw_values("euler, dpmpp_2m") == ["euler", "dpmpp_2m"]
    assert raw_values("0..3,7") == [0, 1, 2, 3, "7"]
    assert raw_values('["a, b", "c"]') == ["a, b", "c"]
    with pytest.raises(InputError, match="must go up"):
        raw_values("5..1")
    with pytest.raises(InputError, match="empty value"):
        raw_values("4,,6")


def test_sweeps_cross_and_zips_pair():
    plan = plan_from_cli(["Empty Latent.width=64"], [("sweep", "KSampler.sampler_name=euler,dpmpp_2m"),
                                                      ("sweep", "4.steps=4,6"), ("zip", "KSampler.cfg=1,1.5")])
    jobs = expand(WORKFLOW, plan, INFO)
    assert [(j.params["KSampler.sampler_name"], j.params["4.steps"], j.params["KSampler.cfg"]) for j in jobs] == [
        ("euler", 4, 1.0), ("euler", 6, 1.5), ("dpmpp_2m", 4, 1.0), ("dpmpp_2m", 6, 1.5)]
    assert all(j.prompt["3"]["inputs"]["width"] == 64 for j in jobs)
    assert jobs[0].prompt["6"]["inputs"]["filename_prefix"] == f"fewstep_lab_{jobs[0].key[:8]}"
    assert jobs[1].prompt["4"]["inputs"]["steps"] == 6 and WORKFLOW["4"]["inputs"]["steps"] == 8  # base untouched
    with pytest.raises(InputError, match="same number of values"):
        expand(WORKFLOW, plan_from_cli([], [("sweep", "4.steps=4,6"), ("zip", "4.cfg=1")]), INFO)
    with pytest.raises(InputError, match="set twice"):
        expand(WORKFLOW, plan_from_cli([], [("sweep", "4.steps=4,6"), ("sweep", "KSampler.steps=8")]), INFO)
    with pytest.raises(InputError, match="needs a --sweep before it"):
        plan_from_cli([], [("zip", "4.steps=4")])


def test_sweep_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"set": {"Empty Latent.width": 64}, "sweep": {"KSampler.seed": "0..2"},
                                "zip": [{"KSampler.steps": [4, 8], "KSampler.scheduler": ["karras", "normal"]}]}))
    jobs = expand(WORKFLOW, plan_from_file(path), INFO)
    assert len(jobs) == 6 and jobs[-1].params == {"KSampler.seed": 2, "KSampler.steps": 8, "KSampler.scheduler": "normal"}
    path.write_text(json.dumps({"sweeps": {}}))
    with pytest.raises(InputError, match="unknown keys"):
        plan_from_file(path)


def test_values_are_typed_and_checked_against_object_info():
    steps, cfg = INFO["KSampler"]["input"]["required"]["steps"], INFO["KSampler"]["input"]["required"]["cfg"]
    assert coerce("s", steps, "7") == 7 and coerce("s", steps, 7.0) == 7 and coerce("c", cfg, "2") == 2.0
    flag = INFO["SaveImage"]["input"]["optional"]["flag"]
    assert coerce("f", flag, "true") is True and coerce("f", flag, "0") is False
    for spec, value, message in [(steps, "7.5", "is not an INT"), (steps, True, "is not an INT"),
                                 (steps, 0, "below the minimum 1"), (cfg, "x", "is not a FLOAT"),
                                 (cfg, 101, "above the maximum 100"), (flag, "maybe", "is not a BOOLEAN"),
                                 (INFO["KSampler"]["input"]["required"]["scheduler"], "karas", "Did you mean 'karras'"),
                                 (INFO["SaveImage"]["input"]["required"]["filename_prefix"], 3, "is not a STRING")]:
        with pytest.raises(InputError, match=message):
            coerce("x", spec, value)


def test_nodes_by_id_or_unique_title():
    assert resolve_node(WORKFLOW, "4") == "4" and resolve_node(WORKFLOW, "Empty Latent") == "3"
    with pytest.raises(InputError, match="Did you mean 'Empty Latent'"):
        resolve_node(WORKFLOW, "empty latent")
    twice = {**WORKFLOW, "7": {**WORKFLOW["6"]}}
    with pytest.raises(InputError, match=r"used by several nodes \(6, 7\)"):
        resolve_node(twice, "Save")


def test_job_key_ignores_titles_and_repeated_values_run_once():
    renamed = json.loads(json.dumps(WORKFLOW))
    renamed["4"]["_meta"]["title"] = "Sampler"
    assert job_key(renamed) == job_key(WORKFLOW)
    changed = json.loads(json.dumps(WORKFLOW))
    changed["4"]["inputs"]["steps"] = 9
    assert job_key(changed) != job_key(WORKFLOW)
    assert len(expand(WORKFLOW, plan_from_cli([], [("sweep", "4.steps=4,6,4")]), INFO)) == 2


def test_ui_format_is_refused_with_the_export_hint(tmp_path):
    ui = {"last_node_id": 1, "last_link_id": 0, "nodes": [{"id": 1, "type": "KSampler"}], "links": [], "version": 0.4}
    with pytest.raises(InputError, match=r"UI-format workflow.*Export \(API\)"):
        check_api_format(ui)
    with pytest.raises(InputError, match="not an API-format node"):
        check_api_format({"1": {"inputs": {}}})
    assert check_api_format({"prompt": WORKFLOW, "client_id": "x"}) is WORKFLOW  # a saved /prompt body
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_workflow(tmp_path / "w.json")


def test_manifest_journal(tmp_path):
    path = tmp_path / "manifest.jsonl"
    m = Manifest(path)
    m.write({"job": "a", "status": "submitted"})
    m.write({"job": "a", "status": "done", "outputs": []})
    m.write({"job": "a", "status": "failed"})  # a done job is never overridden
    m.write({"job": "b", "status": "timeout"})
    with pytest.raises(RuntimeError, match="another batch run"):
        Manifest(path)  # a second runner on the same folder is refused
    m.close()
    with open(path, "a") as f:
        f.write('{"job": "c", "sta')  # a runner killed mid-line
    m = Manifest(path)
    assert m.unreadable == 1
    m.write({"job": "c", "status": "done"})
    m.close()
    states = job_states(read_records(path)[0])
    assert {k: v["status"] for k, v in states.items()} == {"a": "done", "b": "timeout", "c": "done"}


class _Job:
    def __init__(self, key, attach=None):
        self.key, self.attach = key, attach


def test_queue_requeues_to_the_front_and_waits_for_jobs_in_flight():
    q = JobQueue([_Job("1"), _Job("2"), _Job("3", attach=("http://b", "p"))])
    j1 = q.take("http://a")
    assert q.take("http://a").key == "2"  # "3" waits for the server it already runs on
    got = []
    t = threading.Thread(target=lambda: got.append(q.take("http://a")))
    t.start()
    q.requeue(j1)  # a's server dropped job 1: it comes back first
    t.join(5)
    assert got[0].key == "1"
    q.release_server("http://b")  # b given up: job 3 becomes an ordinary job
    assert q.take("http://a").key == "3"
    for key in ("1", "2", "3"):
        q.finish(_Job(key))
    assert q.take("http://a") is None and q.sleep(10) is True


def test_cli_runs_as_module_and_as_script(tmp_path):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": [], "last_node_id": 0}))
    for cmd in ([sys.executable, "-m", "batch"], [sys.executable, str(REPO / "batch")],
                [sys.executable, str(REPO / "batch" / "__main__.py")]):
        proc = subprocess.run([*cmd, str(ui)], cwd=REPO if "-m" in cmd else tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and "UI-format workflow" in proc.stderr, (cmd, proc.stderr)


def test_pack_does_not_import_the_batch_runner():
    """ComfyUI loads the pack's __init__ and nodes/; none of that may pull in the runner."""
    import re
    files = [REPO / "__init__.py", *[p for d in ("nodes", "samplers", "freeu") for p in (REPO / d).rglob("*.py")]]
    hits = [str(p) for p in files if re.search(r"^\s*(from|import)\s+\.*batch\b", p.read_text(), re.M)]
    assert not hits
