"""One worker thread per server: takes jobs from the shared queue, submits each, follows it over the
websocket (with /queue and /history as the source of truth), fetches its outputs and records it."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from .client import ComfyClient, ServerDown, ServerRefused
from .manifest import now_iso
from .wsclient import WebSocketClosed


@dataclass
class Options:
    timeout: float = 3600.0       # per job, from submission to its history entry
    job_retries: int = 3          # times a job may be re-queued after its server dropped
    server_retries: int = 5       # failed health checks in a row before a server is given up
    backoff: float = 1.0          # first back-off pause; doubles up to backoff_max
    backoff_max: float = 30.0
    poll: float = 2.0             # /queue + /history check interval while the websocket is quiet
    include_temp: bool = False    # also fetch preview (type "temp") outputs
    http_timeout: float = 30.0


class Dropped(Exception):
    """The server went away while holding a job. `sent`: the job may have reached the server."""

    def __init__(self, reason: str, sent: bool, prompt_id: str | None = None):
        super().__init__(reason)
        self.reason, self.sent, self.prompt_id = reason, sent, prompt_id


def format_node_errors(node_errors: dict, workflow: dict | None = None) -> str:
    parts = []
    for nid, info in (node_errors or {}).items():
        title = ((workflow or {}).get(nid, {}).get("_meta") or {}).get("title")
        what = f"node {nid} ({title or info.get('class_type', '?')})"
        for err in info.get("errors", []):
            details = f": {err['details']}" if err.get("details") else ""
            parts.append(f"{what}: {err.get('message', err.get('type', 'error'))}{details}")
    return "; ".join(parts)


def history_error(entry: dict) -> tuple[str, dict]:
    """A readable reason and the raw event for a prompt that ran and failed."""
    for event, data in (entry.get("status") or {}).get("messages", []):
        if event == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}) raised {data.get('exception_type')}: "
                    f"{str(data.get('exception_message', '')).strip()}"), {
                k: data.get(k) for k in ("node_id", "node_type", "exception_type", "exception_message")}
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id')} ({data.get('node_type')})", {"interrupted": True}
    return f"the server reports status {entry.get('status')!r}", {}


def _timestamps(entry: dict) -> dict:
    stamps = {event: data.get("timestamp") for event, data in (entry.get("status") or {}).get("messages", [])
              if isinstance(data, dict)}
    start = stamps.get("execution_start")
    end = stamps.get("execution_success") or stamps.get("execution_error") or stamps.get("execution_interrupted")
    return {"run_s": round((end - start) / 1000, 3)} if start and end else {}


class QueueWorker(threading.Thread):
    """Takes jobs from the shared queue for one executor (`self.url` keys it in the queue and the
    manifest) until the queue is empty, with back-off while the executor is down and bounded re-queues
    of the job it held when it dropped. Subclasses say how a job runs and how health is checked."""

    def __init__(self, url: str, queue, manifest, out_dir: Path, options: Options, emit):
        super().__init__(name=f"worker {url}", daemon=True)
        self.url = url
        self.queue, self.manifest, self.out_dir, self.opt, self._emit = queue, manifest, Path(out_dir), options, emit
        self.gave_up = False
        self.jobs_done = 0
        self._current_pid = None

    def emit(self, kind, **data):
        self._emit(kind, server=self.url, **data)

    def alive(self) -> bool:
        raise NotImplementedError

    def run_job(self, job):
        raise NotImplementedError

    def cancel(self, prompt_id: str):
        """Best effort: the executor may only be slow or have lost our connection."""

    def close(self):
        """Releases connections when the loop ends."""

    # --- the loop --------------------------------------------------------------------------------

    def run(self):
        failures = 0
        try:
            while not self.queue.stopped:
                if failures:
                    if failures > self.opt.server_retries:
                        self.gave_up = True
                        self.emit("server_gave_up", failures=failures - 1)
                        return
                    delay = min(self.opt.backoff * 2 ** (failures - 1), self.opt.backoff_max)
                    self.emit("server_retry", delay=delay, attempt=failures)
                    if self.queue.sleep(delay):
                        return
                    if not self.alive():
                        failures += 1
                        continue
                    self.emit("server_back")
                    failures = 0
                elif not self.alive():
                    self.emit("server_down", reason="no answer to /system_stats")
                    failures = 1
                    continue
                job = self.queue.take(self.url)
                if job is None:
                    return
                try:
                    self.run_job(job)
                    self.queue.finish(job)
                except Dropped as d:
                    d.prompt_id = d.prompt_id or self._current_pid
                    failures = 1
                    self.close()
                    self.emit("server_down", reason=d.reason)
                    self._dropped(job, d)
                except Exception as e:  # a bug or a local disk error: record it, keep the queue moving
                    self.manifest.write({"job": job.key, "index": job.index, "params": job.params, "server": self.url,
                                         "status": "failed", "error": f"runner error: {type(e).__name__}: {e}"})
                    self.emit("failed", job=job, error=f"runner error: {e}")
                    self.queue.finish(job)
        finally:
            self.close()
            self.queue.release_server(self.url)

    def _dropped(self, job, d: Dropped):
        if d.sent:
            job.drops += 1
            if d.prompt_id:
                self.cancel(d.prompt_id)
        job.attach = None
        job.prompt_id = None
        base = {"job": job.key, "index": job.index, "params": job.params, "server": self.url}
        if job.drops > self.opt.job_retries:
            self.manifest.write({**base, "status": "failed", "error": f"servers dropped this job {job.drops} "
                                 f"times (last: {d.reason}); not retried again in this run", "drops": job.drops})
            self.emit("failed", job=job, error="dropped too often")
            self.queue.finish(job)
        else:
            self.manifest.write({**base, "status": "requeued", "reason": d.reason, "drops": job.drops})
            self.emit("requeued", job=job, reason=d.reason)
            self.queue.requeue(job)


class ServerWorker(QueueWorker):
    """One ComfyUI server over HTTP: submits each job, follows it over the websocket (with /queue and
    /history as the source of truth), fetches its outputs and records it."""

    def __init__(self, url: str, queue, manifest, out_dir: Path, options: Options, emit):
        client = ComfyClient(url, timeout=options.http_timeout)
        super().__init__(client.url, queue, manifest, out_dir, options, emit)
        self.client = client
        self.client_id = f"fewstep-batch-{uuid.uuid4().hex[:12]}"
        self.ws = None

    def alive(self) -> bool:
        return self.client.alive()

    def cancel(self, prompt_id: str):
        try:
            ComfyClient(self.url, timeout=3).cancel(prompt_id)
        except (ServerDown, ServerRefused):
            pass

    def close(self):
        self._close_ws()

    # --- one job ---------------------------------------------------------------------------------

    def _ws(self):
        if self.ws is None:
            try:
                self.ws = self.client.websocket(self.client_id)
            except ServerDown:
                self.ws = None  # progress then comes from polling only
        return self.ws

    def _close_ws(self):
        if self.ws is not None:
            self.ws.close()
            self.ws = None

    def run_job(self, job):
        base = {"job": job.key, "index": job.index, "params": job.params, "server": self.url}
        t_submit = time.time()
        self._current_pid = None
        if job.attach is not None:
            prompt_id = self._current_pid = job.attach[1]
            self.emit("adopted", job=job, prompt_id=prompt_id)
        else:
            self._ws()
            prompt_id = job.prompt_id or str(uuid.uuid4())
            self._current_pid = prompt_id
            # journaled before the POST: a runner killed right after it can still find the job on resume
            self.manifest.write({**base, "status": "submitted", "prompt_id": prompt_id, "client_id": self.client_id})
            try:
                self.client.submit(job.prompt, self.client_id, prompt_id)
            except ServerRefused as e:
                body = e.body if isinstance(e.body, dict) else {"error": e.body}
                node_errors = body.get("node_errors") or {}
                err = body.get("error")
                reason = format_node_errors(node_errors, job.prompt) or (
                    err.get("message", "") + (f": {err.get('details')}" if err.get("details") else "")
                    if isinstance(err, dict) else str(err))
                self.manifest.write({**base, "status": "failed", "prompt_id": prompt_id, "http_status": e.status,
                                     "error": f"the server refused the workflow: {reason}",
                                     "node_errors": node_errors})
                self.emit("failed", job=job, error=reason, node_errors=node_errors)
                return
            except ServerDown as e:
                raise Dropped(f"POST /prompt failed: {e}", sent=not e.refused) from None
            self.emit("submitted", job=job, prompt_id=prompt_id)

        deadline = t_submit + self.opt.timeout
        next_poll = time.time() + self.opt.poll
        started = None
        while True:
            force = False
            ws = self.ws
            if ws is not None:
                try:
                    msg = ws.recv(timeout=0.5)
                except WebSocketClosed as e:
                    self._close_ws()
                    if not self.client.alive():
                        raise Dropped(f"websocket closed and the server does not answer ({e})", sent=True) from None
                    self._ws()
                    force = True
                    msg = None
                if msg is not None and msg[0] == 0x1:
                    event = self._event(msg[1], prompt_id)
                    if event is not None:
                        kind, data = event
                        if kind == "execution_start" and started is None:
                            started = time.time()
                            self.emit("started", job=job, prompt_id=prompt_id)
                        elif kind == "progress":
                            self.emit("progress", job=job, value=data.get("value"), max=data.get("max"),
                                      node=data.get("node"))
                        elif kind in ("execution_success", "execution_error", "execution_interrupted") or (
                                kind == "executing" and data.get("node") is None):
                            force = True
            else:
                self.queue.sleep(min(0.5, self.opt.poll))
            now = time.time()
            if force or now >= next_poll:
                next_poll = now + (self.opt.poll if self.ws is not None else min(self.opt.poll, 1.0))
                entry = self._check(prompt_id)
                if entry is not None:
                    self._finish(job, base, prompt_id, entry, t_submit, started)
                    return
            if time.time() > deadline:
                try:
                    self.client.cancel(prompt_id)
                except (ServerDown, ServerRefused):
                    pass
                self.manifest.write({**base, "status": "timeout", "prompt_id": prompt_id,
                                     "error": f"no result within {self.opt.timeout:g} s; cancelled on the server",
                                     "submitted_s_ago": round(time.time() - t_submit, 3)})
                self.emit("timeout", job=job)
                return

    @staticmethod
    def _event(raw: bytes, prompt_id: str):
        try:
            msg = json.loads(raw)
        except ValueError:
            return None
        data = msg.get("data") if isinstance(msg, dict) else None
        if not isinstance(data, dict) or data.get("prompt_id") != prompt_id:
            return None
        return msg.get("type"), data

    def _check(self, prompt_id: str):
        """The history entry once the prompt finished; None while it is queued or running. /queue is
        read before /history: the server writes history before it drops the prompt from the queue."""
        try:
            running, pending = self.client.queue_ids()
            if prompt_id in running or prompt_id in pending:
                return None
            entry = self.client.history(prompt_id)
        except (ServerDown, ServerRefused) as e:
            raise Dropped(f"status check failed: {e}", sent=True) from None
        if entry is None:
            raise Dropped("the prompt vanished from the server (restarted?)", sent=True)
        return entry

    def _finish(self, job, base, prompt_id, entry, t_submit, started):
        status = entry.get("status") or {}
        timings = {"submitted": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t_submit)), **_timestamps(entry)}
        if status.get("status_str") != "success":
            reason, detail = history_error(entry)
            self.manifest.write({**base, "status": "failed", "prompt_id": prompt_id, "error": reason,
                                 "execution_error": detail, "timings": timings})
            self.emit("failed", job=job, error=reason)
            return
        job_dir = self.out_dir / job.name
        if job_dir.exists():
            shutil.rmtree(job_dir)  # leftovers of an attempt that never got recorded
        job_dir.mkdir(parents=True)
        files, ui = [], {}
        try:
            for node_id, node_out in (entry.get("outputs") or {}).items():
                for kind, items in node_out.items():
                    if isinstance(items, list) and items and all(isinstance(i, dict) and "filename" in i for i in items):
                        for item in items:
                            ftype = item.get("type", "output")
                            if ftype == "temp" and not self.opt.include_temp:
                                continue
                            name = f"{node_id}-{os.path.basename(item['filename'])}"
                            dest = job_dir / name
                            nbytes = self.client.download(item["filename"], item.get("subfolder", ""), ftype, str(dest))
                            files.append({"node": node_id, "kind": kind, "file": dest.relative_to(self.out_dir).as_posix(),
                                          "bytes": nbytes, "server_file": "/".join(
                                              p for p in (ftype, item.get("subfolder"), item["filename"]) if p)})
                    else:
                        ui.setdefault(node_id, {})[kind] = items
        except ServerDown as e:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise Dropped(f"fetching outputs failed: {e}", sent=True) from None
        timings["total_s"] = round(time.time() - t_submit, 3)
        record = {**base, "status": "done", "prompt_id": prompt_id, "timings": timings, "outputs": files}
        if ui:
            record["ui"] = ui
        self.manifest.write(record)
        self.jobs_done += 1
        self.emit("done", job=job, files=files)
