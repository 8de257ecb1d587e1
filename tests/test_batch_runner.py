"""Batch runner against real headless ComfyUI servers on loopback (two of our own, booted in parallel
once for this module): a 2 x 3 sweep, two servers sharing the queue, resume, adoption after a runner
crash, per-job node_errors, and one server killed mid-run."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.comfy_host import ComfyServer

from batch import InputError, Options, plan_from_cli, run_batch
from batch.client import ComfyClient
from batch.manifest import read_records
from batch.sweep import expand

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "example_workflows" / "api" / "lab_ksampler_api.json"
SMALL = ["Empty Latent.width=64", "Empty Latent.height=64", "Empty Latent.batch_size=1"]  # 8x8 latent
FAST = Options(timeout=120, job_retries=2, server_retries=2, backoff=0.2, poll=1.0)
WAIT = 120  # bound on every wait inside the event hooks


class Servers:
    """Our own servers, each with its own base directory; a killed one is replaced on demand."""

    def __init__(self, root: Path, n: int):
        self.root, self.boots = root, 0
        self.all = [None] * n
        self.stopped_later = []

    def _start(self, slots):
        fresh = {}
        self.stopped_later += [self.all[i] for i in slots if self.all[i] is not None]  # killed ones: close logs
        for i in slots:
            self.boots += 1
            fresh[i] = ComfyServer(self.root / f"server{i}-boot{self.boots}")
        errors = []

        def boot(s):
            try:
                s.start()
            except Exception as e:  # reported below, after every boot has ended
                errors.append(e)

        threads = [threading.Thread(target=boot, args=(s,)) for s in fresh.values()]
        for t in threads:
            t.start()
        for i, s in fresh.items():
            self.all[i] = s  # before the joins: stop() must see every process started
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def live(self):
        dead = [i for i, s in enumerate(self.all) if s is None or s.proc is None or s.proc.poll() is not None]
        if dead:
            self._start(dead)
        return self.all

    def stop(self):
        for s in self.stopped_later + self.all:
            if s is not None:
                s.stop()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    pool = Servers(tmp_path_factory.mktemp("batch-servers"), 2)
    try:
        pool.live()  # both boot in parallel
        yield pool
    finally:
        pool.stop()  # every server this module started, also when a boot or a test failed


class Terminal(io.StringIO):
    """Captures what the runner draws on a terminal (the redrawn progress bar)."""

    def isatty(self):
        return True


def prompts_received(server) -> int:
    """Server-side request counter: ComfyUI logs 'got prompt' for every POST /prompt."""
    return server.log().count("got prompt")


def done_records(out: Path):
    return [r for r in read_records(out / "manifest.jsonl")[0] if r.get("status") == "done"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "batch", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def check_outputs_match_manifest(out: Path, servers_by_url):
    """Every done job's files exist, decode to the expected image and equal the server's own file;
    and the folder holds no file the manifest does not list."""
    listed = set()
    for rec in done_records(out):
        assert len(rec["outputs"]) == 1, rec
        for f in rec["outputs"]:
            path = out / f["file"]
            assert path.is_file() and path.stat().st_size == f["bytes"], f
            arr = np.asarray(Image.open(path)).astype(float)
            assert arr.shape == (64, 64, 3) and arr.std() > 1, f"{path} is not the 64x64 lab image"
            server = servers_by_url[rec["server"]]
            assert path.read_bytes() == (server.base / f["server_file"]).read_bytes(), "fetched file differs"
            listed.add(path.relative_to(out).as_posix())
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()
               and p.name != "manifest.jsonl" and not p.name.startswith("workflow-")}
    assert on_disk == listed


# --- a 2 x 3 sweep through the command line, then the same command again ----------------------------

@pytest.fixture(scope="module")
def swept(servers, tmp_path_factory):
    a, b = servers.live()
    out = tmp_path_factory.mktemp("sweep") / "run"
    args = [WORKFLOW, "--server", a.url, "--server", b.url, "--sweep", "KSampler.sampler_name=euler,dpmpp_2m",
            "--sweep", "4.steps=4,6,8", *sum((["--set", s] for s in SMALL), []), "--out", out,
            "--poll", "1", "--backoff", "0.2"]
    before = {s.url: prompts_received(s) for s in (a, b)}
    proc = run_cli(*args)
    return out, args, proc, before, (a, b)


def test_sweep_2x3_completes_and_manifest_matches_outputs(swept):
    out, _, proc, before, (a, b) = swept
    print(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    done = done_records(out)
    assert sorted((r["params"]["KSampler.sampler_name"], r["params"]["4.steps"]) for r in done) == sorted(
        (s, n) for s in ("euler", "dpmpp_2m") for n in (4, 6, 8))
    assert len({r["job"] for r in done}) == 6
    check_outputs_match_manifest(out, {a.url: a, b.url: b})
    # the server-side truth: each recorded prompt id is a successful run on the server it names
    for rec in done:
        server = a if rec["server"] == a.url else b
        hist = server.get(f"/history/{rec['prompt_id']}")[rec["prompt_id"]]
        assert hist["status"]["status_str"] == "success"
        assert hist["prompt"][2]["4"]["inputs"]["steps"] == rec["params"]["4.steps"]
        assert f"fewstep_lab_{rec['job'][:8]}_" in rec["outputs"][0]["server_file"]  # tagged: no name clash
    assert sum(prompts_received(s) - before[s.url] for s in (a, b)) == 6
    run = [r for r in read_records(out / "manifest.jsonl")[0] if "run" in r][0]["run"]
    assert run["jobs"] == 6 and run["set"]["Empty Latent.width"] == 64


def test_rerun_sends_nothing(swept):
    out, args, first, _, (a, b) = swept
    assert first.returncode == 0
    before = {s.url: (prompts_received(s), len(s.get("/history"))) for s in (a, b)}
    lines = (out / "manifest.jsonl").read_text().count("\n")
    proc = run_cli(*args)
    print(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "6 already done, 0 to run" in proc.stderr and "sent 0 this run" in proc.stderr
    assert {s.url: (prompts_received(s), len(s.get("/history"))) for s in (a, b)} == before
    records = read_records(out / "manifest.jsonl")[0]
    assert len(records) == lines + 1 and "run" in records[-1]  # only the run header was added


# --- two servers share one queue, progress over the websocket ------------------------------------

def test_two_servers_share_the_queue(servers, tmp_path):
    a, b = servers.live()
    plan = plan_from_cli(SMALL, [("sweep", "KSampler.seed=0..5")])
    first_submit = threading.Barrier(2, timeout=WAIT)  # neither server goes on before the other has a job
    seen, events = set(), []

    def hook(kind, server, **data):
        events.append((kind, server))
        if kind == "submitted" and server not in seen:
            seen.add(server)
            first_submit.wait()

    log = Terminal()
    summary = run_batch(WORKFLOW, plan, [a.url, b.url], tmp_path / "out", FAST, on_event=hook, stream=log)
    print(log.getvalue())
    assert summary.ok and summary.sent == 6
    assert "[" + "#" * 24 + "] 6/6 done" in log.getvalue()  # the terminal progress bar, full at the end
    done = done_records(tmp_path / "out")
    by_server = {s.url: [r for r in done if r["server"] == s.url] for s in (a, b)}
    assert all(by_server.values()), "both servers must have run jobs"
    for s in (a, b):
        for rec in by_server[s.url]:
            assert s.get(f"/history/{rec['prompt_id']}")[rec["prompt_id"]]["status"]["status_str"] == "success"
    # step progress came over each server's websocket (the stdlib client)
    assert {srv for kind, srv in events if kind == "progress"} == {a.url, b.url}
    check_outputs_match_manifest(tmp_path / "out", {a.url: a, b.url: b})


# --- resume after a runner crash: the submitted prompt is adopted, not sent again ------------------

def test_resume_adopts_a_prompt_the_crashed_run_had_sent(servers, tmp_path):
    a, b = servers.live()
    out = tmp_path / "out"
    plan = plan_from_cli(SMALL, [("sweep", "KSampler.seed=100..102")])
    jobs = expand(json.loads(WORKFLOW.read_text()), plan, b.get("/object_info"))
    crashed = jobs[1]
    # what a runner killed right after its POST leaves behind: the journal line and a prompt on b
    pid = str(uuid.uuid4())
    out.mkdir()
    (out / "manifest.jsonl").write_text(json.dumps(
        {"job": crashed.key, "index": 1, "params": crashed.params, "server": b.url, "status": "submitted",
         "prompt_id": pid}) + "\n" + '{"job": "cut short by the kil')  # and a torn last line
    status, _ = b.post("/prompt", {"prompt": crashed.prompt, "prompt_id": pid, "client_id": "crashed-run"})
    assert status == 200
    before = {s.url: prompts_received(s) for s in (a, b)}
    adopted = []
    log = io.StringIO()
    summary = run_batch(WORKFLOW, plan, [a.url, b.url], out, FAST, stream=log,
                        on_event=lambda kind, **d: adopted.append(d["job"].key) if kind == "adopted" else None)
    print(log.getvalue())
    assert summary.ok and summary.sent == 2 and adopted == [crashed.key]
    assert sum(prompts_received(s) - before[s.url] for s in (a, b)) == 2
    rec = summary.states[crashed.key]
    assert rec["status"] == "done" and rec["prompt_id"] == pid and rec["server"] == b.url
    assert "1 unreadable line" in log.getvalue()
    check_outputs_match_manifest(out, {a.url: a, b.url: b})


# --- per-job node_errors from /prompt do not stop the other jobs -----------------------------------

def test_node_errors_are_reported_per_job(servers, tmp_path):
    a, b = servers.live()
    # --skip-checks lets an out-of-range value reach the server, whose validation refuses that job only
    plan = plan_from_cli(SMALL, [("sweep", "KSampler.steps=0,3")])
    log = io.StringIO()
    summary = run_batch(WORKFLOW, plan, [a.url], tmp_path / "out", FAST, skip_checks=True, stream=log)
    text = log.getvalue()
    print(text)
    assert not summary.ok and summary.count("done") == 1
    bad = next(j for j in summary.jobs if j.params["KSampler.steps"] == 0)
    rec = summary.states[bad.key]
    assert rec["status"] == "failed" and rec["http_status"] == 400
    assert rec["node_errors"]["4"]["errors"][0]["type"] == "value_smaller_than_min"
    assert "node 4 (KSampler): Value 0 smaller than min of 1: steps" in rec["error"]
    assert 'job 0 {"KSampler.steps": 0}: FAILED' in text and "smaller than min of 1" in text


# --- a job past its timeout is cancelled on the server and recorded, the run goes on ---------------

def test_job_timeout_cancels_the_prompt_on_the_server(servers, tmp_path):
    a, _ = servers.live()
    # 5000 steps take far longer than the 1.5 s limit; the short job after it still runs
    plan = plan_from_cli(SMALL, [("sweep", "KSampler.steps=5000,2")])
    log = io.StringIO()
    opts = Options(timeout=1.5, job_retries=1, server_retries=1, backoff=0.2, poll=0.5)
    summary = run_batch(WORKFLOW, plan, [a.url], tmp_path / "out", opts, stream=log)
    print(log.getvalue())
    slow, fast = summary.jobs
    rec = summary.states[slow.key]
    assert rec["status"] == "timeout" and "cancelled on the server" in rec["error"]
    assert summary.states[fast.key]["status"] == "done"
    client = ComfyClient(a.url)
    for _ in range(200):  # bounded: the interrupted prompt must leave the server's queue
        running, pending = client.queue_ids()
        if not running and not pending:
            break
        time.sleep(0.1)
    assert not running and not pending
    events = [e for e, _ in a.get(f"/history/{rec['prompt_id']}")[rec["prompt_id"]]["status"]["messages"]]
    assert "execution_interrupted" in events


# --- bad workflow / sweep input: clear errors, nothing sent ---------------------------------------

def test_ui_format_workflow_gets_the_export_hint(servers, tmp_path):
    a, _ = servers.live()
    ui = {"last_node_id": 2, "last_link_id": 1, "version": 0.4, "links": [[1, 1, 0, 2, 0, "MODEL"]],
          "nodes": [{"id": 1, "type": "FewStepLabModel", "widgets_values": ["shapes", 16, 0.05, 0, "sd_discrete"]},
                    {"id": 2, "type": "KSampler", "widgets_values": [42, "fixed", 8, 1.0, "euler", "karras", 1.0]}]}
    path = tmp_path / "ui.json"
    path.write_text(json.dumps(ui))
    before = prompts_received(a)
    proc = run_cli(path, "--server", a.url, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "UI-format workflow" in proc.stderr and "Export (API)" in proc.stderr
    assert prompts_received(a) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, message", [
    ("KSamplr.steps=4", "no node with id or title 'KSamplr'"),
    ("KSampler.stepz=4", "node has no input 'stepz'. Did you mean 'steps'?"),
    ("KSampler.model=1", "input 'model' is a connection (MODEL), not a value"),
    ("KSampler.steps=4,4.5", "KSampler.steps: '4.5' is not an INT"),
    ("KSampler.cfg=1.5,high", "KSampler.cfg: 'high' is not a FLOAT"),
    ("KSampler.steps=0,4", "KSampler.steps: 0 is below the minimum 1"),
    ("KSampler.sampler_name=euler,eulr", "KSampler.sampler_name: 'eulr' is not an allowed value. Did you mean 'euler'"),
    ("Exact Denoiser Lab Model.schedule=sd_discrete,karras", "'karras' is not an allowed value"),
    ("Save.filename_prefix=[1]", "Save.filename_prefix: 1 is not a STRING"),
])
def test_bad_sweep_input_is_refused_before_sending(servers, tmp_path, spec, message):
    a, b = servers.live()
    before = [prompts_received(s) for s in (a, b)]
    plan = plan_from_cli(SMALL, [("sweep", spec)])
    with pytest.raises(InputError) as err:
        run_batch(WORKFLOW, plan, [a.url, b.url], tmp_path / "out", FAST, stream=io.StringIO())
    print(err.value)
    assert message in str(err.value)
    assert [prompts_received(s) for s in (a, b)] == before and not (tmp_path / "out").exists()


# --- one server SIGKILLed mid-job: every job completes on the other, none lost or duplicated ---------

def test_killing_one_server_mid_run_loses_and_duplicates_nothing(servers, tmp_path):
    a, b = servers.live()
    out = tmp_path / "out"
    plan = plan_from_cli([*SMALL, "KSampler.steps=12"], [("sweep", "KSampler.seed=200..205")])
    a_submits = []
    b_may_go = threading.Event()
    killed = {}
    b_held = []

    def hook(kind, server, job=None, **data):
        # Scheduling made deterministic through the runner's own event hook: b's worker waits (inside
        # its first submission) until a has finished one job and sent a second, and a is killed by
        # SIGKILL of its process group at the first sampling step of that second job.
        if server == a.url and kind == "submitted":
            a_submits.append(job.key)
            if len(a_submits) == 2:
                b_may_go.set()
        if server == b.url and kind == "submitted" and not b_held:
            b_held.append(job.key)
            assert b_may_go.wait(WAIT), "server a never got a second job"
        if server == a.url and kind == "progress" and len(a_submits) == 2 and not killed:
            killed["job"] = job.key
            os.killpg(a.proc.pid, signal.SIGKILL)
            a.proc.wait(30)

    log = io.StringIO()
    b_before = prompts_received(b)
    try:
        summary = run_batch(WORKFLOW, plan, [a.url, b.url], out, FAST, on_event=hook, stream=log)
    finally:
        b_may_go.set()
        print("\n" + log.getvalue())
    records = read_records(out / "manifest.jsonl")[0]
    print("\n".join(json.dumps(r) for r in records))

    assert killed and a.proc.poll() is not None, "server a was not killed mid-job"
    assert summary.ok and len(summary.jobs) == 6
    done = [r for r in records if r.get("status") == "done"]
    assert sorted(r["job"] for r in done) == sorted(j.key for j in summary.jobs), "a job is lost or duplicated"
    on_a = [r for r in done if r["server"] == a.url]
    on_b = [r for r in done if r["server"] == b.url]
    assert len(on_a) == 1 and on_a[0]["job"] == a_submits[0]
    # the killed job went back to the queue and finished on b
    requeued = [r for r in records if r.get("status") == "requeued"]
    assert [(r["job"], r["server"]) for r in requeued] == [(killed["job"], a.url)]
    assert any(r["job"] == killed["job"] for r in on_b)
    # b received each of its jobs exactly once, and its history says each succeeded
    assert prompts_received(b) - b_before == len(on_b) == 5
    for rec in on_b:
        assert b.get(f"/history/{rec['prompt_id']}")[rec["prompt_id"]]["status"]["status_str"] == "success"
    assert f"server {a.url.split('://')[1]} is down" in log.getvalue()
    check_outputs_match_manifest(out, {a.url: a, b.url: b})
