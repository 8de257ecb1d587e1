"""The batch runner's Ray engine against a real local Ray cluster (its own GCS and raylet processes,
started for this module and stopped with it) and real headless ComfyUI servers on loopback: actors
attached to running servers and actors that start their own; an actor killed mid-job, a server killed
mid-job, a driver killed and restarted, and bad input refused before any job runs. Every wait is
bounded; nothing leaves 127.0.0.1."""
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Ray binds a Linux head to the machine's network address and resolves 127.0.0.1 to it, read when ray
# is imported; Ray's single-machine mode keeps every Ray process, and this test's drivers, on loopback.
# Token authentication with this run's own token, also read when ray is imported (in-process drivers).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
pytestmark = pytest.mark.host_independent  # the batch runner is standard library: one leg of scripts/test.sh runs it
ray = pytest.importorskip("ray", reason="the Ray engine is optional: pip install 'comfyui-fewstep[ray]'")

from tests.support.comfy_host import ComfyServer, comfy_path, make_base_directory

from batch import Options, plan_from_cli, run_batch
from batch.manifest import read_records
from batch.ray_engine import RayEngine, RaySettings

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / "example_workflows" / "api" / "lab_ksampler_api.json"
SMALL = ["Empty Latent.width=64", "Empty Latent.height=64", "Empty Latent.batch_size=1"]
# the fault tests kill something while a job runs: jobs long enough to report progress before they end
SLOW = ["Empty Latent.width=256", "Empty Latent.height=256", "Empty Latent.batch_size=1", "KSampler.steps=80"]
FAST = Options(timeout=120, job_retries=2, server_retries=3, backoff=0.5, poll=1.0)
WAIT = 180


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster on 127.0.0.1 owned by a keeper process (closing its stdin shuts it down);
    its token is this module's own, in the environment of every driver."""
    keeper = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, ray\n"
         "ctx = ray.init(address='local', num_cpus=6, include_dashboard=False, logging_level='ERROR')\n"
         "print(ctx.address_info['gcs_address'], flush=True)\n"
         "sys.stdin.read()\n"
         "ray.shutdown()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        address = keeper.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), f"the Ray keeper did not start a loopback cluster: {address!r}"
        yield address
    finally:
        keeper.stdin.close()
        try:
            keeper.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(keeper.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-servers")
    pool = [ComfyServer(root / f"s{i}") for i in range(2)]
    threads = [threading.Thread(target=s.start) for s in pool]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        yield pool
    finally:
        for s in pool:
            s.stop()


def prompts_received(server) -> int:
    return server.log().count("got prompt")


def records(out: Path):
    return read_records(out / "manifest.jsonl")[0]


def done_once(out: Path, n: int):
    """n jobs, each recorded done exactly once, each with its one image on disk at the recorded size."""
    done = [r for r in records(out) if r.get("status") == "done"]
    assert sorted(r["index"] for r in done) == list(range(n)), done
    for rec in done:
        (f,) = rec["outputs"]
        path = out / f["file"]
        assert path.is_file() and path.stat().st_size == f["bytes"], f
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    assert on_disk == {r["outputs"][0]["file"] for r in done}, "a file the manifest does not list"
    return done


def ray_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "batch", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def engine_for(cluster, **kw):
    return RayEngine(RaySettings(address=cluster, cpus_per_server=0.5, startup_timeout=WAIT, **kw))


# --- attached servers: a sweep through the command line, then the same command again -------------------

def test_sweep_on_attached_servers_then_rerun_sends_nothing(cluster, servers, tmp_path):
    a, b = servers
    out = tmp_path / "run"
    args = [WORKFLOW, "--engine", "ray", "--ray-address", cluster, "--server", a.url, "--server", b.url,
            "--ray-cpus-per-server", "0.5", "--sweep", "KSampler.seed=0..5", *sum((["--set", s] for s in SMALL), []),
            "--out", out, "--poll", "1"]
    before = prompts_received(a) + prompts_received(b)
    proc = ray_cli(*args)
    print(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    done = done_once(out, 6)
    assert {r["actor"] for r in done} == {"ray-0", "ray-1"}, "both actors must have run jobs"
    for rec in done:
        server = a if rec["server"] == a.url else b
        assert server.get(f"/history/{rec['prompt_id']}")[rec["prompt_id"]]["status"]["status_str"] == "success"
    assert prompts_received(a) + prompts_received(b) - before == 6
    again = ray_cli(*args)
    assert again.returncode == 0, again.stderr
    assert "6 already done, 0 to run" in again.stderr and "sent 0 this run" in again.stderr
    assert prompts_received(a) + prompts_received(b) - before == 6


# --- faults --------------------------------------------------------------------------------------------

def test_actor_killed_mid_job_requeues_to_another(cluster, servers, tmp_path):
    a, b = servers
    engine = engine_for(cluster, attach=(a.url, b.url), max_restarts=0)
    killed = []

    def hook(kind, server, **data):
        if kind == "progress" and server == "ray-0" and not killed and data["value"] < data["max"] // 2:
            pid = next(e.info["pid"] for e in engine.executors if e.name == "ray-0")
            os.kill(pid, signal.SIGKILL)
            killed.append(data.get("job").index)

    plan = plan_from_cli(SLOW, [("sweep", "KSampler.seed=10..15")])
    summary = run_batch(WORKFLOW, plan, [], tmp_path / "out", FAST, on_event=hook, engine=engine, quiet=True)
    assert killed, "no job started on ray-0"
    assert summary.ok
    done = done_once(tmp_path / "out", 6)
    requeued = [r for r in records(tmp_path / "out") if r.get("status") == "requeued"]
    assert [r["index"] for r in requeued] == killed and requeued[0]["server"] == "ray-0"
    assert next(r for r in done if r["index"] == killed[0])["actor"] == "ray-1"


def test_server_killed_mid_job_actor_restarts_it(cluster, tmp_path):
    base = tmp_path / "base"
    make_base_directory(base)
    engine = engine_for(cluster, servers=2, comfyui=str(comfy_path()),
                        python=os.environ.get("FEWSTEP_PYTHON", sys.executable),
                        comfy_args=("--cpu", "--base-directory", str(base)))
    killed = []

    def hook(kind, server, **data):
        if kind == "progress" and server == "ray-0" and not killed and data["value"] < data["max"] // 2:
            executor = next(e for e in engine.executors if e.name == "ray-0")
            os.killpg(executor.info["server_pid"], signal.SIGKILL)
            killed.append(data.get("job").index)

    plan = plan_from_cli(SLOW, [("sweep", "KSampler.seed=20..25")])
    summary = run_batch(WORKFLOW, plan, [], tmp_path / "out", FAST, on_event=hook, engine=engine, quiet=True)
    assert killed and summary.ok
    done_once(tmp_path / "out", 6)
    assert any(r.get("status") == "requeued" and r["index"] == killed[0] for r in records(tmp_path / "out"))


def test_driver_killed_and_restarted_resumes(cluster, servers, tmp_path):
    a, b = servers
    out = tmp_path / "run"
    args = ["-m", "batch", WORKFLOW, "--engine", "ray", "--ray-address", cluster, "--server", a.url,
            "--server", b.url, "--ray-cpus-per-server", "0.5", "--sweep", "KSampler.seed=30..39",
            *sum((["--set", s] for s in SMALL), []), "--out", out, "--poll", "1", "--quiet"]
    before = prompts_received(a) + prompts_received(b)
    driver = subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + WAIT
    while time.time() < deadline and not any(r.get("status") == "done" for r in records(out)):
        assert driver.poll() is None, "the driver ended before it could be killed"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(30)
    first = {r["job"] for r in records(out) if r.get("status") == "done"}
    assert 0 < len(first) < 10
    proc = subprocess.run([sys.executable, *map(str, args[:-1])], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    print(proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(first)} already done" in proc.stderr
    done_once(out, 10)  # nothing recorded done twice, nothing missing
    # each prompt reached a server once, except those in flight when the driver died (at most one per actor)
    assert 10 <= prompts_received(a) + prompts_received(b) - before <= 12


def test_workflow_failure_is_reported_once_not_retried(cluster, servers, tmp_path):
    a, b = servers
    prompt = json.loads(WORKFLOW.read_text())
    ksampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    ksampler["inputs"]["sampler_name"] = "no_such_sampler"  # refused by the server's own validation
    plan = plan_from_cli(SMALL, [("sweep", "KSampler.seed=0..1")])
    before = prompts_received(a) + prompts_received(b)
    summary = run_batch(prompt, plan, [], tmp_path / "out", FAST, engine=engine_for(cluster, attach=(a.url,)),
                        skip_checks=True, quiet=True)
    assert not summary.ok and summary.count("failed") == 2
    recs = [r for r in records(tmp_path / "out") if r.get("job")]
    assert [r["status"] for r in recs].count("failed") == 2 and not any(r["status"] == "requeued" for r in recs)
    assert "no_such_sampler" in next(r for r in recs if r["status"] == "failed")["error"]
    assert prompts_received(a) + prompts_received(b) - before == 2


# --- bad input: refused before any job runs ---------------------------------------------------------------

def test_ui_format_workflow_refused_before_any_cluster(tmp_path):
    ui = next((REPO / "example_workflows").glob("*.json"))
    proc = ray_cli(ui, "--engine", "ray", "--ray-address", "127.0.0.1:1", "--out", tmp_path / "o", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Export (API)" in proc.stderr  # the runner's own message, before Ray was even imported
    assert not (tmp_path / "o").exists()


def test_bad_sweep_value_refused_before_any_job(cluster, servers, tmp_path):
    a, _ = servers
    before = prompts_received(a)
    proc = ray_cli(WORKFLOW, "--engine", "ray", "--ray-address", cluster, "--server", a.url,
                   "--ray-cpus-per-server", "0.5", "--sweep", "KSampler.sampler_name=eulr,euler",
                   "--out", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    assert "'eulr' is not an allowed value" in proc.stderr and "euler" in proc.stderr
    assert prompts_received(a) == before
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_bad_engine_settings_name_the_option(tmp_path):
    proc = ray_cli(WORKFLOW, "--engine", "ray", "--ray-servers", "-1", "--out", tmp_path / "o", timeout=120)
    assert proc.returncode == 2 and "--ray-servers must be >= 0" in proc.stderr


def test_without_ray_the_runner_says_how_to_install(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from batch.cli import main\n"
            f"sys.exit(main([{str(WORKFLOW)!r}, '--engine', 'ray', '--out', {str(tmp_path / 'o')!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "pip install 'ray==2.60.0'" in proc.stderr and "comfyui-fewstep[ray]" in proc.stderr
