"""A whole batch run: checks before anything is sent, resume from the manifest, one worker per server
over a shared queue, and a summary of where every job stands."""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .client import ComfyClient, ServerDown, ServerRefused, normalise_url
from .jobqueue import JobQueue
from .manifest import DONE, Manifest
from .progress import ProgressBar
from .sweep import Plan, check_classes, expand
from .workflow import InputError, check_api_format, load_workflow
from .worker import Options, ServerWorker

MANIFEST_NAME = "manifest.jsonl"


class RunError(RuntimeError):
    """The run could not start (no server answers, the output folder is in use ...)."""


@dataclass
class Summary:
    jobs: list                                   # every job of the plan
    skipped: list = field(default_factory=list)  # done in an earlier run: not sent
    states: dict = field(default_factory=dict)   # job key -> last manifest record after this run
    sent: int = 0                                # prompts POSTed in this run
    out_dir: Path | None = None

    def count(self, status):
        return sum(1 for j in self.jobs if self.states.get(j.key, {}).get("status") == status)

    @property
    def not_done(self):
        return [j for j in self.jobs if self.states.get(j.key, {}).get("status") != DONE]

    @property
    def ok(self) -> bool:
        return not self.not_done


def fetch_object_infos(servers, log):
    infos, errors = {}, []
    for url in servers:
        try:
            infos[url] = ComfyClient(url).object_info()
        except (ServerDown, ServerRefused) as e:
            errors.append(str(e))
            log(f"warning: {url} does not answer now ({e}); it stays in the queue and is retried")
    if not infos:
        raise RunError("no server answered /object_info, so the inputs cannot be checked:\n  " + "\n  ".join(errors))
    return infos


def plan_jobs(workflow: dict, plan: Plan, infos: dict | None) -> list:
    """Jobs checked against every reachable server's /object_info (their model lists may differ)."""
    if not infos:
        return expand(workflow, plan, None)
    jobs = None
    for url, info in infos.items():
        check_classes(workflow, info, url)
        try:
            jobs = expand(workflow, plan, info)
        except InputError as e:
            raise InputError(f"{e}" + (f" [on {url}]" if len(infos) > 1 else "")) from None
    return jobs


def _adopt(job, rec, servers, log):
    """A job the last run submitted but never saw finish: wait for that same prompt instead of sending
    it again, if its server still has it queued, running or in history."""
    url, pid = rec.get("server"), rec.get("prompt_id")
    if not url or not pid or url not in servers:
        return
    client = ComfyClient(url, timeout=10)
    try:
        running, pending = client.queue_ids()
        if pid in running or pid in pending or client.history(pid) is not None:
            job.attach = (url, pid)
    except (ServerDown, ServerRefused) as e:
        log(f"job {job.index}: its earlier submission on {url} cannot be checked ({e}); it is sent again")


def run_batch(workflow, plan: Plan, servers, out_dir, options: Options | None = None, *, skip_checks=False,
              dry_run=False, quiet=False, on_event=None, stream=None, engine=None) -> Summary:
    """Runs every job of `plan` once. `servers`: ComfyUI URLs (the plain runner, one worker thread
    each); or `engine` (e.g. batch.ray_engine.RayEngine), which places its own servers and gives one
    worker per server: then `servers` is unused. Either way the manifest, the checks and the queue
    are the same."""
    stream = stream or sys.stderr
    options = options or Options()

    def log(text):
        if not quiet:
            print(text, file=stream, flush=True)

    workflow = load_workflow(workflow) if not isinstance(workflow, dict) else check_api_format(workflow)
    if engine is None:
        servers = list(dict.fromkeys(normalise_url(s) for s in servers))
        if not servers:
            raise InputError("no server given; pass --server http://host:port (one per GPU)")
        infos = None if skip_checks else fetch_object_infos(servers, log)
    else:
        servers = engine.start(log)
    try:
        if engine is not None:
            infos = None if skip_checks else engine.object_infos(log)
        return _run_checked(workflow, plan, servers, infos, out_dir, options, dry_run, quiet, on_event, stream,
                            engine, log)
    finally:
        if engine is not None:
            engine.shutdown()


