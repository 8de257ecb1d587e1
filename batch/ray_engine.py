"""`--engine ray`: the same batch run, with Ray placing one ComfyUI server per GPU across a cluster.

Each Ray actor owns one ComfyUI server on its node (started by the actor from a ComfyUI folder, or
attached to a server already running) and runs the jobs it is given against it with the same HTTP
code as the plain runner (`ServerWorker.run_job`), returning the manifest records and the output
files' bytes. The driver keeps everything that must exist once: the manifest (journalled before a job
is handed out, so a killed driver resumes without re-sending finished work), the shared queue, the
/object_info checks, the output folder and the progress display. An actor, its server or its node
dying mid-job drops that job back into the queue for another actor (bounded by --job-retries); Ray
restarts a dead actor (`max_restarts`), which starts a fresh server.

Ray is optional (`pip install comfyui-fewstep[ray]`, i.e. ray==2.60.0): nothing here imports it
before an engine is built, so the plain runner stays standard-library only."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .client import ComfyClient, ServerDown, ServerRefused, normalise_url
from .runner import RunError
from .workflow import InputError
from .worker import Dropped, Options, QueueWorker, ServerWorker

RAY_VERSION = "2.60.0"
FINAL_EVENTS = ("done", "failed", "timeout")
INSTALL_HINT = (f"--engine ray needs Ray: pip install 'ray=={RAY_VERSION}' "
                f"(or pip install 'comfyui-fewstep[ray]'); the plain runner (--server URL) needs nothing")


class EngineError(RunError):
    """The engine could not start: no cluster to join, no server came up."""


def import_ray():
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


@dataclass(frozen=True)
class RaySettings:
    """What the driver asks of the cluster. `attach` lists servers already running (one actor each);
    otherwise `servers` actors each start `python main.py` in `comfyui` on their node."""
    address: str | None = None          # an existing cluster ("auto", "ray://host:10001", "host:6379"); None: local
    servers: int = 0                    # actors to start; 0: one per GPU in the cluster (one if it has none)
    comfyui: str | None = None          # ComfyUI folder on the nodes (default: $COMFYUI_PATH there)
    python: str | None = None           # python for ComfyUI on the nodes (default: the actor's own)
    comfy_args: tuple = ()              # extra main.py arguments (e.g. --cpu, --base-directory DIR)
    gpus_per_server: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_server: float = 1.0
    attach: tuple = ()                  # URLs of running servers to attach to instead of starting any
    startup_timeout: float = 300.0      # seconds for a server to answer /system_stats
    max_restarts: int = 3               # Ray restarts of a dead actor (each starts a fresh server)

    def __post_init__(self):
        if self.servers < 0:
            raise ValueError(f"--ray-servers must be >= 0, got {self.servers}")
        if self.gpus_per_server is not None and self.gpus_per_server < 0:
            raise ValueError(f"--ray-gpus-per-server must be >= 0, got {self.gpus_per_server}")
        if self.cpus_per_server < 0:
            raise ValueError(f"--ray-cpus-per-server must be >= 0, got {self.cpus_per_server}")
        if self.startup_timeout <= 0:
            raise ValueError(f"--ray-startup-timeout must be > 0, got {self.startup_timeout}")
        if self.max_restarts < 0:
            raise ValueError(f"--ray-max-restarts must be >= 0, got {self.max_restarts}")
        object.__setattr__(self, "attach", tuple(normalise_url(u) for u in self.attach))
        object.__setattr__(self, "comfy_args", tuple(self.comfy_args))


# --- the actor (runs on a cluster node) -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder:
    """Stands in for the manifest on the actor: the driver writes the real one."""

    def __init__(self):
        self.records = []

    def write(self, record: dict) -> dict:
        self.records.append(record)
        return record


class _Pause:
    """The queue's pause, for ServerWorker.run_job polling without a websocket."""

    stopped = False

    @staticmethod
    def sleep(seconds: float) -> bool:
        time.sleep(seconds)
        return False


class _JobRun:
    def __init__(self):
        self.events, self.result, self.lock = [], None, threading.Condition()


