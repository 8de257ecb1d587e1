"""A headless ComfyUI server with the FewStep pack linked in, for the tests and the demo.

The pack is installed the way users install it: a link under custom_nodes/ of a ComfyUI base
directory (--base-directory), so several checkouts can share one ComfyUI tree."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "ComfyUI-FewStep"


def comfy_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "main.py").is_file():
        raise RuntimeError("COMFYUI_PATH is not set to a ComfyUI checkout; run through "
                           "`bash scripts/test.sh` or `bash scripts/demo.sh`, which provide one")
    return Path(path)


def put_comfy_on_path(root=None) -> Path:
    """ComfyUI's root (`root`, default $COMFYUI_PATH) first on sys.path, the one place it is put
    there: ComfyUI's top-level modules (`nodes`, `comfy`, ...) must win over this repo's `nodes/`."""
    root = Path(root) if root else comfy_path()
    if not (root / "comfy").is_dir():
        raise RuntimeError(f"{root} is not a ComfyUI tree (no comfy/ in it)")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def stop_process_group(proc, wait_s: float):
    """Ends a process started with start_new_session=True and its children: SIGTERM to the group,
    SIGKILL after wait_s seconds."""
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(wait_s)


def make_base_directory(base: Path) -> Path:
    """A ComfyUI base directory with the pack linked under custom_nodes/."""
    for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIR_NAME
    if not link.exists():
        link.symlink_to(REPO, target_is_directory=True)
    return link


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A headless `main.py --cpu` on a free loopback port; always stopped by stop()."""

    def __init__(self, base: Path, extra_args=()):
        self.base = base
        make_base_directory(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self.extra_args = list(extra_args)
        self.proc = None

    def start(self, timeout=180):
        cmd = [os.environ.get("FEWSTEP_PYTHON", sys.executable), "main.py", "--cpu", "--listen", "127.0.0.1",
               "--port", str(self.port), "--base-directory", str(self.base), "--disable-auto-launch",
               *self.extra_args]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_path(), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/system_stats")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout}s:\n{self.log()}")

    def stop(self):
        stop_process_group(self.proc, 15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, payload):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def run_prompt(self, prompt: dict, timeout=300) -> dict:
        """POSTs an API-format prompt and waits on /history; returns its history entry."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "fewstep-tests"})
        # 0.33 answers 200 and runs the outputs it could validate, listing the others' node_errors
        if status != 200 or body.get("node_errors"):
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(body)[:2000]}")
        pid = body["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{pid}")
            if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
                entry = hist[pid]
                if entry["status"].get("status_str") == "error" or not entry["status"]["completed"]:
                    raise AssertionError(f"prompt failed: {json.dumps(entry['status'])[:4000]}")
                return entry
            time.sleep(0.3)
        raise TimeoutError(f"prompt {pid} did not finish in {timeout}s")