def _run_checked(workflow, plan, servers, infos, out_dir, options, dry_run, quiet, on_event, stream, engine,
                 log) -> Summary:
    jobs = plan_jobs(workflow, plan, infos)

    out_dir = Path(out_dir)
    if dry_run:
        done = {}
        path = out_dir / MANIFEST_NAME
        if path.exists():
            from .manifest import job_states, read_records
            done = {k for k, r in job_states(read_records(path)[0]).items() if r.get("status") == DONE}
        for job in jobs:
            log(f"job {job.index} {job.name}: {json.dumps(job.params)}{'  [done]' if job.key in done else ''}")
        log(f"{len(jobs)} jobs, {sum(1 for j in jobs if j.key in done)} already done; dry run: nothing sent")
        return Summary(jobs, out_dir=out_dir)

    manifest = Manifest(out_dir / MANIFEST_NAME)
    try:
        if manifest.unreadable:
            log(f"warning: {manifest.unreadable} unreadable line(s) in {manifest.path} (a killed run?) are ignored")
        wf_text = json.dumps(workflow, indent=1, sort_keys=True)
        wf_hash = hashlib.sha256(wf_text.encode()).hexdigest()[:12]
        wf_copy = out_dir / f"workflow-{wf_hash}.json"
        if not wf_copy.exists():
            wf_copy.write_text(wf_text)
        states = manifest.states()
        skipped, todo = [], []
        for job in jobs:
            rec = states.get(job.key)
            if rec and rec.get("status") == DONE:
                missing = [f["file"] for f in rec.get("outputs", []) if not (out_dir / f["file"]).exists()]
                if missing:
                    log(f"warning: job {job.index} is done but {len(missing)} of its files are missing "
                        f"({missing[0]} ...); it is not run again (delete its manifest lines to redo it)")
                skipped.append(job)
                continue
            if rec and rec.get("status") == "submitted":
                if engine is None:
                    _adopt(job, rec, servers, log)
                else:
                    target = engine.adopt_target(rec)
                    job.attach = (target, rec["prompt_id"]) if target else None
            todo.append(job)
        manifest.write({"run": {"workflow": wf_copy.name, "servers": servers, "jobs": len(jobs),
                                "already_done": len(skipped), "to_run": len(todo),
                                "axes": [[t.label for t in a.targets] for a in plan.axes],
                                "set": plan.typed_fixed}})
        log(f"{len(jobs)} jobs: {len(skipped)} already done, {len(todo)} to run on {len(servers)} server(s)")
        summary = Summary(jobs, skipped=skipped, out_dir=out_dir)
        if todo:
            make_worker = ServerWorker if engine is None else engine.worker
            summary.sent = _run_queue(todo, servers, make_worker, manifest, out_dir, options, len(jobs),
                                      len(skipped), quiet, on_event, stream)
        summary.states = manifest.states()
    finally:
        manifest.close()
    _report(summary, log)
    return summary


def _run_queue(todo, servers, make_worker, manifest, out_dir, options, total, already, quiet, on_event,
               stream) -> int:
    queue = JobQueue(todo)
    bar = ProgressBar(total, servers, stream=stream, quiet=quiet, already_done=already)
    sent = [0]

    def emit(kind, **data):
        if kind == "submitted":
            sent[0] += 1
        bar.handle(kind, **data)
        if on_event is not None:
            on_event(kind, **data)

    workers = [make_worker(url, queue, manifest, out_dir, options, emit) for url in servers]
    for w in workers:
        w.start()
    try:
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.2)
    except KeyboardInterrupt:
        queue.stop()
        bar.close()
        print("\nstopped: jobs already sent keep running on their servers; run the same command again to "
              "resume (they are picked up, not sent twice)", file=stream)
        raise
    bar.close()
    return sent[0]


def _report(summary: Summary, log):
    failed = [j for j in summary.jobs if summary.states.get(j.key, {}).get("status") in ("failed", "timeout")]
    for job in failed:
        rec = summary.states[job.key]
        log(f"job {job.index} {json.dumps(job.params)}: {rec['status'].upper()} on {rec.get('server')}: {rec.get('error')}")
    unrun = [j for j in summary.not_done if j not in failed]
    if unrun:
        log(f"{len(unrun)} job(s) not run: every server was given up; run the same command again to resume")
    log(f"done {summary.count(DONE)}/{len(summary.jobs)} (sent {summary.sent} this run, {len(summary.skipped)} "
        f"done before), failed {len(failed)}, not run {len(unrun)}; manifest: {summary.out_dir / MANIFEST_NAME}")