class ComfyServerHost:
    """Ray actor body: one ComfyUI server on this node and the jobs run on it (threaded actor, so
    polls are answered while a job runs)."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.proc, self.log_path = None, None
        self.workdir = Path(tempfile.mkdtemp(prefix="fewstep-ray-"))
        self.runs: dict[str, _JobRun] = {}
        self._server_lock = threading.Lock()
        self.url = spec["attach"] or self._start_server()

    # server life
    def _start_server(self) -> str:
        comfy = self.spec.get("comfyui") or os.environ.get("COMFYUI_PATH")
        if not comfy or not (Path(comfy) / "main.py").is_file():
            raise EngineError(f"no ComfyUI on node {socket.gethostname()}: pass --ray-comfyui DIR (a folder with "
                              f"main.py on every node) or set COMFYUI_PATH there; got {comfy!r}")
        port = _free_port()
        self.log_path = self.workdir / f"server-{port}.log"
        cmd = [self.spec.get("python") or sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port),
               "--disable-auto-launch", *self.spec.get("comfy_args", ())]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        client = ComfyClient(url, timeout=5)
        deadline = time.time() + self.spec["startup_timeout"]
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise EngineError(f"ComfyUI exited with {self.proc.returncode} on {socket.gethostname()}:\n"
                                  f"{self._log_tail()}")
            if client.alive():
                return url
            time.sleep(0.5)
        self._stop_server()
        raise EngineError(f"ComfyUI did not answer within {self.spec['startup_timeout']:g}s on "
                          f"{socket.gethostname()}:\n{self._log_tail()}")

    def _log_tail(self, n=4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path and self.log_path.exists() else ""

    def _stop_server(self):
        if self.proc is not None and self.proc.poll() is None:
            import signal
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def ensure_server(self) -> bool:
        """True when the server answers; a server this actor owns that died is started again."""
        with self._server_lock:
            if ComfyClient(self.url, timeout=5).alive():
                return True
            if self.proc is None or self.proc.poll() is None:
                return False  # attached, or ours and only slow: the driver backs off
            self.url = self._start_server()
            return True

    def info(self) -> dict:
        return {"url": self.url, "host": socket.gethostname(), "pid": os.getpid(),
                "server_pid": self.proc.pid if self.proc is not None else None,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def object_info(self) -> dict:
        return ComfyClient(self.url).object_info()

    def object_info_digest(self) -> str:
        """Servers of one install answer the same /object_info: the driver fetches one per digest."""
        import hashlib
        import json
        text = json.dumps(self.object_info(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def knows(self, prompt_id: str) -> bool:
        client = ComfyClient(self.url, timeout=10)
        running, pending = client.queue_ids()
        return prompt_id in running or prompt_id in pending or client.history(prompt_id) is not None

    def cancel(self, prompt_id: str):
        try:
            ComfyClient(self.url, timeout=3).cancel(prompt_id)
        except (ServerDown, ServerRefused):
            pass

    def shutdown(self):
        self._stop_server()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # jobs
    def start_job(self, job, options: dict) -> str:
        run = _JobRun()
        self.runs[job.key] = run
        threading.Thread(target=self._run, args=(job, Options(**options), run), daemon=True).start()
        return self.url

    def _run(self, job, options, run):
        recorder = _Recorder()
        out = self.workdir / uuid.uuid4().hex
        out.mkdir()

        def emit(kind, server=None, **data):
            data.pop("job", None)
            with run.lock:
                run.events.append((kind, data))
                run.lock.notify_all()

        worker = ServerWorker(self.url, _Pause(), recorder, out, options, emit)
        try:
            worker.run_job(job)
            files = {}
            for rec in recorder.records:
                for f in rec.get("outputs", []):
                    files[f["file"]] = (out / f["file"]).read_bytes()
            result = {"records": recorder.records, "files": files}
        except Dropped as d:
            result = {"dropped": d.reason, "sent": d.sent, "prompt_id": d.prompt_id or job.prompt_id}
        except Exception as e:  # reported to the driver as the job's failure
            result = {"error": f"{type(e).__name__}: {e}"}
        finally:
            worker.close()
            shutil.rmtree(out, ignore_errors=True)
        with run.lock:
            run.result = result
            run.lock.notify_all()

    def poll(self, key: str, wait: float = 0.0) -> dict:
        """The job's events since the last poll and its result once it has one; waits up to `wait`
        seconds for either, so the driver hears of the end at once and makes few calls."""
        run = self.runs.get(key)
        if run is None:
            return {"events": [], "result": {"dropped": "the actor does not know this job (restarted?)", "sent": True}}
        with run.lock:
            run.lock.wait_for(lambda: run.events or run.result is not None, timeout=wait)
            events, run.events = run.events, []
            result = run.result
        if result is not None:
            del self.runs[key]
        return {"events": events, "result": result}


# --- the driver side --------------------------------------------------------------------------------

class RayWorker(QueueWorker):
    """Driver thread for one actor: journals each job before handing it out, relays the actor's
    progress, writes the outputs and the records the actor returns; an actor that dies is a drop."""

    POLL_WAIT = 2.0  # the actor answers a poll as soon as it has news, else after this long

    def __init__(self, executor, queue, manifest, out_dir, options, emit, engine):
        super().__init__(executor.name, queue, manifest, out_dir, options, emit)
        self.executor, self.engine = executor, engine
        self.ray = engine.ray

    def _call(self, method, *args, timeout=60.0):
        try:
            return self.ray.get(getattr(self.executor.actor, method).remote(*args), timeout=timeout)
        except self.engine.actor_errors as e:
            raise Dropped(f"actor {self.executor.name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                          sent=True) from None

    def alive(self) -> bool:
        try:
            ok = self._call("ensure_server", timeout=self.engine.settings.startup_timeout + 30)
            if ok:
                self.executor.url = self._call("info")["url"]
            return bool(ok)
        except Dropped:
            return False

    def cancel(self, prompt_id: str):
        try:
            self._call("cancel", prompt_id, timeout=10)
        except Dropped:
            pass

    def run_job(self, job):
        base = {"job": job.key, "index": job.index, "params": job.params, "server": self.executor.url,
                "actor": self.executor.name}
        t_submit = time.time()
        if job.attach is not None:
            job.prompt_id = job.attach[1]
            self.emit("adopted", job=job, prompt_id=job.prompt_id)
        else:
            job.prompt_id = str(uuid.uuid4())
            self.manifest.write({**base, "status": "submitted", "prompt_id": job.prompt_id})
        self._current_pid = job.prompt_id
        self._call("start_job", job, asdict(self.opt))
        deadline = t_submit + self.opt.timeout + 60  # the actor enforces --timeout; this catches a hung actor
        while True:
            if self.queue.stopped:
                return
            polled = self._call("poll", job.key, self.POLL_WAIT)
            final = []
            for kind, data in polled["events"]:
                (final if kind in FINAL_EVENTS else []).append((kind, data))
                if kind not in FINAL_EVENTS and kind != "adopted":
                    self.emit(kind, job=job, **data)
            result = polled["result"]
            if result is not None:
                self._record(job, base, result)
                for kind, data in final:  # after the manifest has the record
                    self.emit(kind, job=job, **data)
                return
            if time.time() > deadline:
                raise Dropped(f"actor {self.executor.name} gave no result within {self.opt.timeout + 60:g} s", sent=True)

    def _record(self, job, base, result):
        if "dropped" in result:
            raise Dropped(result["dropped"], sent=result.get("sent", True), prompt_id=result.get("prompt_id"))
        if "error" in result:
            raise RuntimeError(f"on actor {self.executor.name}: {result['error']}")
        for rec in result["records"]:
            if rec.get("status") == "submitted":
                continue  # journalled here before the job was handed out
            rec = {**rec, "actor": self.executor.name}
            if rec.get("status") == "done":
                job_dir = self.out_dir / job.name
                if job_dir.exists():
                    shutil.rmtree(job_dir)  # leftovers of an attempt that never got recorded
                for rel, data in result["files"].items():
                    dest = self.out_dir / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    tmp = dest.with_name(dest.name + ".part")
                    with open(tmp, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, dest)
                self.jobs_done += 1
            rec.pop("time", None)
            self.manifest.write(rec)


@dataclass
class Executor:
    name: str
    actor: object
    url: str = ""
    info: dict = field(default_factory=dict)


class RayEngine:
    """Starts (or joins) the cluster, places the actors, and hands the runner one worker per actor."""

    def __init__(self, settings: RaySettings):
        self.settings = settings
        self.ray = import_ray()
        self.executors: list[Executor] = []
        self._owns_ray = False
        errors = self.ray.exceptions
        # what a call to a dead, restarting or hung actor raises: the job it held is dropped, not failed
        self.actor_errors = tuple(getattr(errors, n) for n in ("RayActorError", "GetTimeoutError",
                                                               "ActorUnavailableError") if hasattr(errors, n))

    def start(self, log) -> list:
        ray, s = self.ray, self.settings
        if not ray.is_initialized():
            package = str(Path(__file__).resolve().parent)
            try:
                ray.init(address=s.address or "local", runtime_env={"py_modules": [package]}, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR")
            except ConnectionError as e:
                raise EngineError(f"--ray-address {s.address}: cannot join the cluster ({e})") from None
            self._owns_ray = True
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        per_gpu = s.gpus_per_server if s.gpus_per_server is not None else (1.0 if gpus else 0.0)
        if s.attach:
            count = len(s.attach)
        elif s.servers:
            count = s.servers
        else:
            count = max(1, int(gpus // per_gpu) if per_gpu else 1)
        log(f"ray: cluster with {resources.get('CPU', 0):g} CPU, {gpus:g} GPU on {len(ray.nodes())} node(s); "
            f"{count} server actor(s), {per_gpu:g} GPU and {s.cpus_per_server:g} CPU each")
        remote = ray.remote(ComfyServerHost).options(num_gpus=per_gpu, num_cpus=s.cpus_per_server,
                                                    max_restarts=s.max_restarts, max_task_retries=0,
                                                    max_concurrency=8)
        for i in range(count):
            spec = {"attach": s.attach[i] if s.attach else None, "comfyui": s.comfyui, "python": s.python,
                    "comfy_args": list(s.comfy_args), "startup_timeout": s.startup_timeout}
            self.executors.append(Executor(name=f"ray-{i}", actor=remote.remote(spec)))
        ready = self._wait_ready(log)
        if not ready:
            self.shutdown()
            raise EngineError("no server actor came up; see the messages above")
        self.executors = ready
        return [e.name for e in ready]

    def _wait_ready(self, log) -> list:
        ray = self.ray
        refs = {e.actor.info.remote(): e for e in self.executors}
        ready, deadline = [], time.time() + self.settings.startup_timeout + 60
        pending = list(refs)
        while pending and time.time() < deadline:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.1, deadline - time.time()))
            for ref in done:
                e = refs[ref]
                try:
                    e.info = ray.get(ref)
                except Exception as err:  # the actor's constructor failed: say why, go on with the others
                    log(f"ray: actor {e.name} did not start: {str(err).strip().splitlines()[-1][:500]}")
                    continue
                e.url = e.info["url"]
                ready.append(e)
                log(f"ray: {e.name} ready on {e.info['host']} ({e.url}, CUDA_VISIBLE_DEVICES="
                    f"{e.info['cuda_visible_devices']})")
        for ref in pending:
            log(f"ray: actor {refs[ref].name} not ready within the start-up time; left out")
            ray.kill(refs[ref].actor, no_restart=True)
        return sorted(ready, key=lambda e: e.name)

    def object_infos(self, log) -> dict:
        """One /object_info per distinct answer (a digest from every actor, the full text from one
        actor per digest): a thousand servers of one install cost one transfer of a few MB."""
        by_digest = {}
        for e in self.executors:
            try:
                digest = self.ray.get(e.actor.object_info_digest.remote(), timeout=120)
            except Exception as err:
                log(f"warning: {e.name} does not answer /object_info now ({str(err).splitlines()[0][:200]})")
                continue
            by_digest.setdefault(digest, e)
        infos = {}
        for e in by_digest.values():
            try:
                infos[e.name] = self.ray.get(e.actor.object_info.remote(), timeout=120)
            except Exception as err:
                log(f"warning: {e.name} does not answer /object_info now ({str(err).splitlines()[0][:200]})")
        if not infos:
            raise EngineError("no server actor answered /object_info, so the inputs cannot be checked")
        return infos

    def adopt_target(self, record: dict) -> str | None:
        """The actor whose server an interrupted run's submission went to, if it still has it."""
        for e in self.executors:
            if e.url == record.get("server"):
                try:
                    if self.ray.get(e.actor.knows.remote(record["prompt_id"]), timeout=30):
                        return e.name
                except Exception:
                    return None
        return None

    def worker(self, name, queue, manifest, out_dir, options, emit):
        executor = next(e for e in self.executors if e.name == name)
        return RayWorker(executor, queue, manifest, out_dir, options, emit, self)

    def shutdown(self):
        for e in self.executors:
            try:
                self.ray.get(e.actor.shutdown.remote(), timeout=30)
            except Exception:
                pass
            try:
                self.ray.kill(e.actor, no_restart=True)
            except Exception:
                pass
        self.executors = []
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False
