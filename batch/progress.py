"""The overall progress bar (one line on a terminal, redrawn in place) plus a log line for every
event worth keeping: failures, re-queued jobs, servers going down and coming back."""
from __future__ import annotations

import sys
import threading
import time


def short(url: str) -> str:
    return url.split("://", 1)[-1]


class ProgressBar:
    def __init__(self, total: int, servers, stream=None, quiet=False, already_done=0):
        self.total, self.stream, self.quiet = total, stream or sys.stderr, quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.failed = already_done, 0
        self.active = {s: None for s in servers}   # server -> (job name, step, steps) or None
        self._lock = threading.Lock()
        self._last_draw = 0.0
        self._t0 = time.time()
        self._run_done = 0

    def _line(self, text: str):
        if self.quiet:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self._draw(force=True)

    def _draw(self, force=False):
        if self.quiet or not self.tty:
            return
        now = time.time()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        partial = sum(a[1] / a[2] for a in self.active.values() if a and a[2])
        frac = min(1.0, (self.done + self.failed + partial) / self.total) if self.total else 1.0
        width = 24
        fill = int(frac * width)
        servers = " | ".join(f"{short(s)} " + (f"{a[1]}/{a[2]}" if a and a[2] else ("run" if a else "idle"))
                             for s, a in self.active.items())
        eta = ""
        remaining = self.total - self.done - self.failed
        if self._run_done and remaining > 0:
            eta = f" ~{remaining * (now - self._t0) / self._run_done:.0f}s left"  # from this run's throughput
        self.stream.write(f"\r\033[K[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} done"
                          f"{f', {self.failed} failed' if self.failed else ''}{eta} | {servers}")
        self.stream.flush()

    def handle(self, kind: str, server: str = "", job=None, **data):
        with self._lock:
            name = f"job {job.index} ({', '.join(f'{k}={v}' for k, v in job.params.items()) or job.name})" if job else ""
            if kind in ("submitted", "adopted", "started"):
                self.active[server] = (name, 0, 0)
                if kind == "adopted":
                    self._line(f"{name}: adopted from an earlier run, prompt {data.get('prompt_id')} on {short(server)}")
            elif kind == "progress":
                self.active[server] = (name, data.get("value") or 0, data.get("max") or 0)
            elif kind == "done":
                self.active[server] = None
                self.done += 1
                self._run_done += 1
                if not self.tty:
                    self._line(f"[{self.done + self.failed}/{self.total}] {name} done on {short(server)}")
            elif kind in ("failed", "timeout"):
                self.active[server] = None
                self.failed += 1
                self._run_done += 1
                reason = data.get("error") or ("timed out" if kind == "timeout" else "")
                self._line(f"[{self.done + self.failed}/{self.total}] {name} FAILED on {short(server)}: {reason}")
            elif kind == "requeued":
                self.active[server] = None
                self._line(f"{name}: back in the queue ({data.get('reason')})")
            elif kind == "server_down":
                self.active[server] = None
                self._line(f"server {short(server)} is down: {data.get('reason')}")
            elif kind == "server_retry":
                self._line(f"server {short(server)}: retry {data.get('attempt')} in {data.get('delay'):g} s")
            elif kind == "server_back":
                self._line(f"server {short(server)} is back")
            elif kind == "server_gave_up":
                self.active.pop(server, None)
                self._line(f"server {short(server)} given up after {data.get('failures')} failed retries")
            self._draw()

    def close(self):
        with self._lock:
            self._draw(force=True)
            if self.tty and not self.quiet:
                self.stream.write("\n")
                self.stream.flush()
