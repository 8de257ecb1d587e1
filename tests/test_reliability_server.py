"""Reliability matrix, server rows (issue 25, items 3, 4 and 6) over HTTP against a headless ComfyUI
with the pack, on the CPU: ComfyUI's /interrupt mid-run, the batch runner meeting an interrupted
job, /fewstep/sigmas under 50 concurrent requests while a prompt runs, and what ComfyUI does with
--lowvram / --novram on a CPU host (it refuses them: the offload rows are
bench/bench_reliability_gpu.py on the GPU)."""
import json
import statistics
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from batch.client import ComfyClient
from batch.runner import Options, run_batch
from batch.sweep import plan_from_cli

def lab_prompt(steps, prefix, samplers=("fewstep_dpmpp_3m",), scheduler="fewstep_fscheduler_512", seed=7):
    """Lab model -> one KSampler per sampler -> SaveLatent (bitwise comparable, unlike a PNG)."""
    prompt = {
        "1": {"class_type": "FewStepLabModel", "inputs": {"dataset": "gmm", "components": 6, "spread": 0.3,
                                                          "seed": 0, "schedule": "sd_discrete"}},
        "2": {"class_type": "FewStepLabConditioning", "inputs": {}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    }
    for k, name in enumerate(samplers):
        prompt[f"s{k}"] = {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": name, "scheduler": scheduler,
            "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["3", 0], "denoise": 1.0}}
        prompt[f"o{k}"] = {"class_type": "SaveLatent", "inputs": {"samples": [f"s{k}", 0],
                                                                  "filename_prefix": f"{prefix}_{k}"}}
    return prompt


def saved_latents(server, entry):
    from safetensors.torch import load_file
    out = {}
    for node_id, node_out in entry["outputs"].items():
        for item in node_out.get("latents", []):
            path = server.base / "output" / item.get("subfolder", "") / item["filename"]
            out[node_id] = load_file(str(path))["latent_tensor"]
    return out


def cached_nodes(entry):
    cached = set()
    for event, data in entry["status"]["messages"]:
        if event == "execution_cached":
            cached.update(data.get("nodes", []))
    return cached


def submit(server, prompt, client_id):
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": client_id})
    assert status == 200, body
    return body["prompt_id"]


def interrupt(server):
    """POST /interrupt as the UI's Cancel does (ComfyUI answers with an empty body)."""
    req = urllib.request.Request(server.url + "/interrupt", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200


def wait_history(server, pid, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hist = server.get(f"/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            return hist[pid]
        time.sleep(0.2)
    raise TimeoutError(pid)


# ---------------------------------------------------------------------------------------- interrupts

def test_interrupt_over_http_stops_the_run_and_the_next_prompt_equals_a_fresh_run(server):
    fresh = saved_latents(server, server.run_prompt(lab_prompt(8, "fresh")))
    # drop ComfyUI's output cache after the next prompt (0.33 keeps earlier prompts' outputs, which
    # would serve the run below without computing it): the run after the interrupt must be computed
    req = urllib.request.Request(server.url + "/free", data=b'{"free_memory": true}',
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    client_id = f"rel-{uuid.uuid4()}"
    ws = ComfyClient(server.url).websocket(client_id)
    try:
        pid = submit(server, lab_prompt(10000, "long"), client_id)
        seen, posted_at, stopped_at, t_post = 0, None, None, None
        deadline = time.time() + 240
        while time.time() < deadline:
            msg = ws.recv(timeout=1.0)
            if msg is None or msg[0] != 0x1:
                continue
            event = json.loads(msg[1])
            data = event.get("data") or {}
            if data.get("prompt_id") not in (pid, None):
                continue
            if event["type"] == "progress":
                seen = max(seen, int(data["value"]))
                if posted_at is None and seen >= 20:
                    posted_at, t_post = seen, time.time()
                    interrupt(server)
            elif event["type"] == "execution_interrupted":
                stopped_at = seen
                break
    finally:
        ws.close()
    assert posted_at is not None and stopped_at is not None, "no progress / no interrupt event"
    waited = time.time() - t_post
    print(f"\ninterrupt posted at step {posted_at}, last progress {stopped_at} of 10000, event after {waited:.2f} s")
    assert stopped_at < 10000 and waited < 30
    entry = wait_history(server, pid)
    assert entry["status"]["status_str"] == "error"
    assert "execution_interrupted" in [e for e, _ in entry["status"]["messages"]]
    for _ in range(100):  # history is written just before the prompt leaves the queue
        if server.get("/queue") == {"queue_running": [], "queue_pending": []}:
            break
        time.sleep(0.1)
    assert server.get("/queue") == {"queue_running": [], "queue_pending": []}
    # the server keeps serving, and the next run is computed again (not served from ComfyUI's cache)
    # and equals the fresh run bitwise: no sampler, schedule or graph state was left behind
    entry = server.run_prompt(lab_prompt(8, "after"))
    assert "s0" not in cached_nodes(entry)
    after = saved_latents(server, entry)
    assert after.keys() == fresh.keys() and all(torch.equal(after[k], fresh[k]) for k in fresh)


STEPS_TO_INTERRUPT = 5000


def test_batch_runner_records_an_interrupted_job_as_not_done_and_reruns_it(server, tmp_path):
    """A job stopped by someone's /interrupt (the UI's Cancel) is 'failed: interrupted', not done; the
    next invocation with the same output folder runs it again and its latent equals a fresh run's."""
    # long enough that the interrupt, posted at the first progress events, lands well before the end
    # (a 60-step job could finish while /interrupt was in flight on a fast host)
    workflow = lab_prompt(STEPS_TO_INTERRUPT, "batch")
    plan = plan_from_cli([], [("sweep", "s0.seed=3,4")])
    opts = Options(timeout=240, job_retries=0, server_retries=1, backoff=0.2, poll=0.5)
    interrupted = []

    def on_event(kind, job=None, value=None, **_):
        if kind == "progress" and job is not None and job.index == 0 and not interrupted and (value or 0) >= 2:
            interrupted.append(value)
            interrupt(server)

    out = tmp_path / "out"
    first = run_batch(workflow, plan, [server.url], out, opts, on_event=on_event, quiet=True)
    assert interrupted, "the job finished before it could be interrupted"
    stopped = next(j for j in first.jobs if j.index == 0)
    rec = first.states[stopped.key]
    assert rec["status"] == "failed" and "interrupted" in rec["error"] and rec["execution_error"]["interrupted"]
    assert stopped in first.not_done and not first.ok
    second = run_batch(workflow, plan, [server.url], out, opts, quiet=True)
    assert second.ok and second.sent == 1
    done = second.states[stopped.key]
    assert done["status"] == "done"
    rerun = saved_latents(server, server.get(f"/history/{done['prompt_id']}")[done["prompt_id"]])
    fresh_prompt = lab_prompt(STEPS_TO_INTERRUPT, "batch_fresh", seed=3)
    fresh = saved_latents(server, server.run_prompt(fresh_prompt))
    assert torch.equal(rerun["o0"], fresh["o0"])


# ------------------------------------------------------------------------------ route under load

def _get(url):
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=60) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - t0
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), time.perf_counter() - t0


def test_sigmas_route_under_50_concurrent_requests_while_a_prompt_runs(server):
    queries = [{"node": "FewStepKarrasSigmas", "steps": 4 + k % 20, "sigma_max": 0, "sigma_min": 0, "rho": 7,
                "append_zero": "true", "denoise": 1, "model": "sd_discrete"} if k % 2 else
               {"node": "FewStepFSchedulerSigmas", "preset": "custom", "steps": 3 + k % 9, "p1": 1.2, "p2": 5,
                "grid_points": 12, "stop_index": 9, "t_max": -1, "interpolation": "auto", "denoise": 1,
                "model": "sd_discrete"} for k in range(50)]
    urls = [f"{server.url}/fewstep/sigmas?{urllib.parse.urlencode(q)}" for q in queries]
    expected = [_get(u) for u in urls]  # sequential, idle server
    assert all(status == 200 for status, _, _ in expected), [b for s, b, _ in expected if s != 200][:1]
    client_id = f"rel-{uuid.uuid4()}"
    pid = submit(server, lab_prompt(150, "route_load", samplers=("fewstep_dpmpp_2m",)), client_id)
    deadline = time.time() + 60
    while server.get("/queue")["queue_running"] == [] and time.time() < deadline:
        time.sleep(0.05)
    assert server.get("/queue")["queue_running"], "the prompt did not start"
    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(_get, urls))
    running_during = bool(server.get("/queue")["queue_running"])
    latencies = sorted(t for _, _, t in answers)
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
    print(f"\n/fewstep/sigmas, 50 concurrent requests during a prompt: p50 {1e3 * p50:.1f} ms, "
          f"p99 {1e3 * p99:.1f} ms, max {1e3 * latencies[-1]:.1f} ms (prompt still running after: {running_during})")
    for (status, body, _), (_, want, _) in zip(answers, expected):
        assert status == 200 and body == want
    # bounded: a request for more work than a graph needs is refused, not computed
    status, body, _ = _get(f"{server.url}/fewstep/sigmas?node=FewStepKarrasSigmas&steps=1000000&sigma_max=0"
                           f"&sigma_min=0&rho=7&append_zero=true&denoise=1")
    assert status == 400 and body["parameter"] == "steps"
    entry = wait_history(server, pid)
    assert entry["status"]["status_str"] == "success"


# ------------------------------------------------------------------ memory flags on the CPU host

@pytest.mark.parametrize("flag", ["--lowvram", "--novram"])
def test_comfyui_refuses_memory_flags_on_a_cpu_host(flag, tmp_path):
    """Offloading needs a second device: ComfyUI's command line makes --lowvram / --novram exclusive
    with --cpu (and without --cpu it asks torch for a CUDA device), and in-process load_models_gpu
    uses its DISABLED vram state for a CPU load device. So the offload rows run on the GPU
    (bench/bench_reliability_gpu.py); this checks that the CPU host really cannot take them."""
    from tests.support.comfy_host import ComfyServer
    srv = ComfyServer(tmp_path / "base", extra_args=[flag])
    with pytest.raises(RuntimeError, match=r"exited with 2") as info:
        srv.start(timeout=120)
    srv.stop()
    assert "not allowed with argument --cpu" in str(info.value)
